using System.Text.Json.Nodes;
using Cas.Engine.Models;
using Cas.Tests.Common;
using static Cas.Engine.Tests.Models.ModelTestUtil;

namespace Cas.Engine.Tests.Models;

public class HfModelLoaderTests
{
    /// <summary>The loaded array for a Hugging Face tensor name.</summary>
    internal static float[]? ByHfName(Model m, string name)
    {
        var w = m.Weights;
        switch (name)
        {
            case "model.embed_tokens.weight": return w.TokenEmbedding;
            case "model.norm.weight": return w.FinalNorm;
            case "lm_head.weight": return w.LmHead;
        }
        var p = name.Split('.', 4); // model, layers, i, rest
        var l = w.Layers[int.Parse(p[2])];
        return p[3] switch
        {
            "input_layernorm.weight" => l.AttnNorm,
            "self_attn.q_proj.weight" => l.Wq,
            "self_attn.k_proj.weight" => l.Wk,
            "self_attn.v_proj.weight" => l.Wv,
            "self_attn.o_proj.weight" => l.Wo,
            "self_attn.q_proj.bias" => l.Bq,
            "self_attn.k_proj.bias" => l.Bk,
            "self_attn.v_proj.bias" => l.Bv,
            "self_attn.o_proj.bias" => l.Bo,
            "self_attn.q_norm.weight" => l.QNorm,
            "self_attn.k_norm.weight" => l.KNorm,
            "post_attention_layernorm.weight" => l.FfnNorm,
            "mlp.gate_proj.weight" => l.WGate,
            "mlp.up_proj.weight" => l.WUp,
            "mlp.down_proj.weight" => l.WDown,
            _ => throw new InvalidOperationException(name),
        };
    }

    static Model LoadGolden(string name) => HfModelLoader.Load(Path.Combine(GoldenModels, name));

    /// <summary>Every golden model loads, its shapes follow the manifest, and sampled weights equal what the Python script stored.</summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("llama_bias")]
    [InlineData("qwen3_bias")]
    public void GoldenModelsMatchTheValuesPythonStored(string name)
    {
        var entry = Manifest()["models"]![name]!;
        var m = LoadGolden(name);
        var c = m.Config;
        Assert.Equal((int)entry["dim"]!, c.Dim);
        Assert.Equal((int)entry["hidden_dim"]!, c.HiddenDim);
        Assert.Equal((int)entry["layers"]!, c.Layers);
        Assert.Equal((int)entry["heads"]!, c.Heads);
        Assert.Equal((int)entry["kv_heads"]!, c.KvHeads);
        Assert.Equal((int)entry["head_dim"]!, c.HeadDim);
        Assert.Equal((int)entry["vocab_size"]!, c.VocabSize);
        Assert.Equal(RopeStyle.Halves, c.Rope);
        Assert.Equal(m.Config.Layers, m.Weights.Layers.Length);

        var samples = entry["weight_samples"]!.AsArray();
        Assert.NotEmpty(samples);
        foreach (var s in samples)
        {
            string tensor = (string)s!["tensor"]!;
            var data = ByHfName(m, tensor);
            Assert.NotNull(data);
            Assert.Equal(s["shape"]!.AsArray().Aggregate(1, (acc, d) => acc * (int)d!), data.Length);
            Assert.Equal((float)(double)s["value"]!, data[(int)s["index"]!]);
        }
    }

