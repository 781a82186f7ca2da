using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;

namespace Cas.Training;

/// <summary>What a cartridge is trained to do: match the teacher with the document in context, or predict the document's own next tokens.</summary>
public enum TrainingObjective { Distill, Ntp }

/// <summary>
/// Everything one training run needs besides the model: the data (a self-study dataset or a plain document), the output,
/// the cartridge and the recipe. The defaults are the recipe measured to close ≥ 90% of the no-context → in-context
/// perplexity gap on real text the model did not write (eval/default_recipe.sh, eval/reports/DEFAULT_RECIPE.md); sizes left
/// null are derived from the model's context (<see cref="TrainingRun.Plan"/>).
/// </summary>
public sealed record TrainingRunOptions
{
    /// <summary>Default probes per chunk for document data (the teacher's continuations of sampled probes).</summary>
    public const int DefaultProbesPerChunk = 128;
    /// <summary>Default passes over the examples when neither steps nor epochs are given.</summary>
    public const double DefaultEpochs = 4;
    /// <summary>Default peak learning rate.</summary>
    public const float DefaultLearningRate = 0.05f;

    /// <summary>A self-study dataset (.casds) or a plain UTF-8 document.</summary>
    public required string DataPath { get; init; }
    /// <summary>The cartridge file to write (.safetensors); the checkpoint goes to OutputPath + ".ckpt".</summary>
    public required string OutputPath { get; init; }
    /// <summary>p, the cartridge's KV slots. Null: min(2048, context / 4).</summary>
    public int? CartridgeTokens { get; init; }
    public CartridgeInitKind Init { get; init; } = CartridgeInitKind.FirstK;
    public TrainingObjective Objective { get; init; } = TrainingObjective.Distill;
    /// <summary>Optimizer steps; null: from <see cref="Epochs"/>.</summary>
    public int? Steps { get; init; }
    /// <summary>Passes over the examples (instead of <see cref="Steps"/>); null with Steps null: <see cref="DefaultEpochs"/>.</summary>
    public double? Epochs { get; init; }
    public float LearningRate { get; init; } = DefaultLearningRate;
    public int BatchSize { get; init; } = 8;
    public int Accumulate { get; init; } = 1;
    public double WarmupFraction { get; init; } = 0.05;
    public LrScheduleKind Schedule { get; init; } = LrScheduleKind.Linear;
    public float ClipNorm { get; init; } = 1f;
    public double WeightDecay { get; init; }
    public int FrozenSlots { get; init; } = 1;
    /// <summary>Write the checkpoint every N steps (0: never).</summary>
    public int CheckpointEvery { get; init; } = 50;
    /// <summary>Seeds the probe data and the example order.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>Continue from the checkpoint when one exists (same settings and data required).</summary>
    public bool Resume { get; init; }
    public SafeTensorDType DType { get; init; } = SafeTensorDType.F32;
    /// <summary>With a dataset and first-k init: the document whose first p tokens start the cartridge.</summary>
    public string? DocumentPath { get; init; }
    /// <summary>
    /// Document data: the largest chunk of the document the teacher reads. Null: <see cref="DocumentProbes.DefaultChunkTokens"/>,
    /// or less when the model's context leaves less room; a given value must fit.
    /// </summary>
    public int? ChunkTokens { get; init; }
    /// <summary>
    /// Document data: how probes are made (<see cref="DocumentProbeOptions.ChunkTokens"/> and
    /// <see cref="DocumentProbeOptions.Seed"/> are replaced by <see cref="ChunkTokens"/> and <see cref="Seed"/>).
    /// </summary>
    public DocumentProbeOptions Probes { get; init; } = new() { ExamplesPerChunk = DefaultProbesPerChunk };
    /// <summary>Document data: held-out probes per chunk whose loss is measured before and after training (0: none).</summary>
    public int HeldOutProbesPerChunk { get; init; } = 8;

    /// <summary>The checkpoint path: <see cref="OutputPath"/> + ".ckpt".</summary>
    public string CheckpointPath => Path.GetFullPath(OutputPath) + ".ckpt";

