using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using Cas.SelfStudy;
using Spectre.Console;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas synthesize`: self-study data from resources into a dataset file. Progress and the resource
/// report go to stderr; the final key=value summary to stdout.
/// </summary>
static class SynthesizeCommand
{
    public static Command Create()
    {
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var resources = new Option<string[]>("--resource")
        {
            Description = "Input documents as KIND:PATH[#field] (kinds: " + string.Join(", ", ResourceSpec.Kinds) + "); repeat for several.",
            Required = true, AllowMultipleArgumentsPerToken = false,
        };
        var output = new Option<string>("--out") { Description = "Dataset file to write (.casds).", Required = true };
        var conversations = new Option<long>("--conversations") { Description = "Conversations to generate (indices 0..N-1).", Required = true };
        var chunkTokens = new Option<string>("--chunk-tokens") { Description = "Chunk size range in tokens, MIN:MAX.", DefaultValueFactory = _ => "512:2048" };
        var seedPrompts = new Option<string>("--seed-prompts")
        {
            Description = "Seed prompt mix kind=weight,... (structuring, summarization, question, use_case, creative, generic).",
            DefaultValueFactory = _ => SeedPromptMix.Uniform.ToString(),
        };
        var rounds = new Option<int>("--rounds") { Description = "User/answer exchanges per conversation.", DefaultValueFactory = _ => 1 };
        var maxAnswer = new Option<int>("--max-answer-tokens") { Description = "Most tokens per answer (agent B).", DefaultValueFactory = _ => AgentOptions.AnswerDefaults.MaxTokens };
        var maxUser = new Option<int>("--max-user-tokens") { Description = "Most tokens per user message (agent A).", DefaultValueFactory = _ => AgentOptions.UserDefaults.MaxTokens };
        var userTemperature = new Option<float>("--user-temperature") { Description = "Agent A's sampling temperature.", DefaultValueFactory = _ => AgentOptions.UserDefaults.Temperature };
        var answerTemperature = new Option<float>("--answer-temperature") { Description = "Agent B's temperature (0 = greedy).", DefaultValueFactory = _ => AgentOptions.AnswerDefaults.Temperature };
        var topK = new Option<int>("--top-k") { Description = "Most teacher log-probs kept per answer token.", DefaultValueFactory = _ => TeacherTopK.DefaultMaxK };
        var topKMass = new Option<double>("--top-k-mass") { Description = "Keep entries until their cumulative probability reaches this.", DefaultValueFactory = _ => TeacherTopK.DefaultMass };
        var perChunk = new Option<int>("--per-chunk") { Description = "Consecutive conversations sharing one chunk (and its prefilled KV).", DefaultValueFactory = _ => 8 };
        var concurrency = new Option<int>("--concurrency") { Description = "Conversations generated together in one batch (does not change the output).", DefaultValueFactory = _ => 16 };
        var seed = new Option<ulong>("--seed") { Description = "Run seed.", DefaultValueFactory = _ => 1UL };
        var chatFormat = new Option<string>("--chat-format") { Description = "auto | chatml | llama3 | base. auto: the tokenizer's chat template, else its special tokens, else base-model framing.", DefaultValueFactory = _ => "auto" };
        var resume = new Option<bool>("--resume") { Description = "Continue an existing dataset: skip conversations already in it, repair a torn tail." };
        var strict = new Option<bool>("--strict") { Description = "Stop at the first input that would be skipped or altered while reading resources." };
        var noChunkText = new Option<bool>("--no-chunk-text") { Description = "Do not store chunk texts in the records." };
        var noSharing = new Option<bool>("--no-prefix-sharing") { Description = "Prefill every prompt whole instead of forking each chunk's prefilled KV (slower; for checks)." };
        var cmd = new Command("synthesize", "Generate self-study conversations with teacher top-k log-probs from documents.")
        {
            model, tokenizer, resources, output, conversations, chunkTokens, seedPrompts, rounds, maxAnswer, maxUser,
            userTemperature, answerTemperature, topK, topKMass, perChunk, concurrency, seed, chatFormat, resume, strict, noChunkText, noSharing,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            try
            {
                // Everything that can be checked without the model, first.
                long n = pr.GetValue(conversations);
                if (n < 1) throw new InvalidRequestException($"--conversations must be at least 1, got {n}.");
                var (minChunk, maxChunk) = SelfStudyOptions.ParseChunkTokens(pr.GetValue(chunkTokens)!);
                var options = new SelfStudyOptions
                {
                    Conversations = n,
                    Seed = pr.GetValue(seed),
                    MinChunkTokens = minChunk,
                    MaxChunkTokens = maxChunk,
                    SeedPrompts = SeedPromptMix.Parse(pr.GetValue(seedPrompts)!),
                    Rounds = pr.GetValue(rounds),
                    UserAgent = AgentOptions.UserDefaults with { MaxTokens = pr.GetValue(maxUser), Temperature = pr.GetValue(userTemperature) },
                    AnswerAgent = AgentOptions.AnswerDefaults with { MaxTokens = pr.GetValue(maxAnswer), Temperature = pr.GetValue(answerTemperature) },
                    TopK = pr.GetValue(topK),
                    TopKMass = pr.GetValue(topKMass),
                    ConversationsPerChunk = pr.GetValue(perChunk),
                    Concurrency = pr.GetValue(concurrency),
                    KeepChunkText = !pr.GetValue(noChunkText),
                    SharePrefix = !pr.GetValue(noSharing),
                };
                options.Validate();
                string outPath = pr.GetValue(output)!;

                var documents = ReadResources(pr.GetValue(resources) ?? [], pr.GetValue(strict));
                var (m, tok, tokPath) = Cli.Load(pr.GetValue(model), pr.GetValue(tokenizer));
                var format = ResolveChatFormat(pr.GetValue(chatFormat)!, tok, tokPath);
                Console.Error.WriteLine($"framing: {(format is null ? "base model (plain text)" : format.ToString())}");

                var synth = new SelfStudySynthesizer(m, tok, format, documents, options);
                var metadata = synth.Metadata(new Dictionary<string, string> { ["tokenizer_sha256"] = TokenizerHash(tokPath) });
                using var writer = DatasetWriter.Open(outPath, pr.GetValue(resume), new DatasetWriterOptions { Metadata = metadata });
                if (writer.RepairedTornTail is { } torn) Console.Error.WriteLine($"repaired: cut off a {torn}");
                if (writer.ExistingCount > 0) Console.Error.WriteLine($"resuming: {writer.ExistingCount} conversations already in {writer.Path}");

                using var cancel = new CancellationTokenSource();
                ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cancel.Cancel(); };
                Console.CancelKeyPress += onCancel;
                SynthesisSummary summary;
                try { summary = RunWithProgress(synth, writer, n, cancel.Token); }
                catch (OperationCanceledException)
                {
                    writer.Flush();
                    Console.Error.WriteLine($"interrupted: {writer.Count} conversations are in {writer.Path}; run again with --resume to continue.");
                    return 130;
                }
                finally { Console.CancelKeyPress -= onCancel; }
                writer.Flush();

                var ci = CultureInfo.InvariantCulture;
                var o = Console.Out;
                o.WriteLine($"out={writer.Path}");
                o.WriteLine($"framing={synth.Framing}");
                o.WriteLine($"documents={documents.Count}");
                o.WriteLine($"conversations_requested={summary.Requested}");
                o.WriteLine($"conversations_already_present={summary.AlreadyPresent}");
                o.WriteLine($"conversations_written={summary.Written}");
                o.WriteLine($"dropped_empty_user_message={summary.DroppedEmptyMessage}");
                o.WriteLine($"dropped_empty_answer={summary.DroppedEmptyAnswer}");
                o.WriteLine($"dropped_no_room_in_context={summary.DroppedNoRoom}");
                o.WriteLine($"cut_short_rounds={summary.CutShort}");
                o.WriteLine($"answers_truncated={summary.AnswersTruncated}");
                o.WriteLine($"chunk_prefills={summary.ChunkPrefills}");
                o.WriteLine($"user_tokens={summary.UserTokens}");
                o.WriteLine($"answer_tokens={summary.AnswerTokens}");
                o.WriteLine($"target_entries={summary.TargetEntries}");
                o.WriteLine(string.Create(ci, $"elapsed_s={summary.Elapsed.TotalSeconds:F1}"));
                o.WriteLine(string.Create(ci, $"generated_tok_s={summary.TokensPerSecond:F1}"));
                o.WriteLine($"dataset_conversations={writer.Count}");
                return 0;
            }
            catch (ResourceException e)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }
        }));
        return cmd;
    }

    /// <summary>Reads every resource, prints the report on stderr, and refuses an empty result.</summary>
    static List<Cas.Resources.Document> ReadResources(string[] specs, bool strict)
    {
        if (specs.Length == 0) throw new InvalidRequestException("give at least one --resource KIND:PATH[#field].");
        var report = new ResourceReport(strict);
        var documents = new List<Cas.Resources.Document>();
        var parsed = specs.Select(s => ResourceSpec.Parse(s)).ToList(); // every spec is checked before reading any
        foreach (var r in parsed) documents.AddRange(r.Read(report));
        Console.Error.Write(report.Summary());
        if (documents.Count == 0)
            throw new InvalidRequestException($"the resources ({string.Join(", ", specs)}) yielded no documents; see the report above for what was skipped.");
        return documents;
    }

    /// <summary>auto: the tokenizer_config.json template, else the tokenizer's special tokens, else base-model framing (null).</summary>
    static ChatFormatKind? ResolveChatFormat(string name, ITokenizer tok, string tokPath) => name.Trim().ToLowerInvariant() switch
    {
        "auto" => ChatFormat.Detect(tokPath)
            ?? (tok.SpecialTokenId("<|im_start|>") != null && tok.SpecialTokenId("<|im_end|>") != null ? ChatFormatKind.ChatML
            : tok.SpecialTokenId("<|start_header_id|>") != null && tok.SpecialTokenId("<|eot_id|>") != null ? ChatFormatKind.Llama3
            : null),
        "chatml" => ChatFormatKind.ChatML,
        "llama3" => ChatFormatKind.Llama3,
        "base" or "plain" => null,
        "llama2" => ChatFormatKind.Llama2, // refused by the synthesizer with the reason
        _ => throw new InvalidRequestException($"unknown --chat-format '{name}'; use auto, chatml, llama3 or base."),
    };

    /// <summary>SHA-256 of the tokenizer file (tokenizer.json inside a folder), so a resume cannot switch tokenizers.</summary>
    static string TokenizerHash(string tokPath)
    {
        string file = Directory.Exists(tokPath) ? Path.Combine(tokPath, "tokenizer.json") : tokPath;
        using var f = File.OpenRead(file);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    static SynthesisSummary RunWithProgress(SelfStudySynthesizer synth, DatasetWriter writer, long total, CancellationToken cancel)
    {
        if (Console.IsErrorRedirected)
        {
            // Plain lines for logs: one every 5 seconds and a last one.
            var last = TimeSpan.Zero;
            bool finished = false;
            var summary = synth.WriteTo(writer, p =>
            {
                if (finished || (p.Elapsed - last < TimeSpan.FromSeconds(5) && p.Remaining > 0)) return;
                last = p.Elapsed;
                finished = p.Remaining == 0;
                Console.Error.WriteLine(Describe(p));
            }, cancel);
            return summary;
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        SynthesisSummary? result = null;
        console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("starting", maxValue: total);
                result = synth.WriteTo(writer, p =>
                {
                    task.Value = p.AlreadyPresent + p.Done;
                    task.Description = Markup.Escape(Describe(p));
                }, cancel);
                task.StopTask();
            });
        return result!;
    }

    static string Describe(SynthesisProgress p)
    {
        long done = p.AlreadyPresent + p.Done;
        string eta = p.Eta is { } e ? FormatTime(e) : "?";
        return string.Create(CultureInfo.InvariantCulture,
            $"conversations {done}/{p.Total}  {p.TokensPerSecond:F0} tok/s  elapsed {FormatTime(p.Elapsed)}  ETA {eta}");
    }

    static string FormatTime(TimeSpan t) => t.TotalHours >= 1
        ? $"{(int)t.TotalHours}h{t.Minutes:D2}m"
        : t.TotalMinutes >= 1 ? $"{(int)t.TotalMinutes}m{t.Seconds:D2}s" : $"{t.Seconds}s";
}