    [Fact]
    public void LlamaGoldenConfig()
    {
        var m = LoadGolden("llama");   // BF16, single file
        var c = m.Config;
        Assert.Equal(Architecture.Llama, c.Architecture);
        Assert.Equal(500000f, c.RopeTheta);
        Assert.Equal(1e-5f, c.NormEps);
        Assert.Equal(new Llama3RopeScaling(8f, 1f, 4f, 64), c.RopeScaling);
        Assert.True(c.TiedEmbeddings);
        Assert.Same(m.Weights.TokenEmbedding, m.Weights.LmHead);
        Assert.False(c.QkvBias || c.AttnOutBias || c.QkNorm);
        Assert.Equal(256, c.MaxSeqLen);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2, 3], c.EosTokenIds);
        Assert.Equal(2 * 16 * 64, m.Weights.Layers[0].Wk.Length);
        // bf16 storage: every value has zero low 16 bits
        Assert.All(m.Weights.Layers[2].WDown.Floats, x => Assert.Equal(0u, BitConverter.SingleToUInt32Bits(x) & 0xFFFF));
    }

    [Fact]
    public void Qwen2GoldenShardedWithBiases()
    {
        var m = LoadGolden("qwen2");   // F32, two shards + index
        var c = m.Config;
        Assert.Equal(Architecture.Qwen2, c.Architecture);
        Assert.True(c.QkvBias);
        Assert.False(c.AttnOutBias);
        Assert.False(c.TiedEmbeddings);
        Assert.NotSame(m.Weights.TokenEmbedding, m.Weights.LmHead);
        Assert.Equal(1e6f, c.RopeTheta);
        Assert.Equal(1e-6f, c.NormEps);
        Assert.Null(c.RopeScaling);
        Assert.Equal(0, c.BosTokenId);
        Assert.Equal([255], c.EosTokenIds);
        foreach (var l in m.Weights.Layers)
        {
            Assert.Equal(64, l.Bq!.Length);
            Assert.Equal(16, l.Bk!.Length);
            Assert.Equal(16, l.Bv!.Length);
            Assert.Null(l.Bo);
            Assert.Null(l.QNorm);
        }
        // the index really spreads the tensors over both shards
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(GoldenModels, "qwen2", HfModelLoader.IndexFileName)))!;
        Assert.Equal(2, index["weight_map"]!.AsObject().Select(kv => (string)kv.Value!).Distinct().Count());
    }

    [Fact]
    public void Qwen3GoldenHeadDimAndQkNorm()
    {
        var m = LoadGolden("qwen3");
        var c = m.Config;
        Assert.Equal(Architecture.Qwen3, c.Architecture);
        Assert.True(c.QkNorm);
        Assert.False(c.QkvBias);
        Assert.Equal(32, c.HeadDim);
        Assert.NotEqual(c.Dim / c.Heads, c.HeadDim);
        Assert.Equal(128 * 64, m.Weights.Layers[0].Wq.Length);
        Assert.Equal(64 * 128, m.Weights.Layers[0].Wo.Length);
        Assert.Equal(32, m.Weights.Layers[1].QNorm!.Length);
        Assert.Equal(32, m.Weights.Layers[1].KNorm!.Length);
        Assert.Equal(7, c.BosTokenId);
        Assert.Equal([9], c.EosTokenIds);
    }

    // ------------------------------------------------------------------ errors

    static ModelFormatException LoadFails(string folder) => Assert.Throws<ModelFormatException>(() => HfModelLoader.Load(folder));

    [Fact]
    public void MissingTensorIsNamed()
    {
        using var dir = new TempDir();
        CopyModel("qwen3", dir.Path, t => t.Remove("model.layers.1.mlp.up_proj.weight"));
        var e = LoadFails(dir.Path);
        Assert.Contains("'model.layers.1.mlp.up_proj.weight' is missing", e.Message);
    }

    [Fact]
    public void WrongShapeNamesTensorExpectedAndFound()
    {
        using var dir = new TempDir();
        CopyModel("qwen3", dir.Path, t => t["model.layers.0.self_attn.k_proj.weight"] = ([32, 64], new float[32 * 64]));
        var e = LoadFails(dir.Path);
        Assert.Contains("'model.layers.0.self_attn.k_proj.weight'", e.Message);
        Assert.Contains("has shape [32, 64] but config.json implies [64, 64]", e.Message);
    }

    [Fact]
    public void UnsupportedArchitectureListsTheSupportedOnes()
    {
        using var dir = new TempDir();
        CopyModel("qwen3", dir.Path, editConfig: c => c["architectures"] = new JsonArray("MistralForCausalLM"));
        var e = LoadFails(dir.Path);
        Assert.Contains("'architectures'", e.Message);
        Assert.Contains("MistralForCausalLM", e.Message);
        Assert.Contains("LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM", e.Message);
    }

    [Theory]
    [InlineData("{\"rope_type\":\"yarn\",\"factor\":4.0}", "'rope_scaling.rope_type' is 'yarn'")]
    [InlineData("{\"type\":\"linear\",\"factor\":2.0}", "'rope_scaling.type' is 'linear'")]
    [InlineData("{\"factor\":2.0}", "'rope_scaling.type' is missing")]
    public void UnsupportedRopeScalingNamesFieldAndSupportedValues(string scaling, string expected)
    {
        using var dir = new TempDir();
        CopyModel("llama", dir.Path, editConfig: c => c["rope_scaling"] = JsonNode.Parse(scaling));
        var e = LoadFails(dir.Path);
        Assert.Contains(expected, e.Message);
        Assert.Contains("supported: 'llama3' or 'default'", e.Message);
    }

    [Fact]
    public void Llama3ScalingNeedsAllItsFields()
    {
        using var dir = new TempDir();
        CopyModel("llama", dir.Path, editConfig: c => c["rope_scaling"]!.AsObject().Remove("original_max_position_embeddings"));
        Assert.Contains("'rope_scaling.original_max_position_embeddings'", LoadFails(dir.Path).Message);
    }

    [Fact]
    public void MissingConfigOrWeights()
    {
        using var dir = new TempDir();
        Assert.Contains("config.json", LoadFails(dir.Path).Message);
        File.Copy(Path.Combine(GoldenModels, "qwen3", "config.json"), dir.File("config.json"));
        var e = LoadFails(dir.Path);
        Assert.Contains("model.safetensors or model.safetensors.index.json", e.Message);
        File.WriteAllBytes(dir.File("pytorch_model.bin"), [0]);
        Assert.Contains("convert them to safetensors", LoadFails(dir.Path).Message);
        Assert.Contains(dir.File("absent"), LoadFails(dir.File("absent")).Message);
    }

    static void CopyQwen2Shards(string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(Path.Combine(GoldenModels, "qwen2")))
            File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }

    [Fact]
    public void ShardIndexProblemsAreNamed()
    {
        using var dir = new TempDir();
        string a = Path.Combine(dir.Path, "a"), b = Path.Combine(dir.Path, "b"), c = Path.Combine(dir.Path, "c");
        string index = HfModelLoader.IndexFileName;

        CopyQwen2Shards(a);
        File.Delete(Path.Combine(a, "model-00002-of-00002.safetensors"));
        var e1 = LoadFails(a);
        Assert.Contains("model-00002-of-00002.safetensors", e1.Message);
        Assert.Contains("does not exist", e1.Message);

        CopyQwen2Shards(b);
        var map = JsonNode.Parse(File.ReadAllText(Path.Combine(b, index)))!;
        var wm = map["weight_map"]!.AsObject();
        string moved = wm.First(kv => (string)kv.Value! == "model-00001-of-00002.safetensors").Key;
        wm[moved] = "model-00002-of-00002.safetensors";
        File.WriteAllText(Path.Combine(b, index), map.ToJsonString());
        var e2 = LoadFails(b);
        Assert.Contains($"'{moved}'", e2.Message);
        Assert.Contains("that shard does not contain it", e2.Message);

        CopyQwen2Shards(c);
        map = JsonNode.Parse(File.ReadAllText(Path.Combine(c, index)))!;
        map["weight_map"]!.AsObject().Remove("model.norm.weight");
        File.WriteAllText(Path.Combine(c, index), map.ToJsonString());
        Assert.Contains("'model.norm.weight' is missing", LoadFails(c).Message);
    }

    [Theory]
    [InlineData("use_sliding_window", "true", "sliding-window attention is not supported")]
    [InlineData("hidden_act", "\"gelu\"", "'hidden_act' is 'gelu'")]
    [InlineData("hidden_size", "\"64\"", "field 'hidden_size' must be an integer")]
    [InlineData("tie_word_embeddings", "1", "field 'tie_word_embeddings' must be true or false")]
    [InlineData("num_key_value_heads", "3", "num_attention_heads (4) must be a multiple of num_key_value_heads (3)")]
    public void BadConfigFieldsAreNamed(string field, string json, string expected)
    {
        using var dir = new TempDir();
        CopyModel("qwen3", dir.Path, editConfig: c => c[field] = JsonNode.Parse(json));
        Assert.Contains(expected, LoadFails(dir.Path).Message);
    }

    [Fact]
    public void MissingRequiredFieldIsNamed()
    {
        using var dir = new TempDir();
        CopyModel("qwen3", dir.Path, editConfig: c => c.Remove("intermediate_size"));
        Assert.Contains("missing the required field 'intermediate_size'", LoadFails(dir.Path).Message);
    }

    [Fact]
    public void LlamaAttentionBiasLoadsAllFourBiases()
    {
        using var dir = new TempDir();
        CopyModel("llama", dir.Path,
            t =>
            {
                for (int i = 0; i < 3; i++)
                {
                    string p = $"model.layers.{i}.self_attn.";
                    t[p + "q_proj.bias"] = ([64], Enumerable.Range(0, 64).Select(x => i + x * 0.5f).ToArray());
                    t[p + "k_proj.bias"] = ([32], Enumerable.Range(0, 32).Select(x => i - x * 0.25f).ToArray());
                    t[p + "v_proj.bias"] = ([32], Enumerable.Range(0, 32).Select(x => i + 100f + x).ToArray());
                    t[p + "o_proj.bias"] = ([64], Enumerable.Range(0, 64).Select(x => i - 100f - x).ToArray());
                }
            },
            c => c["attention_bias"] = true);
        var m = HfModelLoader.Load(dir.Path);
        Assert.True(m.Config.QkvBias);
        Assert.True(m.Config.AttnOutBias);
        var l2 = m.Weights.Layers[2];
        Assert.Equal(2 + 63 * 0.5f, l2.Bq![63]);
        Assert.Equal(2 - 31 * 0.25f, l2.Bk![31]);
        Assert.Equal(102f, l2.Bv![0]);
        Assert.Equal(2 - 100f - 5, l2.Bo![5]);

        using var dir2 = new TempDir();
        CopyModel("llama", dir2.Path, editConfig: c => c["attention_bias"] = true);
        Assert.Contains("'model.layers.0.self_attn.q_proj.bias' is missing", LoadFails(dir2.Path).Message);
    }

    [Fact]
    public void TiedModelIgnoresAStoredLmHead()
    {
        using var dir = new TempDir();
        CopyModel("llama", dir.Path, t => t["lm_head.weight"] = ([256, 64], new float[256 * 64]));
        var m = HfModelLoader.Load(dir.Path);
        Assert.Same(m.Weights.TokenEmbedding, m.Weights.LmHead);
        Assert.Contains(m.Weights.LmHead.Floats, x => x != 0);
    }

    [Fact]
    public void UntiedModelNeedsLmHead()
    {
        using var dir = new TempDir();
        CopyModel("qwen2", dir.Path, t => t.Remove("lm_head.weight"));
        Assert.Contains("'lm_head.weight' is missing", LoadFails(dir.Path).Message);
    }

    // ------------------------------------------------------------------ config parsing

    [Fact]
    public void LlamaDefaultsFollowTransformers()
    {
        var c = HfModelLoader.ParseConfig("""
            {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
             "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 1000, "rope_scaling": null}
            """);
        Assert.Equal(8, c.KvHeads);
        Assert.Equal(32, c.HeadDim);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.Equal(1e-6f, c.NormEps);
        Assert.Equal(2048, c.MaxSeqLen);
        Assert.False(c.TiedEmbeddings);
        Assert.Null(c.RopeScaling);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
    }

    [Fact]
    public void Qwen3DefaultHeadDimIs128AndBosEosAreOptional()
    {
        var c = HfModelLoader.ParseConfig("""
            {"model_type": "qwen3", "hidden_size": 256, "intermediate_size": 512,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
            """);
        Assert.Equal(Architecture.Qwen3, c.Architecture);
        Assert.Equal(128, c.HeadDim);
        Assert.Null(c.BosTokenId);
        Assert.Empty(c.EosTokenIds);
        Assert.Equal(32768, c.MaxSeqLen);
    }

    [Fact]
    public void TransformersV5RopeParameters()
    {
        var c = HfModelLoader.ParseConfig("""
            {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100,
             "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
            """);
        Assert.Equal(500000f, c.RopeTheta);
        Assert.Equal(new Llama3RopeScaling(32f, 1f, 4f, 8192), c.RopeScaling);
        var d = HfModelLoader.ParseConfig("""
            {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}
            """);
        Assert.Equal(1e6f, d.RopeTheta);
        Assert.Null(d.RopeScaling);
    }

    [Fact]
    public void SmolLM2ConfigParses()
    {
        string path = TestPaths.RequireShared("models/smollm2-135m-instruct-tokenizer/config.json");
        var c = HfModelLoader.ReadConfig(path);
        Assert.Equal(Architecture.Llama, c.Architecture);
        Assert.Equal((576, 1536, 30, 9, 3, 64, 49152, 8192), (c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.HeadDim, c.VocabSize, c.MaxSeqLen));
        Assert.Equal(100000f, c.RopeTheta);
        Assert.Equal(1e-5f, c.NormEps);
        Assert.True(c.TiedEmbeddings);
        Assert.Null(c.RopeScaling);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
    }
}