    /// <summary>Checks everything that needs no model; throws <see cref="InvalidRequestException"/> saying what to fix.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(DataPath)) throw new InvalidRequestException("give the training data (a .casds dataset or a document).");
        if (string.IsNullOrWhiteSpace(OutputPath)) throw new InvalidRequestException("give the cartridge file to write.");
        if (Steps is not null && Epochs is not null) throw new InvalidRequestException("give steps or epochs, not both.");
        if (Steps is int s && s <= 0) throw new InvalidRequestException($"steps must be positive, got {s}.");
        if (Epochs is double e && !(e > 0 && double.IsFinite(e))) throw new InvalidRequestException($"epochs must be positive, got {e.ToString(CultureInfo.InvariantCulture)}.");
        if (ChunkTokens is int ct && ct <= 0) throw new InvalidRequestException($"the chunk size must be positive, got {ct}.");
        if (CartridgeTokens is int p && p <= 0) throw new InvalidRequestException($"the cartridge size must be positive, got {p}.");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new InvalidRequestException($"the learning rate must be positive, got {LearningRate.ToString(CultureInfo.InvariantCulture)}.");
        if (HeldOutProbesPerChunk < 0) throw new InvalidRequestException($"held-out probes per chunk must be ≥ 0, got {HeldOutProbesPerChunk}.");
        if (CheckpointEvery < 0) throw new InvalidRequestException($"the checkpoint interval must be ≥ 0, got {CheckpointEvery}.");
        Probes.Validate();
        if (!File.Exists(DataPath)) throw new InvalidRequestException($"the training data {DataPath} does not exist.");
        if (Objective == TrainingObjective.Ntp && DatasetFormat.IsDatasetFile(DataPath))
            throw new InvalidRequestException("the ntp objective trains on a plain document's own text; give a document, not a dataset.");
    }
}

/// <summary>Sizes a run chose from the model (what the caller did not fix), reported in one line before the slow part.</summary>
/// <param name="CartridgeTokens">p.</param>
/// <param name="ChunkTokens">Document data: largest chunk the teacher reads (0 for a dataset).</param>
/// <param name="ContextLength">The model's context.</param>
/// <param name="Derived">Names of the values derived from the model rather than given.</param>
public sealed record TrainingPlan(int CartridgeTokens, int ChunkTokens, int ContextLength, IReadOnlyList<string> Derived)
{
    /// <summary>"chose p=32, chunk_tokens=416 for the model's context of 512 (given: …)": the one line a caller prints.</summary>
    public string Describe()
    {
        var parts = new List<string> { $"p={CartridgeTokens}{(Derived.Contains("p") ? "" : " (given)")}" };
        if (ChunkTokens > 0) parts.Add($"chunk_tokens={ChunkTokens}{(Derived.Contains("chunk_tokens") ? "" : " (given)")}");
        return $"chose {string.Join(", ", parts)} for the model's context of {ContextLength}";
    }
}

/// <summary>What a training run reports while it works. Subtypes: a note, a phase's progress, a training step.</summary>
public abstract record TrainingRunEvent;
/// <summary>A one-line message (the sizes chosen, the data, resuming, …).</summary>
public sealed record TrainingRunNote(string Text) : TrainingRunEvent;
/// <summary>Progress of making data: <paramref name="Phase"/> is "teacher" or "held-out".</summary>
public sealed record TrainingRunDataProgress(string Phase, int Done, int Total) : TrainingRunEvent;
/// <summary>Training starts (after <paramref name="ResumedFromStep"/> steps already done) and will end at <paramref name="TotalSteps"/>.</summary>
public sealed record TrainingRunStarted(int ResumedFromStep, int TotalSteps) : TrainingRunEvent;
/// <summary>One optimizer step done.</summary>
public sealed record TrainingRunStep(TrainingProgress Step) : TrainingRunEvent;

/// <summary>What a finished run did: the cartridge written and the figures of the run.</summary>
public sealed record TrainingRunResult(
    string OutputPath, string ModelFingerprint, Cartridge Cartridge, TrainingPlan Plan, int Examples, int Steps, int ResumedFromStep,
    long TokensTrained, double LossFloor, double? HeldOutInitialLoss, double? HeldOutFinalLoss, double? HeldOutLossFloor,
    TimeSpan Elapsed, double TokensPerSecond);

