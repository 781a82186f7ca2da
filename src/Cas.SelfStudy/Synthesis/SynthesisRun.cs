using System.Security.Cryptography;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Resources;

namespace Cas.SelfStudy;

/// <summary>
/// One synthesis run: the resources to read, the dataset to write, and the settings. Sizes left null are derived from
/// the model's context (<see cref="SynthesisRun.Plan"/>): the paper's where it allows them.
/// </summary>
public sealed record SynthesisRunOptions
{
    /// <summary>Input documents as KIND:PATH[#field] (see <see cref="ResourceSpec"/>).</summary>
    public required IReadOnlyList<string> Resources { get; init; }
    /// <summary>The dataset file (.casds).</summary>
    public required string OutputPath { get; init; }
    /// <summary>Conversations to generate (indices 0..N-1).</summary>
    public required long Conversations { get; init; }
    /// <summary>Null: auto (<see cref="ChatFormat.Resolve"/>); <see cref="ChatFormatKind.Plain"/>: base-model framing.</summary>
    public ChatFormatKind? ChatFormat { get; init; }
    /// <summary>The tokenizer's file or folder: its chat template is detected from it and its hash recorded (so a resume cannot switch tokenizers).</summary>
    public string? TokenizerPath { get; init; }
    /// <summary>Continue an existing dataset: skip conversations already in it, repair a torn tail.</summary>
    public bool Resume { get; init; }
    /// <summary>Stop at the first input that would be skipped or altered while reading resources.</summary>
    public bool Strict { get; init; }
    /// <summary>Smallest chunk in tokens. Null: min(512, largest / 2).</summary>
    public int? MinChunkTokens { get; init; }
    /// <summary>Largest chunk in tokens. Null: 2048, or what the context leaves after the prompts and the generated tokens.</summary>
    public int? MaxChunkTokens { get; init; }
    /// <summary>Most tokens agent A writes per user message. Null: min(128, context / 16).</summary>
    public int? MaxUserTokens { get; init; }
    /// <summary>Most tokens agent B writes per answer. Null: min(256, context / 8).</summary>
    public int? MaxAnswerTokens { get; init; }
    /// <summary>Every other setting (seed, seed prompts, rounds, temperatures, teacher top-k, sharing, concurrency); its chunk sizes and token limits are replaced by the plan.</summary>
    public SelfStudyOptions Settings { get; init; } = new();
}

/// <summary>The sizes a run uses, each given or derived from the context; <see cref="Derived"/> names the derived ones.</summary>
public sealed record SynthesisPlan(int MinChunkTokens, int MaxChunkTokens, int MaxUserTokens, int MaxAnswerTokens, int ContextLength, IReadOnlyList<string> Derived)
{
    /// <summary>The one line a caller prints: "chose chunk_tokens=…, … for the model's context of N".</summary>
    public string Describe()
    {
        string G(string name) => Derived.Contains(name) ? "" : " (given)";
        return $"chose min_chunk_tokens={MinChunkTokens}{G("min_chunk_tokens")}, chunk_tokens={MaxChunkTokens}{G("chunk_tokens")}, " +
               $"max_user_tokens={MaxUserTokens}{G("max_user_tokens")}, max_answer_tokens={MaxAnswerTokens}{G("max_answer_tokens")} " +
               $"for the model's context of {ContextLength}";
    }
}

/// <summary>What a synthesis run reports: notes (resource report, framing, sizes chosen, resume) and progress.</summary>
public abstract record SynthesisRunEvent;
public sealed record SynthesisRunNote(string Text) : SynthesisRunEvent;
public sealed record SynthesisRunProgress(SynthesisProgress Progress) : SynthesisRunEvent;

/// <summary>What a finished run did.</summary>
public sealed record SynthesisRunResult(string OutputPath, string Framing, int Documents, SynthesisPlan Plan, SynthesisSummary Summary, long DatasetConversations);

/// <summary>
/// What `cas synthesize` does, for any caller (CLI, service, jobs): reads the resources (the report as a note; nothing
/// dropped without a count), resolves the chat format, derives the sizes that were not given from the model's
/// context, opens (or resumes) the dataset and generates into it. Writes nothing to the console. On cancellation the
/// dataset keeps every complete conversation (run again with <see cref="SynthesisRunOptions.Resume"/>) and the
/// <see cref="OperationCanceledException"/> propagates.
/// </summary>
public static class SynthesisRun
{
    /// <summary>The paper-sized defaults used when the context allows them.</summary>
    public const int DefaultMinChunkTokens = 512, DefaultMaxChunkTokens = 2048, DefaultMaxUserTokens = 128, DefaultMaxAnswerTokens = 256;

    /// <summary>
    /// The sizes for this model: given values as they are (the synthesizer refuses ones that do not fit, saying what
    /// would), the others derived — generation limits as a share of the context, then the largest chunk the context
    /// leaves after agent A's and agent B's prompts and generated tokens.
    /// </summary>
    public static SynthesisPlan Plan(ModelConfig config, ITokenizer tokenizer, ChatFormatKind format, SynthesisRunOptions options)
    {
        ArgumentNullException.ThrowIfNull(config); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(options);
        int ctx = config.MaxSeqLen;
        var derived = new List<string>();
        int user = options.MaxUserTokens ?? Derive("max_user_tokens", Math.Max(1, Math.Min(DefaultMaxUserTokens, ctx / 16)));
        int answer = options.MaxAnswerTokens ?? Derive("max_answer_tokens", Math.Max(1, Math.Min(DefaultMaxAnswerTokens, ctx / 8)));
        var (userOverhead, teacherOverhead) = SelfStudySynthesizer.PromptOverheads(
            SynthesisFraming.Create(format, tokenizer), tokenizer, options.Settings.SeedPrompts);
        int room = ctx - Math.Max(userOverhead + user, teacherOverhead + user + answer);
        int max = options.MaxChunkTokens ?? Derive("chunk_tokens", Math.Min(DefaultMaxChunkTokens, room));
        if (max < 1)
            throw new InvalidRequestException(
                $"the model's context of {ctx} leaves no room for a chunk after the prompts (about {Math.Max(userOverhead, teacherOverhead)} tokens) and " +
                $"{user} + {answer} generated tokens; lower --max-user-tokens and --max-answer-tokens.");
        int min = options.MinChunkTokens ?? Derive("min_chunk_tokens", Math.Max(1, Math.Min(DefaultMinChunkTokens, max / 2)));
        return new SynthesisPlan(min, max, user, answer, ctx, derived);

        int Derive(string name, int value) { derived.Add(name); return value; }
    }

