using System.Globalization;
using System.Text.Json;

namespace Cas.Engine.Models;

/// <summary>
/// Loads a Hugging Face model folder: config.json plus model.safetensors, or shards listed in
/// model.safetensors.index.json. Supported architectures: LlamaForCausalLM (Llama 2, Llama 3.x
/// with llama3 rope scaling, SmolLM2, ...), Qwen2ForCausalLM and Qwen3ForCausalLM.
/// Weights are converted to fp32; rotary pairs follow the HF "halves" convention.
/// </summary>
public static class HfModelLoader
{
    public const string ConfigFileName = "config.json";
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    static readonly string[] SupportedArchitectures = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"];

    public static Model Load(string folder) => Load(folder, WeightStorage.Float32);

    /// <summary>Loads a model folder; <paramref name="storage"/> = File keeps bf16/fp16 weight matrices in 16 bits
    /// (half the memory and the bytes read per decoded token; norms and biases are always fp32).</summary>
    public static Model Load(string folder, WeightStorage storage)
    {
        ArgumentNullException.ThrowIfNull(folder);
        folder = Path.GetFullPath(folder);
        if (!Directory.Exists(folder))
            throw new ModelFormatException($"model folder not found: {folder}");
        var config = ReadConfig(Path.Combine(folder, ConfigFileName));
        using var source = HfTensorSource.Open(folder);
        var weights = LoadWeights(config, source, storage);
        return new Model(config, weights, folder);
    }

    /// <summary>Reads and validates a config.json.</summary>
    public static ModelConfig ReadConfig(string configPath)
    {
        if (Directory.Exists(configPath)) configPath = Path.Combine(configPath, ConfigFileName);
        string text;
        try
        {
            text = File.ReadAllText(configPath);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ModelFormatException($"{configPath} not found: a Hugging Face model folder needs config.json beside its weights.", e);
        }
        return ParseConfig(text, configPath);
    }

