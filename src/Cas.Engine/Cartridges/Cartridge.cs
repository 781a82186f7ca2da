using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Cas.Engine.Models;

namespace Cas.Engine.Cartridges;

/// <summary>How a cartridge's KV was first filled before training.</summary>
public enum CartridgeInitKind
{
    /// <summary>KV of the document's own first p tokens.</summary>
    FirstK,
    /// <summary>KV of p tokens of unrelated built-in text.</summary>
    RandomText,
    /// <summary>Gaussian values with the per layer/kv-head mean and std of the model's real K/V.</summary>
    Random,
}

public static class CartridgeInitKinds
{
    /// <summary>The name used on the command line and in files: first-k, random-text, random.</summary>
    public static string Name(this CartridgeInitKind kind) => kind switch
    {
        CartridgeInitKind.FirstK => "first-k",
        CartridgeInitKind.RandomText => "random-text",
        CartridgeInitKind.Random => "random",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    public static bool TryParse(string? text, out CartridgeInitKind kind)
    {
        switch (text?.Trim().ToLowerInvariant())
        {
            case "first-k": kind = CartridgeInitKind.FirstK; return true;
            case "random-text": kind = CartridgeInitKind.RandomText; return true;
            case "random": kind = CartridgeInitKind.Random; return true;
            default: kind = default; return false;
        }
    }

    public static CartridgeInitKind Parse(string? text) => TryParse(text, out var k) ? k
        : throw new InvalidRequestException($"unknown cartridge init '{text}'; use first-k, random-text or random.");
}

/// <summary>
/// A cartridge: a trainable KV prefix (per layer K and V of shape [kv_heads, p, head_dim], keys already
/// rotated for positions 0..p-1) together with what it was trained for and how. Stored as a
/// <c>.safetensors</c> file whose <c>__metadata__</c> carries the <c>cas.*</c> fields (see FORMAT.md).
/// The prefix arrays are shared, not copied: a trainer updates <see cref="Prefix"/> in place and the metadata as it goes.
/// </summary>
public sealed class Cartridge
{
    public const string FormatName = "cas-cartridge";
    public const int FormatVersion = 1;
    /// <summary>Names of extra tensors a training checkpoint may carry beside the cartridge (ignored by readers of the cartridge).</summary>
    public const string ExtraTensorPrefix = "train.";

    public Cartridge(KvPrefix prefix, string modelFingerprint)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        if (string.IsNullOrWhiteSpace(modelFingerprint)) throw new ArgumentException("a cartridge needs the fingerprint of its model.", nameof(modelFingerprint));
        Prefix = prefix; ModelFingerprint = modelFingerprint;
    }

    public KvPrefix Prefix { get; }
    /// <summary>p: the number of KV slots.</summary>
    public int Length => Prefix.Length;
    /// <summary><see cref="Models.ModelFingerprint.Compute"/> of the model it was trained for (lowercase hex SHA-256).</summary>
    public string ModelFingerprint { get; }
    /// <summary>Where that model was loaded from (for messages only).</summary>
    public string ModelSource { get; set; } = "";
    /// <summary>The model's canonical config string (for messages only).</summary>
    public string ModelConfig { get; set; } = "";
    public CartridgeInitKind Init { get; set; } = CartridgeInitKind.FirstK;
    /// <summary>Leading slots kept frozen during training (attention sink); default 1.</summary>
    public int FrozenSlots { get; set; } = 1;
    public long StepsTrained { get; set; }
    /// <summary>Training objective ("distill", "ntp"), or empty when untrained.</summary>
    public string Objective { get; set; } = "";
    public double? InitialLoss { get; set; }
    public double? FinalLoss { get; set; }
    public double? HeldOutLoss { get; set; }
    /// <summary>Ids of the documents it was trained on.</summary>
    public IReadOnlyList<string> SourceDocuments { get; set; } = [];
    public DateTime CreatedUtc { get; set; } = TruncateToSeconds(DateTime.UtcNow);
    /// <summary>Free-form training settings, stored as <c>cas.train.KEY</c>.</summary>
    public IReadOnlyDictionary<string, string> Settings { get; set; } = new Dictionary<string, string>();

    /// <summary>A new cartridge for <paramref name="model"/> (fingerprint, source and config filled in).</summary>
    public static Cartridge ForModel(Model model, KvPrefix prefix, CartridgeInitKind init, int frozenSlots = 1)
    {
        ArgumentNullException.ThrowIfNull(model);
        CheckShape(prefix, model.Config);
        return new Cartridge(prefix, Fingerprint(model))
        {
            ModelSource = model.Source, ModelConfig = Models.ModelFingerprint.CanonicalConfig(model.Config),
            Init = init, FrozenSlots = frozenSlots,
        };
    }

