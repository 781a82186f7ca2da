using System.Text.Json;
using Cas.Engine.Models;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Engine;

/// <summary>
/// Logits of tiny random-weight HF models (Llama with llama3 RoPE scaling + tied embeddings in bf16,
/// Qwen2 with biases in two shards, Qwen3 with q/k norms and head_dim ≠ dim/heads, Llama and Qwen3 with
/// attention_bias = true: q/k/v and o_proj biases) against the float64
/// PyTorch reference written by tests/reference/make_model_goldens.py, with and without a random
/// cartridge prefix. Tolerance: relative error ≤ 1e-4, measured as max |ours − ref| / max |ref|
/// over the whole [12, vocab] logits block (the fp32 reference itself sits ≈2e-6 from float64).
/// Each model runs twice: weights widened to fp32, and kept in the file's precision (<see cref="WeightStorage.File"/>:
/// the Llama file is bf16, so its matrices stay bf16 and are widened inside the kernels; the reference computed from
/// those same bf16 values holds the 16-bit path to the same 1e-4). Token-by-token decode (the few-rows kernels) is
/// checked against the same reference rows.
/// </summary>
public class ReferenceLogitsTests
{
    static readonly string Dir = Goldens.Path("models");

    static float[] ReadF32(string rel) => Goldens.ReadF32(Path.Combine(Dir, rel));

    [Theory]
    [InlineData("llama", WeightStorage.Float32)]
    [InlineData("llama", WeightStorage.File)]
    [InlineData("qwen2", WeightStorage.Float32)]
    [InlineData("qwen2", WeightStorage.File)]
    [InlineData("qwen3", WeightStorage.Float32)]
    [InlineData("llama_bias", WeightStorage.Float32)]
    [InlineData("qwen3_bias", WeightStorage.Float32)]
    public void LogitsMatchPyTorch(string name, WeightStorage storage)
    {
        using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "manifest.json")));
        var m = manifest.RootElement.GetProperty("models").GetProperty(name);
        int p = manifest.RootElement.GetProperty("prefix_len").GetInt32();
        var tokens = m.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var model = ModelLoader.Load(Path.Combine(Dir, m.GetProperty("folder").GetString()!), storage);
        var c = model.Config;
        var t = new Transformer(model);
        if (storage == WeightStorage.File && name == "llama") Assert.Equal(WeightPrecision.BFloat16, model.Weights.Layers[0].Wq.Precision);

        // Without a prefix: one pass (prefill kernels), then token by token (decode kernels).
        var cache = new KvCache(c, tokens.Length);
        var logits = new float[tokens.Length * c.VocabSize];
        t.ForwardAll(cache, tokens, logits);
        var expected = ReadF32(m.GetProperty("logits").GetProperty("file").GetString()!);
        AssertRelative(expected, logits, $"{name} logits");
        cache = new KvCache(c, tokens.Length);
        for (int i = 0; i < tokens.Length; i++)
            t.Forward([cache], [[tokens[i]]], logits.AsSpan(i * c.VocabSize, c.VocabSize));
        AssertRelative(expected, logits, $"{name} logits decoded token by token");

        // With a random cartridge prefix: file layout [layers, 2 (K,V), kv_heads, p, head_dim].
        var kv = ReadF32(m.GetProperty("prefix_kv").GetProperty("file").GetString()!);
        int block = c.KvHeads * p * c.HeadDim;
        var keys = new float[c.Layers][]; var values = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            keys[l] = kv.AsSpan((2 * l) * block, block).ToArray();
            values[l] = kv.AsSpan((2 * l + 1) * block, block).ToArray();
        }
        var prefix = new KvPrefix(c.Layers, c.KvHeads, c.HeadDim, p, keys, values);
        var pcache = new KvCache(c, p + tokens.Length, prefix);
        t.ForwardAll(pcache, tokens, logits);
        AssertRelative(ReadF32(m.GetProperty("prefix_logits").GetProperty("file").GetString()!), logits, $"{name} prefix logits");
    }

    static void AssertRelative(float[] expect, float[] actual, string what)
    {
        Assert.Equal(expect.Length, actual.Length);
        double maxRef = 0, maxDiff = 0;
        for (int i = 0; i < expect.Length; i++)
        {
            maxRef = Math.Max(maxRef, Math.Abs(expect[i]));
            maxDiff = Math.Max(maxDiff, Math.Abs(expect[i] - actual[i]));
        }
        Assert.True(maxDiff / maxRef <= 1e-4, $"{what}: relative error {maxDiff / maxRef:E2} (max |diff| {maxDiff:E2}, max |ref| {maxRef:F3}) exceeds 1e-4.");
    }
}
