using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.SelfStudy;
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
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var data = new Option<string>("--data") { Description = "A self-study dataset (.casds) or a plain UTF-8 document (e.g. doc.txt) to make probe data from.", Required = true };
        var output = new Option<string>("--out") { Description = "Cartridge file to write (.safetensors). The checkpoint goes to OUT.ckpt.", Required = true };
        var tokens = new Option<int?>("--tokens") { Description = "p: cartridge size in KV slots. Default: min(2048, context/4)." };
        var init = new Option<string>("--init") { Description = "first-k | random-text | random.", DefaultValueFactory = _ => "first-k" };
        var objective = new Option<string>("--objective") { Description = "distill (teacher with the document in context) | ntp (next-token prediction on the document).", DefaultValueFactory = _ => "distill" };
        var steps = new Option<int?>("--steps") { Description = "Optimizer steps (default: --epochs 2)." };
        var epochs = new Option<double?>("--epochs") { Description = "Passes over the training examples (instead of --steps)." };
        var lr = new Option<float>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => 2e-2f };
        var batch = new Option<int>("--batch") { Description = "Sequences per micro-batch.", DefaultValueFactory = _ => 8 };
        var accumulate = new Option<int>("--accumulate") { Description = "Micro-batches per optimizer step.", DefaultValueFactory = _ => 1 };
        var warmup = new Option<double>("--warmup") { Description = "Fraction of steps for linear warmup (at least one step).", DefaultValueFactory = _ => 0.05 };
        var schedule = new Option<string>("--schedule") { Description = "linear | cosine decay to 0.02× the peak.", DefaultValueFactory = _ => "linear" };
        var clip = new Option<float>("--clip") { Description = "Global gradient-norm clip (0 = off).", DefaultValueFactory = _ => 1f };
        var weightDecay = new Option<double>("--weight-decay") { Description = "AdamW weight decay.", DefaultValueFactory = _ => 0.0 };
        var frozen = new Option<int>("--frozen-slots") { Description = "Leading cartridge slots kept frozen (attention sink).", DefaultValueFactory = _ => 1 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Write OUT.ckpt every N steps (0 = never).", DefaultValueFactory = _ => 50 };
        var seed = new Option<ulong>("--seed") { Description = "Seeds the probe data and the example order.", DefaultValueFactory = _ => 1UL };
        var resume = new Option<bool>("--resume") { Description = "Continue from OUT.ckpt (same settings and data required)." };
        var dtype = new Option<string>("--dtype") { Description = "f32 | bf16: precision of the written cartridge.", DefaultValueFactory = _ => "f32" };
        var document = new Option<string?>("--document") { Description = "With a dataset and --init first-k: the document whose first p tokens start the cartridge." };
        var examplesPerChunk = new Option<int>("--examples-per-chunk") { Description = "Document data: probes per chunk.", DefaultValueFactory = _ => 32 };
        var chunkTokens = new Option<int>("--chunk-tokens") { Description = "Document data: largest chunk the teacher sees.", DefaultValueFactory = _ => 400 };
        var continuation = new Option<int>("--continuation-tokens") { Description = "Document data: most tokens the teacher writes per probe.", DefaultValueFactory = _ => 64 };
        var log = new Option<string?>("--log") { Description = "Append one CSV line per step (step,loss,kl,lr,grad_norm,tokens_per_s,elapsed_s) to this file; kl = loss − the batch's teacher entropy." };
        var heldOut = new Option<int>("--held-out") { Description = "Document data: held-out probes per chunk to measure loss before and after (0 = none).", DefaultValueFactory = _ => 8 };

        var cmd = new Command("train", "Train a cartridge (a KV prefix) for a frozen model by context distillation.")
        {
            model, tokenizer, data, output, tokens, init, objective, steps, epochs, lr, batch, accumulate, warmup, schedule, clip,
            weightDecay, frozen, checkpointEvery, seed, resume, dtype, document, examplesPerChunk, chunkTokens, continuation, heldOut, log,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var a = new Args(
                pr.GetValue(model), pr.GetValue(tokenizer), pr.GetValue(data)!, pr.GetValue(output)!, pr.GetValue(tokens),
                pr.GetValue(init)!, pr.GetValue(objective)!, pr.GetValue(steps), pr.GetValue(epochs), pr.GetValue(lr), pr.GetValue(batch),
                pr.GetValue(accumulate), pr.GetValue(warmup), pr.GetValue(schedule)!, pr.GetValue(clip), pr.GetValue(weightDecay),
                pr.GetValue(frozen), pr.GetValue(checkpointEvery), pr.GetValue(seed), pr.GetValue(resume), pr.GetValue(dtype)!,
                pr.GetValue(document), pr.GetValue(examplesPerChunk), pr.GetValue(chunkTokens), pr.GetValue(continuation), pr.GetValue(heldOut),
                pr.GetValue(log));
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            try
            {
                if (Console.IsErrorRedirected) return Execute(a, new PlainReporter(), cts.Token);
                var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
                int rc = 0;
                console.Progress().AutoClear(false).HideCompleted(false)
                    .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn())
                    .Start(ctx => rc = Execute(a, new SpectreReporter(ctx, console), cts.Token));
                return rc;
            }
            finally { Console.CancelKeyPress -= onCancel; }
        }));
        return cmd;
    }

    sealed record Args(
        string? Model, string? Tokenizer, string Data, string Out, int? Tokens, string Init, string Objective, int? Steps, double? Epochs,
        float Lr, int Batch, int Accumulate, double Warmup, string Schedule, float Clip, double WeightDecay, int Frozen, int CheckpointEvery,
        ulong Seed, bool Resume, string DType, string? Document, int ExamplesPerChunk, int ChunkTokens, int Continuation, int HeldOut,
        string? Log);

    static int Execute(Args a, IReporter report, CancellationToken cancel)
    {
        // ---- arguments that need no model
        var initKind = CartridgeInitKinds.Parse(a.Init);
        bool ntp = a.Objective.ToLowerInvariant() switch
        {
            "distill" => false,
            "ntp" => true,
            _ => throw new InvalidRequestException($"unknown --objective '{a.Objective}'; use distill or ntp."),
        };
        var scheduleKind = a.Schedule.ToLowerInvariant() switch
        {
            "linear" => LrScheduleKind.Linear,
            "cosine" => LrScheduleKind.Cosine,
            _ => throw new InvalidRequestException($"unknown --schedule '{a.Schedule}'; use linear or cosine."),
        };
        var dtype = a.DType.ToLowerInvariant() switch
        {
            "f32" or "fp32" => SafeTensorDType.F32,
            "bf16" => SafeTensorDType.BF16,
            _ => throw new InvalidRequestException($"unknown --dtype '{a.DType}'; use f32 or bf16."),
        };
        if (a.Steps is not null && a.Epochs is not null) throw new InvalidRequestException("give --steps or --epochs, not both.");
        if (a.Steps is int s0 && s0 <= 0) throw new InvalidRequestException($"--steps must be positive, got {s0}.");
        if (!(a.Lr > 0) || float.IsInfinity(a.Lr)) throw new InvalidRequestException($"--lr must be positive, got {a.Lr.ToString(CultureInfo.InvariantCulture)}.");
        if (a.HeldOut < 0) throw new InvalidRequestException($"--held-out must be ≥ 0, got {a.HeldOut}.");
        if (!File.Exists(a.Data)) throw new InvalidRequestException($"--data {a.Data} does not exist.");
        string outPath = Path.GetFullPath(a.Out);
        string ckptPath = outPath + ".ckpt";
        bool isDataset = DatasetFormat.IsDatasetFile(a.Data);
        if (isDataset && ntp) throw new InvalidRequestException("--objective ntp trains on a plain document's own text; give a document, not a dataset, as --data.");

        // ---- model and sizes
        var (m, tok, _) = Cli.Load(a.Model, a.Tokenizer);
        var cfg = m.Config;
        int p = a.Tokens ?? Math.Max(1, Math.Min(2048, cfg.MaxSeqLen / 4));
        CartridgeInit.CheckLength(m, p);
        string fingerprint = Cartridge.Fingerprint(m);
        string dataName = Path.GetFileName(a.Data);

        // ---- training data (and, for a new first-k cartridge, its document: checked before the slow part)
        string? text = isDataset ? null : ReadDocument(a.Data);
        bool resuming = a.Resume && File.Exists(ckptPath);
        int[] docTokens = resuming || initKind != CartridgeInitKind.FirstK ? [] : InitDocument(a, tok, text, isDataset);
        if (docTokens.Length > 0 && docTokens.Length < p) CartridgeInit.FirstK(m, docTokens, p); // throws the clear error
        TrainingExamples examples;
        TrainingExamples? heldOut = null;
        var probeOptions = new DocumentProbeOptions
        {
            ChunkTokens = a.ChunkTokens, ExamplesPerChunk = a.ExamplesPerChunk, ContinuationTokens = a.Continuation, Seed = a.Seed,
        };
        if (isDataset)
        {
            examples = DatasetExamples.Load(a.Data, cfg.VocabSize, cfg.MaxSeqLen - p);
        }
        else if (ntp)
        {
            examples = DocumentProbes.NextToken(tok, text!, dataName, Math.Min(a.ChunkTokens, cfg.MaxSeqLen - p));
        }
        else
        {
            report.Phase("teacher", "teacher continuations");
            examples = DocumentProbes.Build(m, tok, text!, dataName, probeOptions, (d, n) => report.Update(d, n, $"teacher continuations {d}/{n}"), cancel);
        }
        if (!isDataset && a.HeldOut > 0)
        {
            report.Phase("heldout", "held-out probes");
            heldOut = DocumentProbes.Build(m, tok, text!, dataName,
                probeOptions with { Split = ProbeSplit.HeldOut, ExamplesPerChunk = a.HeldOut, Seed = a.Seed + 0x9E3779B9UL },
                (d, n) => report.Update(d, n, $"held-out probes {d}/{n}"), cancel);
        }
        report.Note($"data: {examples.Description}; {examples.Tokens} tokens, {examples.TargetPositions} target positions, loss floor {examples.LossFloor:F4}");

        int totalSteps = a.Steps ?? TrainingOptions.StepsForEpochs(a.Epochs ?? 2, examples.Count, Math.Max(1, a.Batch), Math.Max(1, a.Accumulate));
        var options = new TrainingOptions
        {
            Steps = totalSteps, BatchSize = a.Batch, Accumulate = a.Accumulate, LearningRate = a.Lr, WarmupFraction = a.Warmup,
            Schedule = scheduleKind, ClipNorm = a.Clip, WeightDecay = a.WeightDecay, FrozenSlots = a.Frozen, Seed = a.Seed,
            CheckpointEvery = a.CheckpointEvery,
        };
        options.Validate(p);

        // ---- the state: resumed from OUT.ckpt or new
        TrainingState state;
        int resumedFrom = 0;
        if (resuming)
        {
            state = TrainingState.LoadCheckpoint(ckptPath, m, fingerprint);
            var c = state.Cartridge;
            if (c.Length != p) throw new InvalidRequestException($"the checkpoint {ckptPath} holds a cartridge of {c.Length} slots but --tokens asks for {p}; resume with --tokens {c.Length}.");
            if (c.Init != initKind) throw new InvalidRequestException($"the checkpoint {ckptPath} was initialised with {c.Init.Name()}, not {initKind.Name()}; resume with --init {c.Init.Name()}.");
            string objectiveName = ntp ? "ntp" : "distill";
            if (c.Objective != objectiveName) throw new InvalidRequestException($"the checkpoint {ckptPath} trains with --objective {c.Objective}, not {objectiveName}.");
            state.ContinueWith(options, examples, ckptPath);
            resumedFrom = state.Step;
            report.Note($"resuming from {ckptPath} at step {state.Step}/{options.Steps}");
        }
        else
        {
            if (a.Resume) report.Note($"no checkpoint at {ckptPath}; starting from step 0");
            else if (File.Exists(ckptPath)) report.Note($"{ckptPath} exists from an earlier run; starting over (use --resume to continue it)");
            var prefix = CartridgeInit.Create(initKind, m, tok, docTokens, p, a.Seed);
            var cart = Cartridge.ForModel(m, prefix, initKind, a.Frozen);
            cart.Objective = ntp ? "ntp" : "distill";
            cart.SourceDocuments = examples.DocumentIds;
            cart.Settings = new Dictionary<string, string>
            {
                ["data"] = dataName, ["data_fingerprint"] = examples.Fingerprint, ["examples"] = I(examples.Count),
                ["steps"] = I(options.Steps), ["batch"] = I(options.BatchSize), ["accumulate"] = I(options.Accumulate),
                ["lr"] = F(options.LearningRate), ["schedule"] = a.Schedule.ToLowerInvariant(), ["warmup"] = F(options.WarmupFraction),
                ["clip"] = F(options.ClipNorm), ["weight_decay"] = F(options.WeightDecay), ["seed"] = options.Seed.ToString(CultureInfo.InvariantCulture),
            };
            state = TrainingState.Start(cart, options, examples);
        }

        // ---- train
        report.Phase("train", "training");
        using var logFile = a.Log is null ? null : new StreamWriter(a.Log, append: resumedFrom > 0) { AutoFlush = true };
        if (logFile != null && resumedFrom == 0) logFile.WriteLine("step,loss,kl,lr,grad_norm,tokens_per_s,elapsed_s");
        var trainer = new CartridgeTrainer(m);
        var result = trainer.Run(state, examples, heldOut, options.CheckpointEvery > 0 ? ckptPath : null, pg =>
        {
            logFile?.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{pg.Step},{pg.Loss:R},{pg.ExcessLoss:G6},{pg.LearningRate:R},{pg.GradNorm:G6},{pg.TokensPerSecond:F1},{pg.Elapsed.TotalSeconds:F3}"));
            report.Update(pg.Step, pg.TotalSteps,
                $"step {pg.Step}/{pg.TotalSteps}  loss {pg.Loss:F4}  kl {pg.ExcessLoss:F4}  lr {pg.LearningRate:G3}  {pg.TokensPerSecond:F0} tok/s  eta {Eta(pg.Eta)}{(pg.Checkpointed ? "  (checkpoint)" : "")}");
        }, cancel: cancel);

        var final = state.Cartridge;
        final.CreatedUtc = DateTime.UtcNow;
        final.Save(outPath, dtype);
        if (File.Exists(ckptPath)) File.Delete(ckptPath);
        report.Done();

        var o = Console.Out;
        o.WriteLine($"out={outPath}");
        o.WriteLine($"model_fingerprint={fingerprint}");
        o.WriteLine($"p={p}");
        o.WriteLine($"init={final.Init.Name()}");
        o.WriteLine($"objective={final.Objective}");
        o.WriteLine($"frozen_slots={final.FrozenSlots}");
        o.WriteLine($"examples={examples.Count}");
        o.WriteLine($"steps={state.Step}");
        o.WriteLine($"resumed_from_step={resumedFrom}");
        o.WriteLine($"tokens_trained={result.Tokens}");
        o.WriteLine($"loss_floor={D(examples.LossFloor)}");
        o.WriteLine($"initial_loss={D(final.InitialLoss)}");
        o.WriteLine($"final_loss={D(final.FinalLoss)}");
        if (result.HeldOutInitial is double hi) o.WriteLine($"held_out_initial_loss={D(hi)}");
        if (result.HeldOutFinal is double hf) o.WriteLine($"held_out_final_loss={D(hf)}");
        if (heldOut != null) o.WriteLine($"held_out_loss_floor={D(heldOut.LossFloor)}");
        o.WriteLine($"elapsed_s={result.Elapsed.TotalSeconds.ToString("F2", CultureInfo.InvariantCulture)}");
        o.WriteLine($"tokens_per_s={result.TokensPerSecond.ToString("F1", CultureInfo.InvariantCulture)}");
        return 0;
    }

    static string ReadDocument(string path)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new InvalidRequestException($"cannot read --data {path}: {e.Message}"); }
        if (string.IsNullOrWhiteSpace(text)) throw new InvalidRequestException($"--data {path} is empty; there is nothing to train on.");
        if (text.Contains('\0')) throw new InvalidRequestException($"--data {path} looks binary; give a UTF-8 text document or a .casds dataset.");
        return text;
    }

    /// <summary>The tokens first-k starts from: the document with its start tokens.</summary>
    static int[] InitDocument(Args a, ITokenizer tok, string? text, bool isDataset)
    {
        if (isDataset)
        {
            if (a.Document is null)
                throw new InvalidRequestException("--init first-k with a dataset needs the document text: pass --document DOC.txt, or use --init random-text.");
            text = ReadDocument(a.Document);
        }
        return [.. tok.StartTokens, .. tok.Encode(text!)];
    }

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
    static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
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