/// <summary>
/// One cartridge training run, from data to file: what `cas train` does, for any caller (CLI, service, jobs).
/// Chooses the data (a dataset as it is, or probes the teacher answers from a document), checks a resume against the
/// checkpoint, records the metadata, trains with checkpoints and writes the cartridge atomically. Reports through
/// <see cref="IProgress{T}"/> (called synchronously on the training thread); writes nothing to the console.
/// </summary>
public static class TrainingRun
{
    /// <summary>The sizes the run will use with this model: p and the chunk the teacher reads, each given or derived from the context.</summary>
    public static TrainingPlan Plan(Model model, ITokenizer tokenizer, TrainingRunOptions options)
    {
        ArgumentNullException.ThrowIfNull(model); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(options);
        var cfg = model.Config;
        var derived = new List<string>();
        int p = options.CartridgeTokens ?? Math.Max(1, Math.Min(2048, cfg.MaxSeqLen / 4));
        if (options.CartridgeTokens is null) derived.Add("p");
        int chunk = 0;
        if (!DatasetFormat.IsDatasetFile(options.DataPath))
        {
            // NTP: the chunk follows the cartridge; distillation: the teacher reads start + chunk + probe + continuation.
            if (options.Objective == TrainingObjective.Ntp)
            {
                int room = cfg.MaxSeqLen - p;
                if (options.ChunkTokens is int g && g > room)
                    throw new InvalidRequestException($"chunks of {g} tokens do not fit after a cartridge of {p} in the model's context of {cfg.MaxSeqLen}; give --chunk-tokens {room} or less, or leave it out.");
                chunk = options.ChunkTokens ?? Math.Min(DocumentProbes.DefaultChunkTokens, room);
            }
            else chunk = DocumentProbes.ChooseChunkTokens(cfg, tokenizer, options.Probes, options.ChunkTokens);
            if (options.ChunkTokens is null) derived.Add("chunk_tokens");
        }
        return new TrainingPlan(p, chunk, cfg.MaxSeqLen, derived);
    }

