using System.Text.Json;
using Cas.Engine;
using Cas.Engine.Compute;
using Cas.Engine.Models;
using Cas.Tests.Common;

namespace Cas.Training.Tests.Training;

/// <summary>
/// Loss and prefix gradient against PyTorch float64 autograd (tests/reference/make_backprop_goldens.py) on tiny
/// Hugging Face folders loaded with <see cref="ModelLoader"/>: Llama (GQA, tied), Qwen2 (biases), Qwen3 (q/k norm,
/// explicit head_dim), and Llama/Qwen3 with attention_bias = true (q/k/v and o_proj biases). Two sequences of different
/// lengths packed in one batch, sparse top-5 targets, masked positions. Plus a CAS-style batch whose sequences sit behind
/// different compositions of two cartridges (<see cref="ComposedBatchMatchesPyTorch"/>).
/// </summary>
public class TorchGoldenTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("llama", BlasBackend.Managed)]
    [InlineData("qwen2", BlasBackend.Managed)]
    [InlineData("qwen3", BlasBackend.Managed)]
    [InlineData("llama", BlasBackend.Blis)]
    [InlineData("qwen3", BlasBackend.Blis)]
    [InlineData("qwen2", BlasBackend.OpenBlas)]
    [InlineData("llama_bias", BlasBackend.Managed)]
    [InlineData("qwen3_bias", BlasBackend.Managed)]
    [InlineData("llama_bias", BlasBackend.OpenBlas)]
    public void LossAndGradientMatchPyTorch(string arch, BlasBackend backend)
    {
        if (!Blas.TryUse(backend)) Assert.Skip($"{backend} is not installed here.");
        try { Check(arch); }
        finally { Blas.TryUse(BlasBackend.Managed); } // the assembly's default (see TestSetup)
    }

    void Check(string arch)
    {
        string dir = Goldens.Path("backprop", arch);
        var model = ModelLoader.Load(dir);
        var c = model.Config;
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json")));
        var root = doc.RootElement;
        int p = root.GetProperty("prefix_length").GetInt32();
        Assert.Equal(c.Layers, root.GetProperty("layers").GetInt32());
        Assert.Equal(c.HeadDim, root.GetProperty("head_dim").GetInt32());

        var batch = new List<TrainingSequence>();
        foreach (var s in root.GetProperty("sequences").EnumerateArray())
        {
            int[] Ints(string n) => s.GetProperty(n).EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var lps = s.GetProperty("log_probs").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
            batch.Add(new TrainingSequence(Ints("tokens"), new SparseTargets(Ints("offsets"), Ints("ids"), lps)));
        }
        Assert.Equal(2, batch.Count);
        Assert.NotEqual(batch[0].Tokens.Length, batch[1].Tokens.Length);

        var prefix = new KvPrefix(c.Layers, c.KvHeads, c.HeadDim, p,
            Split(Goldens.ReadF32(Path.Combine(dir, "prefix_k.f32")), c.Layers), Split(Goldens.ReadF32(Path.Combine(dir, "prefix_v.f32")), c.Layers));
        var gk = Split(Goldens.ReadF64(Path.Combine(dir, "grad_k.f64")), c.Layers);
        var gv = Split(Goldens.ReadF64(Path.Combine(dir, "grad_v.f64")), c.Layers);

        var bp = new CartridgeBackprop(model, maxTokens: 32) { AttentionBlockRows = 10 };
        var (dK, dV) = Tiny.GradBuffers(prefix);
        float loss = bp.LossAndGradient(prefix, batch, dK, dV);

        // Loss: 1e-4 relative. The divisor is the number of positions with targets.
        double refLoss = root.GetProperty("loss").GetDouble();
        Assert.Equal(root.GetProperty("target_positions").GetInt32(), bp.LastTargetPositions);
        Assert.True(Math.Abs(loss - refLoss) <= 1e-4 * Math.Abs(refLoss), $"{arch}: loss {loss} vs PyTorch {refLoss}");

        // Gradient: per tensor (layer, K or V), max |ours − torch| ≤ 1e-3 · max |torch|.
        for (int l = 0; l < c.Layers; l++)
            foreach (var (name, ours, theirs) in new[] { ("K", dK[l], gk[l]), ("V", dV[l], gv[l]) })
            {
                double maxRef = theirs.Max(Math.Abs), maxErr = 0;
                for (int i = 0; i < theirs.Length; i++) maxErr = Math.Max(maxErr, Math.Abs(ours[i] - theirs[i]));
                output.WriteLine($"{arch} layer {l} d{name}: max|ref| {maxRef:E3} max err {maxErr:E3} ({maxErr / maxRef:E2})");
                Assert.True(maxRef > 1e-6, "the reference gradient is ~0; the golden would be vacuous");
                Assert.True(maxErr <= 1e-3 * maxRef, $"{arch} layer {l} d{name}: max error {maxErr:E3} > 1e-3 × {maxRef:E3}");
            }
        output.WriteLine($"{arch}: loss {loss} vs {refLoss}");
    }

    /// <summary>
    /// tests/goldens/backprop/composed (make_backprop_goldens.py, model llama_bias): cartridges A (p = 5) and B (p = 3),
    /// three sequences behind [A], [B, A] and [A, B] in one micro-batch. With A trainable and B frozen: the loss and dK/dV
    /// of A (summed over the three sequences, at offsets 0 and 3) match PyTorch autograd (1e-4 / 1e-3 relative, as
    /// above) and B is neither written nor given a gradient. With both trainable, B's gradient matches too and A's is
    /// unchanged. Small attention blocks and score chunks make runs of different prefixes share a chunk.
    /// </summary>
    [Theory]
    [InlineData(BlasBackend.Managed)]
    [InlineData(BlasBackend.OpenBlas)]
    public void ComposedBatchMatchesPyTorch(BlasBackend backend)
    {
        if (!Blas.TryUse(backend)) Assert.Skip($"{backend} is not installed here.");
        try { CheckComposed(); }
        finally { Blas.TryUse(BlasBackend.Managed); }
    }

    void CheckComposed()
    {
        string dir = Goldens.Path("backprop", "composed");
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "case.json")));
        var root = doc.RootElement;
        var model = ModelLoader.Load(Goldens.Path("backprop", root.GetProperty("model").GetString()!));
        var c = model.Config;
        Assert.NotNull(model.Weights.Layers[0].Bo);
        KvPrefix Part(string n, int p) => new(c.Layers, c.KvHeads, c.HeadDim, p,
            Split(Goldens.ReadF32(Path.Combine(dir, $"prefix_{n}_k.f32")), c.Layers), Split(Goldens.ReadF32(Path.Combine(dir, $"prefix_{n}_v.f32")), c.Layers));
        var lengths = root.GetProperty("prefix_lengths");
        var parts = new Dictionary<string, KvPrefix> { ["a"] = Part("a", lengths.GetProperty("a").GetInt32()), ["b"] = Part("b", lengths.GetProperty("b").GetInt32()) };
        var (a, b) = (parts["a"], parts["b"]);

        var batch = new List<TrainingSequence>(); var prefixes = new List<ComposedPrefix>();
        foreach (var s in root.GetProperty("sequences").EnumerateArray())
        {
            int[] Ints(string n) => s.GetProperty(n).EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var lps = s.GetProperty("log_probs").EnumerateArray().Select(e => (float)e.GetDouble()).ToArray();
            batch.Add(new TrainingSequence(Ints("tokens"), new SparseTargets(Ints("offsets"), Ints("ids"), lps)));
            prefixes.Add(new ComposedPrefix(s.GetProperty("prefix").EnumerateArray().Select(e => parts[e.GetString()!]).ToArray()));
        }
        Assert.Equal([5, 8, 8], prefixes.Select(p => p.Length));

        var bk = b.Keys.Select(x => (float[])x.Clone()).ToArray(); var bv = b.Values.Select(x => (float[])x.Clone()).ToArray();
        var bp = new CartridgeBackprop(model, maxTokens: 32) { AttentionBlockRows = 6, ScoreBufferFloats = 300 };
        var gradA = new KvGradient(a);
        float loss = bp.LossAndGradient(prefixes, batch, [gradA]);
        double refLoss = root.GetProperty("loss").GetDouble();
        Assert.Equal(root.GetProperty("target_positions").GetInt32(), bp.LastTargetPositions);
        Assert.True(Math.Abs(loss - refLoss) <= 1e-4 * Math.Abs(refLoss), $"composed: loss {loss} vs PyTorch {refLoss}");
        AssertGradient("A (B frozen)", gradA, dir, "a", c.Layers);
        for (int l = 0; l < c.Layers; l++) { Assert.Equal(bk[l], b.Keys[l]); Assert.Equal(bv[l], b.Values[l]); }

        var gradA2 = new KvGradient(a); var gradB = new KvGradient(b);
        float loss2 = bp.LossAndGradient(prefixes, batch, [gradB, gradA2]);
        Assert.Equal(loss, loss2);
        AssertGradient("B", gradB, dir, "b", c.Layers);
        for (int l = 0; l < c.Layers; l++) { Assert.Equal(gradA.Keys[l], gradA2.Keys[l]); Assert.Equal(gradA.Values[l], gradA2.Values[l]); }
    }

    void AssertGradient(string what, KvGradient grad, string dir, string name, int layers)
    {
        var gk = Split(Goldens.ReadF64(Path.Combine(dir, $"grad_{name}_k.f64")), layers);
        var gv = Split(Goldens.ReadF64(Path.Combine(dir, $"grad_{name}_v.f64")), layers);
        for (int l = 0; l < layers; l++)
            foreach (var (kv, ours, theirs) in new[] { ("K", grad.Keys[l], gk[l]), ("V", grad.Values[l], gv[l]) })
            {
                double maxRef = theirs.Max(Math.Abs), maxErr = 0;
                for (int i = 0; i < theirs.Length; i++) maxErr = Math.Max(maxErr, Math.Abs(ours[i] - theirs[i]));
                output.WriteLine($"composed {what} layer {l} d{kv}: max|ref| {maxRef:E3} max err {maxErr:E3}");
                Assert.True(maxRef > 1e-6, "the reference gradient is ~0; the golden would be vacuous");
                Assert.True(maxErr <= 1e-3 * maxRef, $"composed {what} layer {l} d{kv}: max error {maxErr:E3} > 1e-3 × {maxRef:E3}");
            }
    }

    static T[][] Split<T>(T[] all, int layers)
    {
        int n = all.Length / layers;
        return Enumerable.Range(0, layers).Select(l => all.AsSpan(l * n, n).ToArray()).ToArray();
    }
}
