using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;

namespace Cas.Training;

/// <summary>Hyper-parameters of one training run. Everything except <see cref="CheckpointEvery"/> decides the result.</summary>
public sealed record TrainingOptions
{
    /// <summary>Optimizer updates in the whole run.</summary>
    public int Steps { get; init; } = 100;
    /// <summary>Sequences per micro-batch (packed into one forward/backward).</summary>
    public int BatchSize { get; init; } = 4;
    /// <summary>Micro-batches whose gradients are summed before one update.</summary>
    public int Accumulate { get; init; } = 1;
    /// <summary>Peak learning rate.</summary>
    public float LearningRate { get; init; } = 2e-2f;
    /// <summary>Fraction of the steps spent in linear warmup (at least one step).</summary>
    public double WarmupFraction { get; init; } = 0.05;
    public LrScheduleKind Schedule { get; init; } = LrScheduleKind.Linear;
    /// <summary>The learning rate decays to peak × this at the last step (CAS: 0.02).</summary>
    public float FloorFraction { get; init; } = 0.02f;
    /// <summary>Global gradient-norm limit; ≤ 0 disables clipping.</summary>
    public float ClipNorm { get; init; } = 1f;
    public double WeightDecay { get; init; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    /// <summary>Leading cartridge slots that never change (attention sink).</summary>
    public int FrozenSlots { get; init; } = 1;
    /// <summary>Seeds the order examples are visited in.</summary>
    public ulong Seed { get; init; } = 1;
    /// <summary>Write a checkpoint every N steps (0 = never). Does not affect the result.</summary>
    [JsonIgnore] public int CheckpointEvery { get; init; }

    /// <summary>Throws <see cref="InvalidRequestException"/> naming the first bad value.</summary>
    public void Validate(int prefixLength)
    {
        if (Steps <= 0) throw new InvalidRequestException($"the number of steps (--steps) must be positive, got {Steps}.");
        if (BatchSize <= 0) throw new InvalidRequestException($"the batch size (--batch) must be positive, got {BatchSize}.");
        if (Accumulate <= 0) throw new InvalidRequestException($"gradient accumulation (--accumulate) must be positive, got {Accumulate}.");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new InvalidRequestException($"the learning rate (--lr) must be positive, got {LearningRate.ToString(CultureInfo.InvariantCulture)}.");
        if (!(WarmupFraction >= 0 && WarmupFraction <= 1)) throw new InvalidRequestException($"the warmup fraction (--warmup) must lie in [0, 1], got {WarmupFraction.ToString(CultureInfo.InvariantCulture)}.");
        if (!(FloorFraction >= 0 && FloorFraction <= 1)) throw new InvalidRequestException($"the lr floor fraction must lie in [0, 1], got {FloorFraction.ToString(CultureInfo.InvariantCulture)}.");
        if (float.IsNaN(ClipNorm) || float.IsInfinity(ClipNorm)) throw new InvalidRequestException($"the clipping norm (--clip) must be a finite number (≤ 0 turns clipping off), got {ClipNorm}.");
        if (CheckpointEvery < 0) throw new InvalidRequestException($"--checkpoint-every must be ≥ 0, got {CheckpointEvery}.");
        if (FrozenSlots < 0 || FrozenSlots >= prefixLength)
            throw new InvalidRequestException($"frozen slots (--frozen-slots) must lie in [0, p − 1] = [0, {prefixLength - 1}] so something trains, got {FrozenSlots}.");
        _ = new AdamW([], [], Beta1, Beta2, Eps, WeightDecay); // validates the optimizer settings
        _ = CreateSchedule();
    }

    public LrSchedule CreateSchedule() =>
        new(LearningRate, Steps, LrSchedule.WarmupFor(Steps, WarmupFraction), Schedule, FloorFraction);

    /// <summary>Steps for <paramref name="epochs"/> passes over <paramref name="examples"/> examples: ⌈E·N / (B·A)⌉, at least 1.</summary>
    public static int StepsForEpochs(double epochs, int examples, int batchSize, int accumulate)
    {
        if (!(epochs > 0) || double.IsInfinity(epochs)) throw new InvalidRequestException($"--epochs must be positive, got {epochs.ToString(CultureInfo.InvariantCulture)}.");
        double steps = Math.Ceiling(epochs * examples / ((double)batchSize * accumulate));
        if (steps > int.MaxValue) throw new InvalidRequestException($"{epochs} epochs of {examples} examples is too many steps.");
        return Math.Max(1, (int)steps);
    }

    internal static readonly JsonSerializerOptions Json = new() { Converters = { new JsonStringEnumConverter() } };
}

/// <summary>
/// Everything a run needs to continue exactly where it stopped: the cartridge (trained in place), the AdamW
/// moments and step, the cursor into the example stream, the options, the data fingerprint and the loss history.
/// A checkpoint file is a cartridge file (F32) with the moments as extra <c>train.*</c> tensors and the rest as
/// <c>cas.checkpoint.*</c> metadata, so it can also be loaded as a cartridge.
/// </summary>
public sealed class TrainingState
{
    public const int CheckpointVersion = 1;