    static readonly ConditionalWeakTable<Model, string> Fingerprints = new();

    /// <summary>The model's fingerprint, computed once per loaded model (hashing all weights is not free).</summary>
    public static string Fingerprint(Model model) => Fingerprints.GetValue(model, Models.ModelFingerprint.Compute);

    /// <summary>
    /// Throws <see cref="CartridgeMismatchException"/> unless this cartridge was trained for <paramref name="model"/>
    /// (same fingerprint) and its shapes fit it.
    /// </summary>
    public void EnsureCompatible(Model model, string? modelFingerprint = null, string? path = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        string fp = modelFingerprint ?? Fingerprint(model);
        string what = path == null ? "cartridge" : $"cartridge {path}";
        var c = model.Config;
        if (!string.Equals(fp, ModelFingerprint, StringComparison.OrdinalIgnoreCase))
        {
            string shapes = Prefix.Layers != c.Layers || Prefix.KvHeads != c.KvHeads || Prefix.HeadDim != c.HeadDim
                ? $" Its KV shape (layers {Prefix.Layers}, kv_heads {Prefix.KvHeads}, head_dim {Prefix.HeadDim}) also differs from this model's (layers {c.Layers}, kv_heads {c.KvHeads}, head_dim {c.HeadDim})."
                : "";
            throw new CartridgeMismatchException(
                $"{what} was trained for model {ShortFingerprint(ModelFingerprint)} (source {(ModelSource.Length > 0 ? ModelSource : "unknown")}), " +
                $"this model is {ShortFingerprint(fp)} (source {model.Source}).{shapes} Use it with the model it was trained for, or train a new cartridge.");
        }
        if (Prefix.Layers != c.Layers || Prefix.KvHeads != c.KvHeads || Prefix.HeadDim != c.HeadDim)
            throw new CartridgeMismatchException(
                $"{what}: KV shape (layers {Prefix.Layers}, kv_heads {Prefix.KvHeads}, head_dim {Prefix.HeadDim}) does not fit model {ShortFingerprint(fp)} " +
                $"(layers {c.Layers}, kv_heads {c.KvHeads}, head_dim {c.HeadDim}) although the fingerprints match; the file is inconsistent.");
        if (Prefix.Length > c.MaxSeqLen)
            throw new CartridgeMismatchException($"{what} has {Prefix.Length} slots but the model's context is {c.MaxSeqLen} positions.");
    }

    /// <summary>The first 12 hex digits, for messages.</summary>
    public static string ShortFingerprint(string fingerprint) => fingerprint.Length > 12 ? fingerprint[..12] : fingerprint;

    // ------------------------------------------------------------------------------------------------
    // Writing

    /// <summary>Tensor name of layer <paramref name="layer"/>'s keys.</summary>
    public static string KeysName(int layer) => $"layers.{layer}.keys";
    public static string ValuesName(int layer) => $"layers.{layer}.values";

