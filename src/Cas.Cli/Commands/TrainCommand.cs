using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Training;
using Spectre.Console;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas train`: trains a cartridge for a document (self-made probe data) or a self-study dataset. Progress goes to
/// stderr (a Spectre.Console bar on a terminal, plain lines otherwise); stdout gets a key=value summary.
/// Checkpoints go to OUT.ckpt; --resume continues from it exactly.
/// </summary>
static class TrainCommand
{
    public static Command Create()
    {
        var d = new TrainingRunOptions { DataPath = "", OutputPath = "" }; // the library's defaults, shown in --help
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var data = Options.Data();
        var output = Options.Out();
        var tokens = Options.CartridgeTokens();
        var init = new Option<string>("--init") { Description = "first-k | random-text | random.", DefaultValueFactory = _ => d.Init.Name() };
        var objective = new Option<string>("--objective") { Description = "distill (teacher with the document in context) | ntp (next-token prediction on the document).", DefaultValueFactory = _ => "distill" };
        var steps = Options.Steps();
        var epochs = new Option<double?>("--epochs") { Description = $"Passes over the training examples (instead of --steps). Default: {TrainingRunOptions.DefaultEpochs.ToString(CultureInfo.InvariantCulture)}." };
        var lr = new Option<float>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => d.LearningRate };
        var batch = new Option<int>("--batch") { Description = "Sequences per micro-batch.", DefaultValueFactory = _ => d.BatchSize };
        var accumulate = new Option<int>("--accumulate") { Description = "Micro-batches per optimizer step.", DefaultValueFactory = _ => d.Accumulate };
        var warmup = new Option<double>("--warmup") { Description = "Fraction of steps for linear warmup (at least one step).", DefaultValueFactory = _ => d.WarmupFraction };
        var schedule = new Option<string>("--schedule") { Description = "linear | cosine decay to 0.02× the peak.", DefaultValueFactory = _ => d.Schedule.ToString().ToLowerInvariant() };
        var clip = new Option<float>("--clip") { Description = "Global gradient-norm clip (0 = off).", DefaultValueFactory = _ => d.ClipNorm };
        var weightDecay = new Option<double>("--weight-decay") { Description = "AdamW weight decay.", DefaultValueFactory = _ => d.WeightDecay };
        var frozen = new Option<int>("--frozen-slots") { Description = "Leading cartridge slots kept frozen (attention sink).", DefaultValueFactory = _ => d.FrozenSlots };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Write OUT.ckpt every N steps (0 = never).", DefaultValueFactory = _ => d.CheckpointEvery };
        var seed = Options.Seed(d.Seed);
        var resume = Options.Resume();
        var dtype = new Option<string>("--dtype") { Description = "f32 | bf16: precision of the written cartridge.", DefaultValueFactory = _ => "f32" };
        var document = new Option<string?>("--document") { Description = "With a dataset and --init first-k: the document whose first p tokens start the cartridge." };
        var probesPerChunk = Options.ProbesPerChunk(d.Probes.ExamplesPerChunk);
        var chunkTokens = Options.ChunkTokens();
        var continuation = Options.ContinuationTokens();
        var log = new Option<string?>("--log") { Description = "Append one CSV line per step (step,loss,kl,lr,grad_norm,tokens_per_s,elapsed_s) to this file; kl = loss − the batch's teacher entropy." };
        var heldOut = new Option<int>("--held-out") { Description = "Document data: held-out probes per chunk to measure loss before and after (0 = none).", DefaultValueFactory = _ => d.HeldOutProbesPerChunk };

        var weightStorage = Options.WeightStorage();
        var cmd = new Command("train", "Train a cartridge (a KV prefix) for a frozen model by context distillation.")
        {
            model, tokenizer, data, output, tokens, init, objective, steps, epochs, lr, batch, accumulate, warmup, schedule, clip,
            weightDecay, frozen, checkpointEvery, seed, resume, dtype, document, probesPerChunk, chunkTokens, continuation, heldOut, log,
            weightStorage,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            // Everything that can be checked without the model, first.
            var options = new TrainingRunOptions
            {
                DataPath = pr.GetValue(data)!, OutputPath = pr.GetValue(output)!, CartridgeTokens = pr.GetValue(tokens),
                Init = CartridgeInitKinds.Parse(pr.GetValue(init)!),
                Objective = pr.GetValue(objective)!.ToLowerInvariant() switch
                {
                    "distill" => TrainingObjective.Distill,
                    "ntp" => TrainingObjective.Ntp,
                    var o => throw new InvalidRequestException($"unknown --objective '{o}'; use distill or ntp."),
                },
                Steps = pr.GetValue(steps), Epochs = pr.GetValue(epochs), LearningRate = pr.GetValue(lr), BatchSize = pr.GetValue(batch),
                Accumulate = pr.GetValue(accumulate), WarmupFraction = pr.GetValue(warmup),
                Schedule = pr.GetValue(schedule)!.ToLowerInvariant() switch
                {
                    "linear" => LrScheduleKind.Linear,
                    "cosine" => LrScheduleKind.Cosine,
                    var o => throw new InvalidRequestException($"unknown --schedule '{o}'; use linear or cosine."),
                },
                ClipNorm = pr.GetValue(clip), WeightDecay = pr.GetValue(weightDecay), FrozenSlots = pr.GetValue(frozen),
                CheckpointEvery = pr.GetValue(checkpointEvery), Seed = pr.GetValue(seed), Resume = pr.GetValue(resume),
                DType = pr.GetValue(dtype)!.ToLowerInvariant() switch
                {
                    "f32" or "fp32" => SafeTensorDType.F32,
                    "bf16" => SafeTensorDType.BF16,
                    var o => throw new InvalidRequestException($"unknown --dtype '{o}'; use f32 or bf16."),
                },
                DocumentPath = pr.GetValue(document), ChunkTokens = pr.GetValue(chunkTokens),
                Probes = d.Probes with { ExamplesPerChunk = pr.GetValue(probesPerChunk), ContinuationTokens = pr.GetValue(continuation) },
                HeldOutProbesPerChunk = pr.GetValue(heldOut),
            };
            options.Validate();
            var (m, tok, _) = Cli.Load(pr.GetValue(model), pr.GetValue(tokenizer), Options.ParseWeightStorage(pr.GetValue(weightStorage)));
            string? logPath = pr.GetValue(log);

            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            try
            {
                if (Console.IsErrorRedirected) return Execute(m, tok, options, logPath, new PlainReporter(), cts.Token);
                var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
                int rc = 0;
                console.Progress().AutoClear(false).HideCompleted(false)
                    .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn())
                    .Start(ctx => rc = Execute(m, tok, options, logPath, new SpectreReporter(ctx, console), cts.Token));
                return rc;
            }
            finally { Console.CancelKeyPress -= onCancel; }
        }));
        return cmd;
    }

    /// <summary>Runs <see cref="TrainingRun.Execute"/> with progress on stderr (and the CSV log), then prints the key=value summary.</summary>
    static int Execute(Model m, ITokenizer tok, TrainingRunOptions options, string? logPath, IReporter report, CancellationToken cancel)
    {
        StreamWriter? logFile = null;
        string phase = "";
        try
        {
            var progress = new SyncProgress<TrainingRunEvent>(e =>
            {
                switch (e)
                {
                    case TrainingRunNote n: report.Note(n.Text); break;
                    case TrainingRunDataProgress dp:
                        string title = dp.Phase == "teacher" ? "teacher continuations" : "held-out probes";
                        if (phase != dp.Phase) { phase = dp.Phase; report.Phase(dp.Phase, title); }
                        report.Update(dp.Done, dp.Total, $"{title} {dp.Done}/{dp.Total}");
                        break;
                    case TrainingRunStarted st:
                        phase = "train"; report.Phase("train", "training");
                        if (logPath != null)
                        {
                            logFile = new StreamWriter(logPath, append: st.ResumedFromStep > 0) { AutoFlush = true };
                            if (st.ResumedFromStep == 0) logFile.WriteLine("step,loss,kl,lr,grad_norm,tokens_per_s,elapsed_s");
                        }
                        break;
                    case TrainingRunStep { Step: var pg }:
                        logFile?.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"{pg.Step},{pg.Loss:R},{pg.ExcessLoss:G6},{pg.LearningRate:R},{pg.GradNorm:G6},{pg.TokensPerSecond:F1},{pg.Elapsed.TotalSeconds:F3}"));
                        report.Update(pg.Step, pg.TotalSteps,
                            $"step {pg.Step}/{pg.TotalSteps}  loss {pg.Loss:F4}  kl {pg.ExcessLoss:F4}  lr {pg.LearningRate:G3}  {pg.TokensPerSecond:F0} tok/s  eta {Eta(pg.Eta)}{(pg.Checkpointed ? "  (checkpoint)" : "")}");
                        break;
                }
            });
            var r = TrainingRun.Execute(m, tok, options, progress, cancel);
            report.Done();

            var final = r.Cartridge;
            var o = Console.Out;
            o.WriteLine($"out={r.OutputPath}");
            o.WriteLine($"model_fingerprint={r.ModelFingerprint}");
            o.WriteLine($"p={r.Plan.CartridgeTokens}");
            if (r.Plan.ChunkTokens > 0) o.WriteLine($"chunk_tokens={r.Plan.ChunkTokens}");
            o.WriteLine($"init={final.Init.Name()}");
            o.WriteLine($"objective={final.Objective}");
            o.WriteLine($"frozen_slots={final.FrozenSlots}");
            o.WriteLine($"examples={r.Examples}");
            o.WriteLine($"steps={r.Steps}");
            o.WriteLine($"resumed_from_step={r.ResumedFromStep}");
            o.WriteLine($"tokens_trained={r.TokensTrained}");
            o.WriteLine($"loss_floor={D(r.LossFloor)}");
            o.WriteLine($"initial_loss={D(final.InitialLoss)}");
            o.WriteLine($"final_loss={D(final.FinalLoss)}");
            if (r.HeldOutInitialLoss is double hi) o.WriteLine($"held_out_initial_loss={D(hi)}");
            if (r.HeldOutFinalLoss is double hf) o.WriteLine($"held_out_final_loss={D(hf)}");
            if (r.HeldOutLossFloor is double hl) o.WriteLine($"held_out_loss_floor={D(hl)}");
            o.WriteLine($"elapsed_s={r.Elapsed.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture)}");
            o.WriteLine($"tokens_per_s={r.TokensPerSecond.ToString("F1", CultureInfo.InvariantCulture)}");
            return 0;
        }
        finally { logFile?.Dispose(); }
    }

    static string D(double? v) => v is double d ? d.ToString("F6", CultureInfo.InvariantCulture) : "";
    static string Eta(TimeSpan t) => t.TotalHours >= 1 ? t.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture) : t.ToString(@"m\:ss", CultureInfo.InvariantCulture);

    // ------------------------------------------------------------------------------------------------
    // Progress on stderr

    interface IReporter
    {
        void Phase(string key, string title);
        void Update(int done, int total, string text);
        void Note(string text);
        void Done();
    }

    /// <summary>Plain lines (stderr is a file or pipe): at most about one a second, plus the last.</summary>
    sealed class PlainReporter : IReporter
    {
        readonly Stopwatch _clock = Stopwatch.StartNew();
        double _last = double.NegativeInfinity;
        public void Phase(string key, string title) => _last = double.NegativeInfinity;
        public void Update(int done, int total, string text)
        {
            double now = _clock.Elapsed.TotalSeconds;
            if (done < total && now - _last < 1.0) return;
            _last = now;
            Console.Error.WriteLine(text);
        }
        public void Note(string text) => Console.Error.WriteLine(text);
        public void Done() { }
    }

    /// <summary>A Spectre.Console progress bar per phase.</summary>
    sealed class SpectreReporter(ProgressContext ctx, IAnsiConsole console) : IReporter
    {
        ProgressTask? _task;
        public void Phase(string key, string title)
        {
            _task?.StopTask();
            _task = ctx.AddTask(Markup.Escape(title), maxValue: 1);
        }
        public void Update(int done, int total, string text)
        {
            if (_task == null) return;
            _task.MaxValue = Math.Max(1, total);
            _task.Value = done;
            _task.Description = Markup.Escape(text);
        }
        public void Note(string text) => console.MarkupLine("[grey]" + Markup.Escape(text) + "[/]");
        public void Done() { _task?.StopTask(); ctx.Refresh(); }
    }
}