    TrainingState(Cartridge cartridge, TrainingOptions options, AdamW optimizer, string dataFingerprint, int dataCount)
    {
        Cartridge = cartridge; Options = options; Optimizer = optimizer; DataFingerprint = dataFingerprint; DataCount = dataCount;
        var p = cartridge.Prefix;
        var ps = new float[2 * p.Layers][];
        for (int l = 0; l < p.Layers; l++) { ps[2 * l] = p.Keys[l]; ps[2 * l + 1] = p.Values[l]; }
        Parameters = ps;
    }

    /// <summary>A fresh run for <paramref name="cartridge"/> (its prefix is trained in place).</summary>
    public static TrainingState Start(Cartridge cartridge, TrainingOptions options, TrainingExamples data)
    {
        ArgumentNullException.ThrowIfNull(cartridge); ArgumentNullException.ThrowIfNull(options); ArgumentNullException.ThrowIfNull(data);
        options.Validate(cartridge.Length);
        cartridge.FrozenSlots = options.FrozenSlots;
        return new TrainingState(cartridge, options, CreateOptimizer(cartridge.Prefix, options), data.Fingerprint, data.Count);
    }

    public Cartridge Cartridge { get; }
    public TrainingOptions Options { get; private set; }
    public AdamW Optimizer { get; }
    /// <summary>Updates done so far.</summary>
    public int Step => (int)Optimizer.Step;
    /// <summary>Where the next micro-batch starts in the example stream.</summary>
    public DataCursor Cursor { get; internal set; }
    /// <summary>Loss of every step so far (mean per target token of that step's batch, before its update).</summary>
    public List<float> Losses { get; } = new();
    public string DataFingerprint { get; }
    public int DataCount { get; }
    /// <summary>Held-out loss of the cartridge before training (when held-out data was given).</summary>
    public double? HeldOutInitial { get; set; }
    /// <summary>[K0, V0, K1, V1, ...]: the cartridge's arrays, in the optimizer's order.</summary>
    public IReadOnlyList<float[]> Parameters { get; }
    public bool Finished => Step >= Options.Steps;

    /// <summary>Trainable elements: every slot of every (layer, K/V, kv-head) except the first <paramref name="frozenSlots"/>.</summary>
    public static List<ParameterRange> TrainableRanges(KvPrefix prefix, int frozenSlots)
    {
        int p = prefix.Length, hd = prefix.HeadDim;
        var ranges = new List<ParameterRange>(2 * prefix.Layers * prefix.KvHeads);
        if (frozenSlots >= p) return ranges;
        for (int a = 0; a < 2 * prefix.Layers; a++)
            for (int h = 0; h < prefix.KvHeads; h++)
                ranges.Add(new ParameterRange(a, (h * p + frozenSlots) * hd, (p - frozenSlots) * hd));
        return ranges;
    }

    static AdamW CreateOptimizer(KvPrefix prefix, TrainingOptions o)
    {
        var sizes = new int[2 * prefix.Layers];
        for (int a = 0; a < sizes.Length; a++) sizes[a] = prefix.KvHeads * prefix.Length * prefix.HeadDim;
        return new AdamW(sizes, TrainableRanges(prefix, o.FrozenSlots), o.Beta1, o.Beta2, o.Eps, o.WeightDecay);
    }