    /// <summary>Parses config.json text; <paramref name="source"/> names it in error messages.</summary>
    public static ModelConfig ParseConfig(string json, string source = ConfigFileName)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{source} is not valid JSON: {e.Message}", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException($"{source} must hold a JSON object.");
            var c = new ConfigReader(doc.RootElement, source);
            var config = c.Build();
            config.Validate();
            return config;
        }
    }

    /// <summary>Typed access to config.json fields with messages that name the field.</summary>
    sealed class ConfigReader(JsonElement root, string source)
    {
        JsonElement? Field(string name) =>
            root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        ModelFormatException Bad(string field, string expected, JsonElement found) =>
            new($"{source}: field '{field}' must be {expected}, found {found.GetRawText()}.");

        int Int(string name, int? fallback)
        {
            if (Field(name) is not { } v)
                return fallback ?? throw new ModelFormatException($"{source} is missing the required field '{name}'.");
            return AsInt(name, v);
        }

        int AsInt(string name, JsonElement v)
        {
            if (v.ValueKind == JsonValueKind.Number)
            {
                if (v.TryGetInt32(out int i)) return i;
                if (v.TryGetDouble(out double d) && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) return (int)d;
            }
            throw Bad(name, "an integer", v);
        }

        static float AsFloat(JsonElement v, out bool ok)
        {
            ok = v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out _);
            return ok ? (float)v.GetDouble() : 0f;
        }

        float Float(JsonElement obj, string name, string fieldLabel, float? fallback)
        {
            if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
                return fallback ?? throw new ModelFormatException($"{source} is missing the required field '{fieldLabel}'.");
            float f = AsFloat(v, out bool ok);
            if (!ok) throw Bad(fieldLabel, "a number", v);
            return f;
        }

        bool Bool(string name, bool fallback)
        {
            if (Field(name) is not { } v) return fallback;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Bad(name, "true or false", v),
            };
        }

        string? Str(string name)
        {
            if (Field(name) is not { } v) return null;
            return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Bad(name, "a string", v);
        }

        Architecture ReadArchitecture()
        {
            if (Field("architectures") is { } a)
            {
                if (a.ValueKind != JsonValueKind.Array || a.GetArrayLength() == 0 || a[0].ValueKind != JsonValueKind.String)
                    throw Bad("architectures", "a non-empty list of strings", a);
                string name = a[0].GetString()!;
                return name switch
                {
                    "LlamaForCausalLM" => Architecture.Llama,
                    "Qwen2ForCausalLM" => Architecture.Qwen2,
                    "Qwen3ForCausalLM" => Architecture.Qwen3,
                    _ => throw new ModelFormatException(
                        $"{source}: field 'architectures' is {a.GetRawText()}; supported: {string.Join(", ", SupportedArchitectures)}."),
                };
            }
            string? type = Str("model_type");
            return type switch
            {
                "llama" => Architecture.Llama,
                "qwen2" => Architecture.Qwen2,
                "qwen3" => Architecture.Qwen3,
                null => throw new ModelFormatException(
                    $"{source} has neither 'architectures' nor 'model_type'; supported architectures: {string.Join(", ", SupportedArchitectures)}."),
                _ => throw new ModelFormatException(
                    $"{source}: field 'model_type' is '{type}' and 'architectures' is absent; supported model types: llama, qwen2, qwen3."),
            };
        }

        public ModelConfig Build()
        {
            var arch = ReadArchitecture();
            string act = Str("hidden_act") ?? "silu";
            if (act != "silu")
                throw new ModelFormatException($"{source}: field 'hidden_act' is '{act}'; only 'silu' (SwiGLU MLP) is supported.");
            if (arch == Architecture.Llama && Bool("mlp_bias", false))
                throw new ModelFormatException($"{source}: field 'mlp_bias' is true; only MLPs without bias are supported.");
            if (arch != Architecture.Llama && Bool("use_sliding_window", false))
            {
                int layersForWindow = Int("num_hidden_layers", null);
                if (Int("max_window_layers", 0) < layersForWindow)
                    throw new ModelFormatException($"{source}: field 'use_sliding_window' is true; sliding-window attention is not supported (set it to false).");
            }
            if (Field("partial_rotary_factor") is { } prf && !(AsFloat(prf, out bool ok) == 1f && ok))
                throw new ModelFormatException($"{source}: field 'partial_rotary_factor' is {prf.GetRawText()}; only 1.0 (rotate the whole head) is supported.");

            int dim = Int("hidden_size", null);
            int heads = Int("num_attention_heads", null);
            int? defaultHeadDim = arch == Architecture.Qwen3 ? 128 : heads > 0 && dim % heads == 0 ? dim / heads : null;
            if (Field("head_dim") is null && defaultHeadDim is null)
                throw new ModelFormatException($"{source}: hidden_size ({dim}) is not a multiple of num_attention_heads ({heads}) and 'head_dim' is not given.");
            int headDim = Int("head_dim", defaultHeadDim);

            bool attentionBias = Bool("attention_bias", false);
            var (theta, scaling) = ReadRope();

            return new ModelConfig
            {
                Architecture = arch,
                Dim = dim,
                HiddenDim = Int("intermediate_size", null),
                Layers = Int("num_hidden_layers", null),
                Heads = heads,
                KvHeads = Int("num_key_value_heads", heads),
                HeadDim = headDim,
                VocabSize = Int("vocab_size", null),
                MaxSeqLen = Int("max_position_embeddings", arch == Architecture.Llama ? 2048 : 32768),
                RopeTheta = theta,
                NormEps = Float(root, "rms_norm_eps", "rms_norm_eps", 1e-6f),
                Rope = RopeStyle.Halves,
                RopeScaling = scaling,
                TiedEmbeddings = Bool("tie_word_embeddings", false),
                QkvBias = arch == Architecture.Qwen2 || attentionBias,
                AttnOutBias = arch != Architecture.Qwen2 && attentionBias,
                QkNorm = arch == Architecture.Qwen3,
                BosTokenId = Field("bos_token_id") is { } b ? AsInt("bos_token_id", b) : arch == Architecture.Llama ? 1 : null,
                EosTokenIds = ReadEos(arch),
            };
        }

        int[] ReadEos(Architecture arch)
        {
            if (Field("eos_token_id") is not { } v) return arch == Architecture.Llama ? [2] : [];
            if (v.ValueKind == JsonValueKind.Array)
            {
                var ids = new int[v.GetArrayLength()];
                int i = 0;
                foreach (var e in v.EnumerateArray()) ids[i++] = AsInt("eos_token_id", e);
                return ids;
            }
            return [AsInt("eos_token_id", v)];
        }

        /// <summary>rope_theta and rope_scaling (transformers 4.x), or rope_parameters (transformers 5).</summary>
        (float Theta, Llama3RopeScaling? Scaling) ReadRope()
        {
            string label = "rope_scaling";
            JsonElement? scaling = Field("rope_scaling");
            float theta = Float(root, "rope_theta", "rope_theta", 10000f);
            if (Field("rope_parameters") is { } rp && rp.ValueKind == JsonValueKind.Object)
            {
                label = "rope_parameters";
                scaling = rp;
                theta = Float(rp, "rope_theta", "rope_parameters.rope_theta", theta);
            }
            if (scaling is not { } s) return (theta, null);
            if (s.ValueKind != JsonValueKind.Object) throw Bad(label, "an object or null", s);

            string typeField = s.TryGetProperty("rope_type", out _) ? "rope_type" : "type";
            string? type = s.TryGetProperty(typeField, out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            if (type is null && label == "rope_parameters") type = "default";
            switch (type)
            {
                case "default":
                    return (theta, null);
                case "llama3":
                    var r = new Llama3RopeScaling(
                        Float(s, "factor", $"{label}.factor", null),
                        Float(s, "low_freq_factor", $"{label}.low_freq_factor", null),
                        Float(s, "high_freq_factor", $"{label}.high_freq_factor", null),
                        s.TryGetProperty("original_max_position_embeddings", out var o) && o.ValueKind != JsonValueKind.Null
                            ? AsInt($"{label}.original_max_position_embeddings", o)
                            : throw new ModelFormatException($"{source} is missing the required field '{label}.original_max_position_embeddings'."));
                    if (!(r.Factor >= 1f)) throw new ModelFormatException($"{source}: '{label}.factor' must be >= 1, got {r.Factor.ToString(CultureInfo.InvariantCulture)}.");
                    if (!(r.LowFreqFactor > 0f) || !(r.HighFreqFactor > r.LowFreqFactor))
                        throw new ModelFormatException($"{source}: '{label}' needs 0 < low_freq_factor < high_freq_factor, got {r.LowFreqFactor.ToString(CultureInfo.InvariantCulture)} and {r.HighFreqFactor.ToString(CultureInfo.InvariantCulture)}.");
                    if (r.OriginalMaxPositionEmbeddings <= 0)
                        throw new ModelFormatException($"{source}: '{label}.original_max_position_embeddings' must be positive, got {r.OriginalMaxPositionEmbeddings}.");
                    return (theta, r);
                default:
                    throw new ModelFormatException(
                        $"{source}: field '{label}.{typeField}' is {(type is null ? "missing" : $"'{type}'")}; supported: 'llama3' or 'default' (or {label} null).");
            }
        }
    }

    static ModelWeights LoadWeights(ModelConfig c, HfTensorSource src, WeightStorage storage)
    {
        int d = c.Dim, q = c.QDim, kv = c.KvDim, h = c.HiddenDim, hd = c.HeadDim, v = c.VocabSize;
        WeightTensor M(string name, params int[] shape) => storage == WeightStorage.File ? src.ReadWeight(name, shape) : src.Read(name, shape);
        var embedding = M("model.embed_tokens.weight", v, d);
        var layers = new LayerWeights[c.Layers];
        for (int i = 0; i < c.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            layers[i] = new LayerWeights
            {
                AttnNorm = src.Read(p + "input_layernorm.weight", d),
                Wq = M(p + "self_attn.q_proj.weight", q, d),
                Wk = M(p + "self_attn.k_proj.weight", kv, d),
                Wv = M(p + "self_attn.v_proj.weight", kv, d),
                Wo = M(p + "self_attn.o_proj.weight", d, q),
                Bq = c.QkvBias ? src.Read(p + "self_attn.q_proj.bias", q) : null,
                Bk = c.QkvBias ? src.Read(p + "self_attn.k_proj.bias", kv) : null,
                Bv = c.QkvBias ? src.Read(p + "self_attn.v_proj.bias", kv) : null,
                Bo = c.AttnOutBias ? src.Read(p + "self_attn.o_proj.bias", d) : null,
                QNorm = c.QkNorm ? src.Read(p + "self_attn.q_norm.weight", hd) : null,
                KNorm = c.QkNorm ? src.Read(p + "self_attn.k_norm.weight", hd) : null,
                FfnNorm = src.Read(p + "post_attention_layernorm.weight", d),
                WGate = M(p + "mlp.gate_proj.weight", h, d),
                WUp = M(p + "mlp.up_proj.weight", h, d),
                WDown = M(p + "mlp.down_proj.weight", d, h),
            };
        }
        var finalNorm = src.Read("model.norm.weight", d);
        var lmHead = c.TiedEmbeddings ? embedding : M("lm_head.weight", v, d);
        return new ModelWeights { TokenEmbedding = embedding, Layers = layers, FinalNorm = finalNorm, LmHead = lmHead };
    }
}