    /// <summary>Runs the whole synthesis; throws <see cref="CasException"/> or <see cref="ResourceException"/> with messages that say what to do.</summary>
    public static SynthesisRunResult Execute(Model model, ITokenizer tokenizer, SynthesisRunOptions options,
        IProgress<SynthesisRunEvent>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(options);
        Check(options); // before reading anything
        var documents = ReadResources(options.Resources, options.Strict, progress);
        return Execute(model, tokenizer, documents, options, progress, cancel);
    }

    /// <summary>
    /// The same run over documents the caller already holds (a collection's, say): <see cref="SynthesisRunOptions.Resources"/>
    /// and <see cref="SynthesisRunOptions.Strict"/> are not read.
    /// </summary>
    public static SynthesisRunResult Execute(Model model, ITokenizer tokenizer, IReadOnlyList<Document> documents, SynthesisRunOptions options,
        IProgress<SynthesisRunEvent>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(documents); ArgumentNullException.ThrowIfNull(options);
        Check(options);
        var format = ChatFormat.Resolve(options.ChatFormat, tokenizer, options.TokenizerPath);
        progress?.Report(new SynthesisRunNote($"framing: {(format == ChatFormatKind.Plain ? "base model (plain text)" : format.ToString())}"));
        var plan = Plan(model.Config, tokenizer, format, options);
        progress?.Report(new SynthesisRunNote(plan.Describe()));
        var settings = options.Settings with
        {
            Conversations = options.Conversations,
            MinChunkTokens = plan.MinChunkTokens, MaxChunkTokens = plan.MaxChunkTokens,
            UserAgent = options.Settings.UserAgent with { MaxTokens = plan.MaxUserTokens },
            AnswerAgent = options.Settings.AnswerAgent with { MaxTokens = plan.MaxAnswerTokens },
        };

        var synth = new SelfStudySynthesizer(model, tokenizer, format, documents, settings);
        var extra = new Dictionary<string, string>();
        if (options.TokenizerPath is { Length: > 0 } tp) extra["tokenizer_sha256"] = TokenizerHash(tp);
        using var writer = DatasetWriter.Open(options.OutputPath, options.Resume, new DatasetWriterOptions { Metadata = synth.Metadata(extra) });
        if (writer.RepairedTornTail is { } torn) progress?.Report(new SynthesisRunNote($"repaired: cut off a {torn}"));
        if (writer.ExistingCount > 0) progress?.Report(new SynthesisRunNote($"resuming: {writer.ExistingCount} conversations already in {writer.Path}"));
        SynthesisSummary summary;
        try
        {
            summary = synth.WriteTo(writer, p => progress?.Report(new SynthesisRunProgress(p)), cancel);
        }
        catch (OperationCanceledException)
        {
            writer.Flush();
            progress?.Report(new SynthesisRunNote($"interrupted: {writer.Count} conversations are in {writer.Path}; run again with --resume to continue."));
            throw;
        }
        writer.Flush();
        return new SynthesisRunResult(writer.Path, synth.Framing, documents.Count, plan, summary, writer.Count);
    }

    static void Check(SynthesisRunOptions options)
    {
        if (options.Conversations < 1) throw new InvalidRequestException($"the number of conversations must be at least 1, got {options.Conversations}.");
        if (string.IsNullOrWhiteSpace(options.OutputPath)) throw new InvalidRequestException("give the dataset file to write.");
        options.Settings.Validate();
    }

    /// <summary>Reads every resource (every spec is checked before any is read), reports what was skipped, and refuses an empty result.</summary>
    public static List<Document> ReadResources(IReadOnlyList<string> specs, bool strict, IProgress<SynthesisRunEvent>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(specs);
        if (specs.Count == 0) throw new InvalidRequestException("give at least one resource (--resource KIND:PATH[#field]).");
        var report = new ResourceReport(strict);
        var documents = new List<Document>();
        var parsed = specs.Select(s => ResourceSpec.Parse(s)).ToList();
        foreach (var r in parsed) documents.AddRange(r.Read(report));
        string summary = report.Summary();
        if (summary.Length > 0) progress?.Report(new SynthesisRunNote(summary.TrimEnd('\n')));
        if (documents.Count == 0)
            throw new InvalidRequestException($"the resources ({string.Join(", ", specs)}) yielded no documents; see the resource report for what was skipped.");
        return documents;
    }

    /// <summary>SHA-256 of the tokenizer file (tokenizer.json inside a folder).</summary>
    static string TokenizerHash(string tokPath)
    {
        string file = Directory.Exists(tokPath) ? Path.Combine(tokPath, "tokenizer.json") : tokPath;
        using var f = File.OpenRead(file);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }
}