    /// <summary>
    /// Throws <see cref="InvalidRequestException"/> unless <paramref name="options"/> and <paramref name="data"/> are what this
    /// state was started with (a resumed run must repeat the same settings to reproduce the uninterrupted one).
    /// </summary>
    public void EnsureSameRun(TrainingOptions options, TrainingExamples data, string? checkpointPath = null)
    {
        string where = checkpointPath == null ? "the checkpoint" : $"the checkpoint {checkpointPath}";
        var a = JsonSerializer.SerializeToElement(Options, TrainingOptions.Json);
        var b = JsonSerializer.SerializeToElement(options, TrainingOptions.Json);
        var diffs = new List<string>();
        foreach (var prop in a.EnumerateObject())
        {
            string mine = prop.Value.GetRawText();
            string theirs = b.TryGetProperty(prop.Name, out var v) ? v.GetRawText() : "(missing)";
            if (mine != theirs) diffs.Add($"{prop.Name} {mine} (now {theirs})");
        }
        if (diffs.Count > 0)
            throw new InvalidRequestException($"{where} was made with different settings: {string.Join(", ", diffs)}. Resume with the same settings, or start over without --resume.");
        if (data.Fingerprint != DataFingerprint || data.Count != DataCount)
            throw new InvalidRequestException(
                $"{where} was made with other training data ({DataCount} examples, fingerprint {Cartridge.ShortFingerprint(DataFingerprint)}); " +
                $"this run has {data.Count} examples, fingerprint {Cartridge.ShortFingerprint(data.Fingerprint)}. Use the same --data, --seed and data options, or start over without --resume.");
    }

    /// <summary>
    /// Prepares a loaded checkpoint to continue: checks <see cref="EnsureSameRun"/> and adopts <paramref name="options"/>
    /// (which may differ only in <see cref="TrainingOptions.CheckpointEvery"/>, a setting checkpoints do not store).
    /// </summary>
    public void ContinueWith(TrainingOptions options, TrainingExamples data, string? checkpointPath = null)
    {
        EnsureSameRun(options, data, checkpointPath);
        Options = options;
    }

    // ------------------------------------------------------------------------------------------------
    // Checkpoint files

    static string MomentName(string which, int array) => $"{Cartridge.ExtraTensorPrefix}adam_{which}.{(array % 2 == 0 ? Cartridge.KeysName(array / 2) : Cartridge.ValuesName(array / 2))}";

    /// <summary>Writes the state atomically (temporary file, fsync, rename).</summary>
    public void SaveCheckpoint(string path)
    {
        Cartridge.StepsTrained = Step;
        var p = Cartridge.Prefix;
        int[] shape = [p.KvHeads, p.Length, p.HeadDim];
        var extra = new List<(string, int[], ReadOnlyMemory<float>)>(4 * p.Layers);
        for (int a = 0; a < Parameters.Count; a++)
        {
            extra.Add((MomentName("m", a), shape, Optimizer.M[a]));
            extra.Add((MomentName("v", a), shape, Optimizer.V[a]));
        }
        var meta = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["cas.checkpoint.version"] = CheckpointVersion.ToString(CultureInfo.InvariantCulture),
            ["cas.checkpoint.step"] = Step.ToString(CultureInfo.InvariantCulture),
            ["cas.checkpoint.epoch"] = Cursor.Epoch.ToString(CultureInfo.InvariantCulture),
            ["cas.checkpoint.position"] = Cursor.Position.ToString(CultureInfo.InvariantCulture),
            ["cas.checkpoint.options"] = JsonSerializer.Serialize(Options, TrainingOptions.Json),
            ["cas.checkpoint.data_fingerprint"] = DataFingerprint,
            ["cas.checkpoint.data_count"] = DataCount.ToString(CultureInfo.InvariantCulture),
            ["cas.checkpoint.losses"] = JsonSerializer.Serialize(Losses),
        };
        if (HeldOutInitial is double h) meta["cas.checkpoint.held_out_initial"] = h.ToString("R", CultureInfo.InvariantCulture);
        Cartridge.Write(path, SafeTensorDType.F32, extra, meta);
    }

