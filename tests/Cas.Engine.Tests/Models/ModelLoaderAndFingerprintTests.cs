using System.Text.Json.Nodes;
using Cas.Engine.Models;
using Cas.Tests.Common;
using static Cas.Engine.Tests.Models.ModelTestUtil;

namespace Cas.Engine.Tests.Models;

public class ModelLoaderTests
{
    [Fact]
    public void FolderIsHuggingFaceAndBinIsLlama2c()
    {
        var hf = ModelLoader.Load(Path.Combine(GoldenModels, "qwen3"));
        Assert.Equal(Architecture.Qwen3, hf.Config.Architecture);
        Assert.Equal(Path.Combine(GoldenModels, "qwen3"), hf.Source);

        string bin = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        var l2c = ModelLoader.Load(bin);
        Assert.Equal(RopeStyle.Interleaved, l2c.Config.Rope);
        Assert.Equal(Path.GetFullPath(bin), l2c.Source);
    }

    [Fact]
    public void MissingPathAndUnknownFileAreRejected()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("nothing-here")));
        Assert.Contains(dir.File("nothing-here"), e.Message);
        File.WriteAllText(dir.File("weights.gguf"), "x");
        Assert.Contains("cannot tell the model format", Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir.File("weights.gguf"))).Message);
    }
}

public class ModelFingerprintTests
{
    static Model Golden(string name) => HfModelLoader.Load(Path.Combine(GoldenModels, name));

    [Fact]
    public void StableAcrossLoadsAndStorageFormats()
    {
        string a = ModelFingerprint.Compute(Golden("llama"));
        Assert.Matches("^[0-9a-f]{64}$", a);
        Assert.Equal(a, ModelFingerprint.Compute(Golden("llama")));

        using var dir = new TempDir();
        // the bf16 golden re-stored as F32 holds the same values, so the same fingerprint
        CopyModel("llama", Path.Combine(dir.Path, "f32"));
        Assert.Equal(a, ModelFingerprint.Compute(HfModelLoader.Load(Path.Combine(dir.Path, "f32"))));
        // sharded vs single file
        CopyModel("qwen2", Path.Combine(dir.Path, "q2"));
        Assert.Equal(ModelFingerprint.Compute(Golden("qwen2")), ModelFingerprint.Compute(HfModelLoader.Load(Path.Combine(dir.Path, "q2"))));
        Assert.NotEqual(ModelFingerprint.Compute(Golden("qwen2")), ModelFingerprint.Compute(Golden("qwen3")));
    }

    [Fact]
    public void ChangesWithAnyWeightOrConfigField()
    {
        string baseline = ModelFingerprint.Compute(Golden("qwen3"));
        using var dir = new TempDir();
        CopyModel("qwen3", Path.Combine(dir.Path, "w"), t =>
        {
            var d = t["model.layers.1.self_attn.k_norm.weight"].Data;
            d[^1] = MathF.BitIncrement(d[^1]);     // one ulp in one weight
        });
        Assert.NotEqual(baseline, ModelFingerprint.Compute(HfModelLoader.Load(Path.Combine(dir.Path, "w"))));

        CopyModel("qwen3", Path.Combine(dir.Path, "c"), editConfig: c => c["rms_norm_eps"] = 1e-5);
        Assert.NotEqual(baseline, ModelFingerprint.Compute(HfModelLoader.Load(Path.Combine(dir.Path, "c"))));

        // a llama with an explicit copy of the embedding as lm_head computes the same thing but is
        // declared untied: a different config, so a different fingerprint
        CopyModel("llama", Path.Combine(dir.Path, "u"),
            t => t["lm_head.weight"] = (t["model.embed_tokens.weight"].Shape, (float[])t["model.embed_tokens.weight"].Data.Clone()),
            c => c["tie_word_embeddings"] = false);
        Assert.NotEqual(ModelFingerprint.Compute(Golden("llama")), ModelFingerprint.Compute(HfModelLoader.Load(Path.Combine(dir.Path, "u"))));
    }

    [Fact]
    public void CanonicalConfigCoversScalingAndFlags()
    {
        var c = Golden("llama").Config;
        string s = ModelFingerprint.CanonicalConfig(c);
        Assert.NotEqual(s, ModelFingerprint.CanonicalConfig(c with { RopeScaling = c.RopeScaling! with { Factor = 16f } }));
        Assert.NotEqual(s, ModelFingerprint.CanonicalConfig(c with { RopeScaling = null }));
        Assert.NotEqual(s, ModelFingerprint.CanonicalConfig(c with { Rope = RopeStyle.Interleaved }));
        Assert.NotEqual(s, ModelFingerprint.CanonicalConfig(c with { AttnOutBias = true }));
        Assert.NotEqual(s, ModelFingerprint.CanonicalConfig(c with { MaxSeqLen = 512 }));
        Assert.Equal(s, ModelFingerprint.CanonicalConfig(c with { BosTokenId = 99 })); // token ids do not change the math
    }
}