    /// <summary>Runs the whole training; throws <see cref="CasException"/> subtypes with messages that say what to do.</summary>
    public static TrainingRunResult Execute(Model model, ITokenizer tokenizer, TrainingRunOptions options,
        IProgress<TrainingRunEvent>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var clock = Stopwatch.StartNew();
        var a = options;
        var cfg = model.Config;
        bool ntp = a.Objective == TrainingObjective.Ntp;
        bool isDataset = DatasetFormat.IsDatasetFile(a.DataPath);
        string outPath = Path.GetFullPath(a.OutputPath);
        string ckptPath = a.CheckpointPath;
        string dataName = Path.GetFileName(a.DataPath);

        var plan = Plan(model, tokenizer, a);
        int p = plan.CartridgeTokens;
        CartridgeInit.CheckLength(model, p);
        progress?.Report(new TrainingRunNote(plan.Describe()));
        string fingerprint = Cartridge.Fingerprint(model);

        // ---- training data (and, for a new first-k cartridge, its document: checked before the slow part)
        string? text = isDataset ? null : ReadDocument(a.DataPath, "the training data");
        bool resuming = a.Resume && File.Exists(ckptPath);
        int[] docTokens = resuming || a.Init != CartridgeInitKind.FirstK ? [] : InitDocument(a, tokenizer, text, isDataset);
        if (docTokens.Length > 0 && docTokens.Length < p) CartridgeInit.FirstK(model, docTokens, p); // throws the clear error
        var probeOptions = a.Probes with { ChunkTokens = plan.ChunkTokens > 0 ? plan.ChunkTokens : a.Probes.ChunkTokens, Seed = a.Seed };
        TrainingExamples examples;
        TrainingExamples? heldOut = null;
        if (isDataset)
            examples = DatasetExamples.Load(a.DataPath, cfg.VocabSize, cfg.MaxSeqLen - p);
        else if (ntp)
            examples = DocumentProbes.NextToken(tokenizer, text!, dataName, plan.ChunkTokens);
        else
            examples = DocumentProbes.Build(model, tokenizer, text!, dataName, probeOptions,
                (d, n) => progress?.Report(new TrainingRunDataProgress("teacher", d, n)), cancel);
        if (!isDataset && a.HeldOutProbesPerChunk > 0)
        {
            heldOut = DocumentProbes.Build(model, tokenizer, text!, dataName,
                probeOptions with { Split = ProbeSplit.HeldOut, ExamplesPerChunk = a.HeldOutProbesPerChunk, Seed = a.Seed + 0x9E3779B9UL },
                (d, n) => progress?.Report(new TrainingRunDataProgress("held-out", d, n)), cancel);
        }
        progress?.Report(new TrainingRunNote($"data: {examples.Description}; {examples.Tokens} tokens, {examples.TargetPositions} target positions, loss floor {examples.LossFloor:F4}"));

        int batch = Math.Max(1, a.BatchSize), accumulate = Math.Max(1, a.Accumulate);
        int totalSteps = a.Steps ?? TrainingOptions.StepsForEpochs(a.Epochs ?? TrainingRunOptions.DefaultEpochs, examples.Count, batch, accumulate);
        var training = new TrainingOptions
        {
            Steps = totalSteps, BatchSize = a.BatchSize, Accumulate = a.Accumulate, LearningRate = a.LearningRate, WarmupFraction = a.WarmupFraction,
            Schedule = a.Schedule, ClipNorm = a.ClipNorm, WeightDecay = a.WeightDecay, FrozenSlots = a.FrozenSlots, Seed = a.Seed,
            CheckpointEvery = a.CheckpointEvery,
        };
        training.Validate(p);

        // ---- the state: resumed from the checkpoint or new
        TrainingState state;
        int resumedFrom = 0;
        string objectiveName = ntp ? "ntp" : "distill";
        if (resuming)
        {
            state = TrainingState.LoadCheckpoint(ckptPath, model, fingerprint);
            var c = state.Cartridge;
            if (c.Length != p) throw new InvalidRequestException($"the checkpoint {ckptPath} holds a cartridge of {c.Length} slots but {p} were asked for; resume with p = {c.Length} (--tokens {c.Length}).");
            if (c.Init != a.Init) throw new InvalidRequestException($"the checkpoint {ckptPath} was initialised with {c.Init.Name()}, not {a.Init.Name()}; resume with --init {c.Init.Name()}.");
            if (c.Objective != objectiveName) throw new InvalidRequestException($"the checkpoint {ckptPath} trains with --objective {c.Objective}, not {objectiveName}.");
            state.ContinueWith(training, examples, ckptPath);
            resumedFrom = state.Step;
            progress?.Report(new TrainingRunNote($"resuming from {ckptPath} at step {state.Step}/{training.Steps}"));
        }
        else
        {
            if (a.Resume) progress?.Report(new TrainingRunNote($"no checkpoint at {ckptPath}; starting from step 0"));
            else if (File.Exists(ckptPath)) progress?.Report(new TrainingRunNote($"{ckptPath} exists from an earlier run; starting over (resume to continue it)"));
            var prefix = CartridgeInit.Create(a.Init, model, tokenizer, docTokens, p, a.Seed);
            var cart = Cartridge.ForModel(model, prefix, a.Init, a.FrozenSlots);
            cart.Objective = objectiveName;
            cart.SourceDocuments = examples.DocumentIds;
            cart.Settings = new Dictionary<string, string>
            {
                ["data"] = dataName, ["data_fingerprint"] = examples.Fingerprint, ["examples"] = I(examples.Count),
                ["steps"] = I(training.Steps), ["batch"] = I(training.BatchSize), ["accumulate"] = I(training.Accumulate),
                ["lr"] = F(training.LearningRate), ["schedule"] = a.Schedule.ToString().ToLowerInvariant(), ["warmup"] = F(training.WarmupFraction),
                ["clip"] = F(training.ClipNorm), ["weight_decay"] = F(training.WeightDecay), ["seed"] = training.Seed.ToString(CultureInfo.InvariantCulture),
            };
            state = TrainingState.Start(cart, training, examples);
        }

        // ---- train, then write the cartridge (atomically) and drop the checkpoint
        progress?.Report(new TrainingRunStarted(resumedFrom, training.Steps));
        var trainer = new CartridgeTrainer(model);
        var result = trainer.Run(state, examples, heldOut, training.CheckpointEvery > 0 ? ckptPath : null,
            step => progress?.Report(new TrainingRunStep(step)), cancel: cancel);
        if (!state.Finished) cancel.ThrowIfCancellationRequested(); // never write a cartridge of an interrupted run
        var final = state.Cartridge;
        final.CreatedUtc = DateTime.UtcNow;
        final.Save(outPath, a.DType);
        if (File.Exists(ckptPath)) File.Delete(ckptPath);
        return new TrainingRunResult(outPath, fingerprint, final, plan, examples.Count, state.Step, resumedFrom, result.Tokens, examples.LossFloor,
            result.HeldOutInitial, result.HeldOutFinal, heldOut?.LossFloor, clock.Elapsed, result.TokensPerSecond);
    }

    /// <summary>A plain document's text; refuses empty and binary files.</summary>
    public static string ReadDocument(string path, string what)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new InvalidRequestException($"cannot read {what} {path}: {e.Message}"); }
        if (string.IsNullOrWhiteSpace(text)) throw new InvalidRequestException($"{what} {path} is empty; there is nothing to work on.");
        if (text.Contains('\0')) throw new InvalidRequestException($"{what} {path} looks binary; give a UTF-8 text document or a .casds dataset.");
        return text;
    }

    /// <summary>The tokens first-k starts from: the document with its start tokens.</summary>
    static int[] InitDocument(TrainingRunOptions a, ITokenizer tok, string? text, bool isDataset)
    {
        if (isDataset)
        {
            if (a.DocumentPath is null)
                throw new InvalidRequestException("first-k initialisation with a dataset needs the document text: pass the document (--document DOC.txt), or use --init random-text.");
            text = ReadDocument(a.DocumentPath, "the document");
        }
        return [.. tok.StartTokens, .. tok.Encode(text!)];
    }

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
    static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