/// <summary>The tensors of an HF folder, from one safetensors file or from index-listed shards.</summary>
internal sealed class HfTensorSource : IDisposable
{
    readonly string describe;
    readonly Dictionary<string, SafeTensorsFile> files = new(StringComparer.Ordinal);   // by file name
    readonly Dictionary<string, string>? weightMap;                                     // tensor -> file name

    HfTensorSource(string describe, Dictionary<string, string>? weightMap)
    {
        this.describe = describe;
        this.weightMap = weightMap;
    }

    public static HfTensorSource Open(string folder)
    {
        string single = Path.Combine(folder, HfModelLoader.SingleFileName);
        string index = Path.Combine(folder, HfModelLoader.IndexFileName);
        if (File.Exists(single))
        {
            var s = new HfTensorSource(single, null);
            s.files[HfModelLoader.SingleFileName] = SafeTensorsFile.Open(single);
            return s;
        }
        if (File.Exists(index))
        {
            var map = ReadIndex(index);
            var s = new HfTensorSource(index, map);
            try
            {
                foreach (var file in map.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal))
                {
                    string shard = Path.Combine(folder, file);
                    if (!File.Exists(shard))
                        throw new ModelFormatException($"{index} lists shard '{file}' but {shard} does not exist.");
                    s.files[file] = SafeTensorsFile.Open(shard);
                }
            }
            catch
            {
                s.Dispose();
                throw;
            }
            return s;
        }
        string hint = File.Exists(Path.Combine(folder, "pytorch_model.bin")) || File.Exists(Path.Combine(folder, "pytorch_model.bin.index.json"))
            ? " The folder has PyTorch .bin weights; convert them to safetensors first."
            : "";
        throw new ModelFormatException($"no weights in {folder}: expected {HfModelLoader.SingleFileName} or {HfModelLoader.IndexFileName}.{hint}");
    }

    static Dictionary<string, string> ReadIndex(string index)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(index));
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException($"{index} has no 'weight_map' object (tensor name -> shard file).");
            var map = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var e in wm.EnumerateObject())
            {
                string? file = e.Value.ValueKind == JsonValueKind.String ? e.Value.GetString() : null;
                if (string.IsNullOrEmpty(file) || Path.GetFileName(file) != file)
                    throw new ModelFormatException($"{index}: weight_map entry '{e.Name}' must name a shard file in the same folder, found {e.Value.GetRawText()}.");
                map[e.Name] = file;
            }
            return map;
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{index} is not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>Reads a required tensor and checks its shape.</summary>
    public float[] Read(string name, params int[] expectedShape)
    {
        var (file, info) = Find(name);
        if (!info.Shape.AsSpan().SequenceEqual(expectedShape))
            throw new ModelFormatException(
                $"tensor '{name}' in {file.Path} has shape {info.ShapeText} but config.json implies {SafeTensorInfo.FormatShape(expectedShape)}.");
        var values = WeightMemory.Allocate<float>(checked((int)info.ElementCount));   // model weights: on huge pages
        file.ReadFloats(info, values);
        return values;
    }

    /// <summary>Reads a required weight matrix, kept 16-bit when the file stores it as bf16 or fp16 (exact: the fp32 read
    /// is the widening of those bits).</summary>
    public WeightTensor ReadWeight(string name, params int[] expectedShape)
    {
        var values = Read(name, expectedShape);
        var dtype = Find(name).Info.DType;
        var precision = dtype == SafeTensorDType.BF16 ? WeightPrecision.BFloat16 : dtype == SafeTensorDType.F16 ? WeightPrecision.Float16 : WeightPrecision.Float32;
        return new WeightTensor(values).ToPrecision(precision);
    }

    (SafeTensorsFile File, SafeTensorInfo Info) Find(string name)
    {
        if (weightMap is null)
        {
            var file = files[HfModelLoader.SingleFileName];
            if (file.TryGetInfo(name, out var info)) return (file, info);
            throw new ModelFormatException($"tensor '{name}' is missing from {describe}; the weights do not match config.json.");
        }
        if (!weightMap.TryGetValue(name, out var fileName))
            throw new ModelFormatException($"tensor '{name}' is missing from {describe} (not in weight_map); the weights do not match config.json.");
        var shard = files[fileName];
        if (shard.TryGetInfo(name, out var shardInfo)) return (shard, shardInfo);
        throw new ModelFormatException($"{describe} maps tensor '{name}' to {fileName}, but that shard does not contain it.");
    }

    public void Dispose()
    {
        foreach (var f in files.Values) f.Dispose();
        files.Clear();
    }
}
