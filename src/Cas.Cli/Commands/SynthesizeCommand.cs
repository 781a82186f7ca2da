using System.CommandLine;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Engine.Models;
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
        var d = new SelfStudyOptions();
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var resources = Options.Resources();
        var output = Options.Out();
        var conversations = new Option<long>("--conversations") { Description = "Conversations to generate (indices 0..N-1).", Required = true };
        var chunkTokens = Options.ChunkTokens();
        var minChunkTokens = new Option<int?>("--min-chunk-tokens") { Description = "Smallest chunk in tokens (chunk sizes are drawn between this and --chunk-tokens). Default: min(512, --chunk-tokens / 2)." };
        var seedPrompts = new Option<string>("--seed-prompts")
        {
            Description = "Seed prompt mix kind=weight,... (structuring, summarization, question, use_case, creative, generic).",
            DefaultValueFactory = _ => SeedPromptMix.Uniform.ToString(),
        };
        var rounds = new Option<int>("--rounds") { Description = "User/answer exchanges per conversation.", DefaultValueFactory = _ => d.Rounds };
        var maxAnswer = new Option<int?>("--max-answer-tokens") { Description = $"Most tokens per answer (agent B). Default: min({SynthesisRun.DefaultMaxAnswerTokens}, context/8)." };
        var maxUser = new Option<int?>("--max-user-tokens") { Description = $"Most tokens per user message (agent A). Default: min({SynthesisRun.DefaultMaxUserTokens}, context/16)." };
        var userTemperature = new Option<float>("--user-temperature") { Description = "Agent A's sampling temperature.", DefaultValueFactory = _ => AgentOptions.UserDefaults.Temperature };
        var answerTemperature = new Option<float>("--answer-temperature") { Description = "Agent B's temperature (0 = greedy).", DefaultValueFactory = _ => AgentOptions.AnswerDefaults.Temperature };
        var topK = Options.TeacherTopK(TeacherTopK.DefaultMaxK);
        var topKMass = new Option<double>("--teacher-mass") { Description = "Keep the teacher's entries, most probable first, until their cumulative probability reaches this.", DefaultValueFactory = _ => TeacherTopK.DefaultMass };
        var perChunk = new Option<int>("--per-chunk") { Description = "Consecutive conversations sharing one chunk (and its prefilled KV).", DefaultValueFactory = _ => d.ConversationsPerChunk };
        var concurrency = new Option<int>("--concurrency") { Description = "Conversations generated together in one batch (does not change the output).", DefaultValueFactory = _ => d.Concurrency };
        var seed = Options.Seed(d.Seed);
        var chatFormat = Options.ChatFormat("auto");
        var resume = Options.Resume();
        var strict = Options.Strict();
        var noChunkText = new Option<bool>("--no-chunk-text") { Description = "Do not store chunk texts in the records." };
        var noSharing = new Option<bool>("--no-prefix-sharing") { Description = "Prefill every prompt whole instead of forking each chunk's prefilled KV (slower; for checks)." };
        var weightStorage = Options.WeightStorage();
        var cmd = new Command("synthesize", "Generate self-study conversations with teacher top-k log-probs from documents.")
        {
            model, tokenizer, resources, output, conversations, chunkTokens, minChunkTokens, seedPrompts, rounds, maxAnswer, maxUser,
            userTemperature, answerTemperature, topK, topKMass, perChunk, concurrency, seed, chatFormat, resume, strict, noChunkText, noSharing,
            weightStorage,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            // Everything that can be checked without the model, first.
            long n = pr.GetValue(conversations);
            if (n < 1) throw new InvalidRequestException($"--conversations must be at least 1, got {n}.");
            var settings = new SelfStudyOptions
            {
                Conversations = n,
                Seed = pr.GetValue(seed),
                SeedPrompts = SeedPromptMix.Parse(pr.GetValue(seedPrompts)!),
                Rounds = pr.GetValue(rounds),
                UserAgent = AgentOptions.UserDefaults with { Temperature = pr.GetValue(userTemperature) },
                AnswerAgent = AgentOptions.AnswerDefaults with { Temperature = pr.GetValue(answerTemperature) },
                TopK = pr.GetValue(topK),
                TopKMass = pr.GetValue(topKMass),
                ConversationsPerChunk = pr.GetValue(perChunk),
                Concurrency = pr.GetValue(concurrency),
                KeepChunkText = !pr.GetValue(noChunkText),
                SharePrefix = !pr.GetValue(noSharing),
            };
            settings.Validate();
            foreach (var (name, v) in new[] { ("--chunk-tokens", pr.GetValue(chunkTokens)), ("--min-chunk-tokens", pr.GetValue(minChunkTokens)), ("--max-user-tokens", pr.GetValue(maxUser)), ("--max-answer-tokens", pr.GetValue(maxAnswer)) })
                if (v is int x && x < 1) throw new InvalidRequestException($"{name} must be at least 1, got {x}.");
            var format = ChatFormat.Parse(pr.GetValue(chatFormat));
            var (m, tok, tokPath) = Cli.Load(pr.GetValue(model), pr.GetValue(tokenizer), Options.ParseWeightStorage(pr.GetValue(weightStorage)));
            var options = new SynthesisRunOptions
            {
                Resources = pr.GetValue(resources) ?? [], OutputPath = pr.GetValue(output)!, Conversations = n, ChatFormat = format,
                TokenizerPath = tokPath, Resume = pr.GetValue(resume), Strict = pr.GetValue(strict),
                MinChunkTokens = pr.GetValue(minChunkTokens), MaxChunkTokens = pr.GetValue(chunkTokens),
                MaxUserTokens = pr.GetValue(maxUser), MaxAnswerTokens = pr.GetValue(maxAnswer), Settings = settings,
            };

            using var cancel = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cancel.Cancel(); };
            Console.CancelKeyPress += onCancel;
            SynthesisRunResult r;
            try { r = RunWithProgress(m, tok, options, n, cancel.Token); }
            catch (OperationCanceledException) { return 130; } // the run's last note said what is kept and how to continue
            finally { Console.CancelKeyPress -= onCancel; }

            var summary = r.Summary;
            var ci = CultureInfo.InvariantCulture;
            var o = Console.Out;
            o.WriteLine($"out={r.OutputPath}");
            o.WriteLine($"framing={r.Framing}");
            o.WriteLine($"documents={r.Documents}");
            o.WriteLine($"chunk_tokens={r.Plan.MinChunkTokens}:{r.Plan.MaxChunkTokens}");
            o.WriteLine($"max_user_tokens={r.Plan.MaxUserTokens}");
            o.WriteLine($"max_answer_tokens={r.Plan.MaxAnswerTokens}");
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
            o.WriteLine($"dataset_conversations={r.DatasetConversations}");
            return 0;
        }));
        return cmd;
    }

    /// <summary>Runs <see cref="SynthesisRun.Execute"/> with notes and progress on stderr (plain lines when redirected, else a bar).</summary>
    static SynthesisRunResult RunWithProgress(Model m, ITokenizer tok, SynthesisRunOptions options, long total, CancellationToken cancel)
    {
        if (Console.IsErrorRedirected)
        {
            // Plain lines for logs: one every 5 seconds and a last one.
            var last = TimeSpan.Zero;
            bool finished = false;
            return SynthesisRun.Execute(m, tok, options, new SyncProgress<SynthesisRunEvent>(e =>
            {
                if (e is SynthesisRunNote note) { Console.Error.WriteLine(note.Text); return; }
                var p = ((SynthesisRunProgress)e).Progress;
                if (finished || (p.Elapsed - last < TimeSpan.FromSeconds(5) && p.Remaining > 0)) return;
                last = p.Elapsed;
                finished = p.Remaining == 0;
                Console.Error.WriteLine(Describe(p));
            }), cancel);
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        SynthesisRunResult? result = null;
        console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("starting", maxValue: total);
                result = SynthesisRun.Execute(m, tok, options, new SyncProgress<SynthesisRunEvent>(e =>
                {
                    if (e is SynthesisRunNote note) { console.MarkupLine("[grey]" + Markup.Escape(note.Text) + "[/]"); return; }
                    var p = ((SynthesisRunProgress)e).Progress;
                    task.Value = p.AlreadyPresent + p.Done;
                    task.Description = Markup.Escape(Describe(p));
                }), cancel);
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