    /// <summary>The <c>cas.*</c> metadata of this cartridge, as written to the file.</summary>
    public Dictionary<string, string> BuildMetadata()
    {
        Validate();
        var m = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["cas.format"] = FormatName,
            ["cas.format_version"] = FormatVersion.ToString(CultureInfo.InvariantCulture),
            ["cas.model.fingerprint"] = ModelFingerprint,
            ["cas.model.source"] = ModelSource,
            ["cas.model.config"] = ModelConfig,
            ["cas.p"] = I(Prefix.Length),
            ["cas.layers"] = I(Prefix.Layers),
            ["cas.kv_heads"] = I(Prefix.KvHeads),
            ["cas.head_dim"] = I(Prefix.HeadDim),
            ["cas.init"] = Init.Name(),
            ["cas.frozen_slots"] = I(FrozenSlots),
            ["cas.steps"] = StepsTrained.ToString(CultureInfo.InvariantCulture),
            ["cas.objective"] = Objective,
            ["cas.source_documents"] = JsonSerializer.Serialize(SourceDocuments),
            ["cas.created"] = CreatedUtc.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture),
        };
        if (InitialLoss is double a) m["cas.loss.initial"] = D(a);
        if (FinalLoss is double b) m["cas.loss.final"] = D(b);
        if (HeldOutLoss is double h) m["cas.loss.held_out"] = D(h);
        foreach (var kv in Settings)
        {
            if (string.IsNullOrWhiteSpace(kv.Key)) throw new ArgumentException("training setting names must not be empty.");
            m["cas.train." + kv.Key] = kv.Value ?? "";
        }
        return m;
    }

    /// <summary>Writes the cartridge atomically (temporary file, fsync, rename) as F32 (default) or BF16.</summary>
    public void Save(string path, SafeTensorDType dtype = SafeTensorDType.F32) => Write(path, dtype, [], null);

    /// <summary>
    /// Writes the cartridge plus extra F32 tensors (names must start with <see cref="ExtraTensorPrefix"/>) and extra
    /// metadata (keys must start with <c>cas.</c> and not collide with the cartridge's): a training checkpoint is a
    /// cartridge file with its optimizer state beside it, and stays loadable as a cartridge.
    /// </summary>
    public void Write(string path, SafeTensorDType dtype,
        IEnumerable<(string Name, int[] Shape, ReadOnlyMemory<float> Data)> extraTensors,
        IReadOnlyDictionary<string, string>? extraMetadata)
    {
        ArgumentNullException.ThrowIfNull(path);
        var (tensors, meta) = FileContents(dtype, extraTensors, extraMetadata, path);
        SafeTensorsWriter.Write(path, tensors, meta);
    }

    /// <summary>The bytes of the file <see cref="Save"/> writes (what the cartridge store keeps); read back with <see cref="Read(SafeTensorsFile)"/> over <see cref="SafeTensorsFile.FromBytes"/>.</summary>
    public byte[] ToBytes(SafeTensorDType dtype = SafeTensorDType.F32)
    {
        var (tensors, meta) = FileContents(dtype, [], null, "a cartridge");
        return SafeTensorsWriter.ToBytes(tensors, meta);
    }

    /// <summary>The tensors and metadata of the cartridge file, checked: F32/BF16, finite K/V, extra names and keys in their namespaces.</summary>
    (List<(string, int[], ReadOnlyMemory<float>, SafeTensorDType)> Tensors, Dictionary<string, string> Metadata) FileContents(SafeTensorDType dtype,
        IEnumerable<(string Name, int[] Shape, ReadOnlyMemory<float> Data)> extraTensors, IReadOnlyDictionary<string, string>? extraMetadata, string path)
    {
        if (dtype is not (SafeTensorDType.F32 or SafeTensorDType.BF16))
            throw new InvalidRequestException($"cartridges are stored as F32 or BF16, not {dtype}.");
        var meta = BuildMetadata();
        if (extraMetadata != null)
            foreach (var kv in extraMetadata)
            {
                if (!kv.Key.StartsWith("cas.", StringComparison.Ordinal)) throw new ArgumentException($"extra metadata key '{kv.Key}' must start with 'cas.'.");
                if (!meta.TryAdd(kv.Key, kv.Value)) throw new ArgumentException($"extra metadata key '{kv.Key}' collides with a cartridge field.");
            }
        var p = Prefix;
        for (int l = 0; l < p.Layers; l++)
        {
            CheckFinite(p.Keys[l], KeysName(l), p.Length, p.HeadDim, path, "write");
            CheckFinite(p.Values[l], ValuesName(l), p.Length, p.HeadDim, path, "write");
        }
        int[] shape = [p.KvHeads, p.Length, p.HeadDim];
        var tensors = new List<(string, int[], ReadOnlyMemory<float>, SafeTensorDType)>(2 * p.Layers);
        for (int l = 0; l < p.Layers; l++)
        {
            tensors.Add((KeysName(l), shape, p.Keys[l], dtype));
            tensors.Add((ValuesName(l), shape, p.Values[l], dtype));
        }
        foreach (var (name, s, data) in extraTensors)
        {
            if (!name.StartsWith(ExtraTensorPrefix, StringComparison.Ordinal))
                throw new ArgumentException($"extra tensor '{name}' must be named {ExtraTensorPrefix}*.");
            tensors.Add((name, s, data, SafeTensorDType.F32));
        }
        return (tensors, meta);
    }

    void Validate()
    {
        if (FrozenSlots < 0 || FrozenSlots > Prefix.Length)
            throw new InvalidRequestException($"frozen slots must lie in [0, p = {Prefix.Length}], got {FrozenSlots}.");
        if (StepsTrained < 0) throw new InvalidRequestException($"steps trained must be ≥ 0, got {StepsTrained}.");
    }

    // ------------------------------------------------------------------------------------------------
    // Reading

    /// <summary>Reads a cartridge and checks that it belongs to <paramref name="model"/> (pass its fingerprint if you have it).</summary>
    public static Cartridge Load(string path, Model model, string? modelFingerprint = null)
    {
        var c = Read(path);
        c.EnsureCompatible(model, modelFingerprint, path);
        return c;
    }

    /// <summary>Reads and validates a cartridge file without checking it against a model.</summary>
    public static Cartridge Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        SafeTensorsFile file;
        try { file = SafeTensorsFile.Open(path); }
        catch (ModelFormatException e) { throw new CartridgeFormatException($"{path} is not a readable cartridge: {e.Message}", e); }
        using (file) return Read(file);
    }

    /// <summary>Reads the cartridge of an open file (which may also hold <see cref="ExtraTensorPrefix"/> tensors).</summary>
    public static Cartridge Read(SafeTensorsFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string path = file.Path;
        var md = file.Metadata;
        if (!md.TryGetValue("cas.format", out var format))
            throw new CartridgeFormatException($"{path} is a safetensors file but not a cartridge (its metadata has no 'cas.format'); was it written by `cas train`?");
        if (format != FormatName)
            throw new CartridgeFormatException($"{path}: 'cas.format' is '{format}', not '{FormatName}'; not a cartridge.");
        int version = ReqInt(md, "cas.format_version", path);
        if (version < 1) throw new CartridgeFormatException($"{path}: invalid cartridge format version {version}.");
        if (version > FormatVersion)
            throw new CartridgeFormatException($"{path} uses cartridge format version {version}; this build reads up to version {FormatVersion}. Update cas.");
        string fp = Req(md, "cas.model.fingerprint", path);
        int p = ReqInt(md, "cas.p", path), layers = ReqInt(md, "cas.layers", path);
        int kvHeads = ReqInt(md, "cas.kv_heads", path), headDim = ReqInt(md, "cas.head_dim", path);
        if (p <= 0 || layers <= 0 || kvHeads <= 0 || headDim <= 0)
            throw new CartridgeFormatException($"{path}: cas.p, cas.layers, cas.kv_heads and cas.head_dim must be positive (got {p}, {layers}, {kvHeads}, {headDim}).");

        // Exactly the tensors layers.{0..L-1}.keys/values (plus optional extra training tensors).
        int expected = 0;
        foreach (var t in file.Tensors)
        {
            if (t.Name.StartsWith(ExtraTensorPrefix, StringComparison.Ordinal)) continue;
            expected++;
        }
        if (expected != 2 * layers)
            throw new CartridgeFormatException($"{path}: expected {2 * layers} tensors (layers.0..{layers - 1}.keys/values) but found {expected}.");
        var keys = new float[layers][]; var values = new float[layers][];
        int[] shape = [kvHeads, p, headDim];
        for (int l = 0; l < layers; l++)
        {
            keys[l] = ReadTensor(file, KeysName(l), shape);
            values[l] = ReadTensor(file, ValuesName(l), shape);
        }
        var prefix = new KvPrefix(layers, kvHeads, headDim, p, keys, values);

        string initText = Opt(md, "cas.init") ?? "first-k";
        if (!CartridgeInitKinds.TryParse(initText, out var init))
            throw new CartridgeFormatException($"{path}: unknown cas.init '{initText}'.");
        int frozen = OptInt(md, "cas.frozen_slots", path) ?? 1;
        if (frozen < 0 || frozen > p) throw new CartridgeFormatException($"{path}: cas.frozen_slots = {frozen} is outside [0, {p}].");
        long steps = OptLong(md, "cas.steps", path) ?? 0;
        if (steps < 0) throw new CartridgeFormatException($"{path}: cas.steps = {steps} is negative.");
        IReadOnlyList<string> docs = [];
        if (Opt(md, "cas.source_documents") is { Length: > 0 } docsJson)
        {
            try { docs = JsonSerializer.Deserialize<string[]>(docsJson) ?? []; }
            catch (JsonException e) { throw new CartridgeFormatException($"{path}: cas.source_documents is not a JSON array of strings ({e.Message}).", e); }
        }
        DateTime created = default;
        if (Opt(md, "cas.created") is { Length: > 0 } createdText &&
            !DateTime.TryParse(createdText, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out created))
            throw new CartridgeFormatException($"{path}: cas.created '{createdText}' is not an ISO-8601 time.");
        var settings = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var kv in md)
            if (kv.Key.StartsWith("cas.train.", StringComparison.Ordinal)) settings[kv.Key["cas.train.".Length..]] = kv.Value;

        return new Cartridge(prefix, fp)
        {
            ModelSource = Opt(md, "cas.model.source") ?? "",
            ModelConfig = Opt(md, "cas.model.config") ?? "",
            Init = init, FrozenSlots = frozen, StepsTrained = steps,
            Objective = Opt(md, "cas.objective") ?? "",
            InitialLoss = OptDouble(md, "cas.loss.initial", path),
            FinalLoss = OptDouble(md, "cas.loss.final", path),
            HeldOutLoss = OptDouble(md, "cas.loss.held_out", path),
            SourceDocuments = docs, CreatedUtc = created, Settings = settings,
        };
    }

    static float[] ReadTensor(SafeTensorsFile file, string name, int[] shape)
    {
        if (!file.TryGetInfo(name, out var info))
            throw new CartridgeFormatException($"{file.Path}: tensor '{name}' is missing; a cartridge holds layers.{{l}}.keys and layers.{{l}}.values for every layer.");
        if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.BF16 or SafeTensorDType.F16))
            throw new CartridgeFormatException($"{file.Path}: tensor '{name}' has dtype {info.DType}; cartridges are F32 or BF16.");
        if (!info.Shape.AsSpan().SequenceEqual(shape))
            throw new CartridgeFormatException($"{file.Path}: tensor '{name}' has shape {info.ShapeText} but the metadata says [kv_heads, p, head_dim] = [{shape[0]}, {shape[1]}, {shape[2]}].");
        var data = file.ReadFloats(info);
        CheckFinite(data, name, shape[1], shape[2], file.Path, "read");
        return data;
    }

    /// <summary>Throws <see cref="CartridgeFormatException"/> naming the first NaN/Inf by tensor, flat index and (kv_head, slot, dim).</summary>
    static void CheckFinite(float[] data, string name, int p, int hd, string path, string verb)
    {
        int bad = -1;
        for (int i = 0; i < data.Length; i++) if (!float.IsFinite(data[i])) { bad = i; break; }
        if (bad < 0) return;
        int h = bad / (p * hd), s = bad / hd % p, d = bad % hd;
        string msg = $"tensor '{name}' holds {data[bad]} at index {bad} (kv_head {h}, slot {s}, dim {d}); a cartridge must be finite";
        throw new CartridgeFormatException(verb == "read"
            ? $"{path}: {msg}. The file is damaged or came from a diverged training run."
            : $"refusing to write {path}: {msg} (training diverged? lower the learning rate).");
    }

    static string Req(IReadOnlyDictionary<string, string> md, string key, string path) =>
        md.TryGetValue(key, out var v) && v.Length > 0 ? v : throw new CartridgeFormatException($"{path}: cartridge metadata lacks '{key}'.");
    static string? Opt(IReadOnlyDictionary<string, string> md, string key) => md.TryGetValue(key, out var v) ? v : null;

    static int ReqInt(IReadOnlyDictionary<string, string> md, string key, string path) =>
        int.TryParse(Req(md, key, path), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v
            : throw new CartridgeFormatException($"{path}: metadata '{key}' = '{md[key]}' is not an integer.");
    static int? OptInt(IReadOnlyDictionary<string, string> md, string key, string path) =>
        Opt(md, key) is not { Length: > 0 } s ? null
        : int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v
        : throw new CartridgeFormatException($"{path}: metadata '{key}' = '{s}' is not an integer.");
    static long? OptLong(IReadOnlyDictionary<string, string> md, string key, string path) =>
        Opt(md, key) is not { Length: > 0 } s ? null
        : long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v
        : throw new CartridgeFormatException($"{path}: metadata '{key}' = '{s}' is not an integer.");
    static double? OptDouble(IReadOnlyDictionary<string, string> md, string key, string path) =>
        Opt(md, key) is not { Length: > 0 } s ? null
        : double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v
        : throw new CartridgeFormatException($"{path}: metadata '{key}' = '{s}' is not a number.");

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
    static string D(double v) => v.ToString("R", CultureInfo.InvariantCulture);
    static DateTime TruncateToSeconds(DateTime t) => new(t.Ticks - t.Ticks % TimeSpan.TicksPerSecond, DateTimeKind.Utc);

    internal static void CheckShape(KvPrefix prefix, ModelConfig c)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        if (prefix.Layers != c.Layers || prefix.KvHeads != c.KvHeads || prefix.HeadDim != c.HeadDim)
            throw new InvalidRequestException($"prefix shape (layers {prefix.Layers}, kv_heads {prefix.KvHeads}, head_dim {prefix.HeadDim}) does not match the model (layers {c.Layers}, kv_heads {c.KvHeads}, head_dim {c.HeadDim}).");
    }
}