    /// <summary>
    /// Reads a checkpoint for <paramref name="model"/>. Throws <see cref="CartridgeMismatchException"/> when it was made for
    /// another model and <see cref="CartridgeFormatException"/> when the file is not a (complete) checkpoint.
    /// </summary>
    public static TrainingState LoadCheckpoint(string path, Model model, string? modelFingerprint = null)
    {
        SafeTensorsFile file;
        try { file = SafeTensorsFile.Open(path); }
        catch (ModelFormatException e) { throw new CartridgeFormatException($"{path} is not a readable training checkpoint: {e.Message}", e); }
        using (file)
        {
            var cartridge = Cartridge.Read(file);
            var md = file.Metadata;
            if (!md.TryGetValue("cas.checkpoint.version", out var vText))
                throw new CartridgeFormatException($"{path} is a cartridge, not a training checkpoint (no cas.checkpoint.* metadata).");
            if (!int.TryParse(vText, NumberStyles.Integer, CultureInfo.InvariantCulture, out int version) || version < 1 || version > CheckpointVersion)
                throw new CartridgeFormatException($"{path}: checkpoint version '{vText}' is not one this build reads (1..{CheckpointVersion}).");
            try { cartridge.EnsureCompatible(model, modelFingerprint, path); }
            catch (CartridgeMismatchException e) { throw new CartridgeMismatchException($"cannot resume: {e.Message}"); }

            TrainingOptions options;
            try { options = JsonSerializer.Deserialize<TrainingOptions>(Req(md, "cas.checkpoint.options", path), TrainingOptions.Json) ?? throw new JsonException("null"); }
            catch (JsonException e) { throw new CartridgeFormatException($"{path}: cas.checkpoint.options is not valid ({e.Message}).", e); }
            if (options.FrozenSlots != cartridge.FrozenSlots)
                throw new CartridgeFormatException($"{path}: the options freeze {options.FrozenSlots} slots but the cartridge records {cartridge.FrozenSlots}.");
            try { options.Validate(cartridge.Length); }
            catch (InvalidRequestException e) { throw new CartridgeFormatException($"{path}: stored options are invalid: {e.Message}"); }

            int step = Int(md, "cas.checkpoint.step", path);
            long epoch = long.TryParse(Req(md, "cas.checkpoint.epoch", path), NumberStyles.Integer, CultureInfo.InvariantCulture, out long e0) && e0 >= 0 ? e0
                : throw new CartridgeFormatException($"{path}: cas.checkpoint.epoch is not a non-negative integer.");
            int position = Int(md, "cas.checkpoint.position", path);
            int dataCount = Int(md, "cas.checkpoint.data_count", path);
            if (step > options.Steps) throw new CartridgeFormatException($"{path}: step {step} is beyond the run's {options.Steps} steps.");
            if (dataCount <= 0 || position >= dataCount) throw new CartridgeFormatException($"{path}: data cursor {position} does not fit {dataCount} examples.");
            float[] losses;
            try { losses = JsonSerializer.Deserialize<float[]>(Req(md, "cas.checkpoint.losses", path)) ?? []; }
            catch (JsonException e) { throw new CartridgeFormatException($"{path}: cas.checkpoint.losses is not a JSON array of numbers ({e.Message}).", e); }
            if (losses.Length != step) throw new CartridgeFormatException($"{path}: {losses.Length} recorded losses for {step} steps.");

            var state = new TrainingState(cartridge, options, CreateOptimizer(cartridge.Prefix, options), Req(md, "cas.checkpoint.data_fingerprint", path), dataCount)
            {
                Cursor = new DataCursor(epoch, position),
            };
            state.Optimizer.Step = step;
            state.Losses.AddRange(losses);
            if (md.TryGetValue("cas.checkpoint.held_out_initial", out var hText))
                state.HeldOutInitial = double.TryParse(hText, NumberStyles.Float, CultureInfo.InvariantCulture, out double hv) ? hv
                    : throw new CartridgeFormatException($"{path}: cas.checkpoint.held_out_initial is not a number.");

            var p = cartridge.Prefix;
            int[] shape = [p.KvHeads, p.Length, p.HeadDim];
            for (int a = 0; a < state.Parameters.Count; a++)
            {
                ReadMoment(file, MomentName("m", a), shape, state.Optimizer.M[a]);
                ReadMoment(file, MomentName("v", a), shape, state.Optimizer.V[a]);
            }
            return state;
        }
    }

    static void ReadMoment(SafeTensorsFile file, string name, int[] shape, float[] into)
    {
        if (!file.TryGetInfo(name, out var info))
            throw new CartridgeFormatException($"{file.Path}: optimizer tensor '{name}' is missing; the checkpoint is incomplete.");
        if (info.DType != SafeTensorDType.F32 || !info.Shape.AsSpan().SequenceEqual(shape))
            throw new CartridgeFormatException($"{file.Path}: optimizer tensor '{name}' must be F32 [{shape[0]}, {shape[1]}, {shape[2]}], found {info.DType} {info.ShapeText}.");
        file.ReadFloats(info, into);
        for (int i = 0; i < into.Length; i++)
            if (!float.IsFinite(into[i])) throw new CartridgeFormatException($"{file.Path}: optimizer tensor '{name}' holds {into[i]} at index {i}.");
    }

    static string Req(IReadOnlyDictionary<string, string> md, string key, string path) =>
        md.TryGetValue(key, out var v) ? v : throw new CartridgeFormatException($"{path}: checkpoint metadata lacks '{key}'.");

    static int Int(IReadOnlyDictionary<string, string> md, string key, string path) =>
        int.TryParse(Req(md, key, path), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v >= 0 ? v
            : throw new CartridgeFormatException($"{path}: checkpoint metadata '{key}' is not a non-negative integer.");
}
