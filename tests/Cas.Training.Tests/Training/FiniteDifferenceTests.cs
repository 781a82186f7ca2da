using Cas.Engine;
using Cas.Engine.Models;

namespace Cas.Training.Tests.Training;

/// <summary>
/// The float32 analytic gradient against central finite differences of an independent float64 forward,
/// over EVERY prefix K and V entry of every layer.
/// </summary>
public class FiniteDifferenceTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(Architecture.Llama, RopeStyle.Halves, 2, 5)]
    [InlineData(Architecture.Llama, RopeStyle.Interleaved, 1, 6)] // MQA: 4 query heads share one KV head
    [InlineData(Architecture.Qwen2, RopeStyle.Halves, 2, 4)]
    [InlineData(Architecture.Qwen2, RopeStyle.Interleaved, 4, 3)] // no grouping
    [InlineData(Architecture.Qwen3, RopeStyle.Halves, 2, 5)]
    [InlineData(Architecture.Qwen3, RopeStyle.Interleaved, 1, 7)]
    public void GradientMatchesFloat64FiniteDifferences(Architecture arch, RopeStyle rope, int kvHeads, int p)
    {
        var m = Tiny.Create(arch, rope, kvHeads);
        var c = m.Config;
        var prefix = Tiny.Prefix(c, p, seed: 11);
        var batch = Tiny.Batch(c, seed: 5, k: 4, 9, 4, 6);
        // Small attention units so sequences span several causal blocks, a small score buffer so a batch needs several
        // chunks, and maxTokens below the batch so the buffers grow.
        var bp = new CartridgeBackprop(m, maxTokens: 8) { AttentionBlockRows = 8, ScoreBufferFloats = 160 };
        var (dK, dV) = Tiny.GradBuffers(prefix);
        float loss32 = bp.LossAndGradient(prefix, batch, dK, dV);

        var pk = Tiny.ToDouble(prefix.Keys); var pv = Tiny.ToDouble(prefix.Values);
        double loss64 = Reference64.Loss(m, pk, pv, p, batch);
        // (a) float32 loss vs float64 loss: 1e-4 relative.
        Assert.True(Math.Abs(loss32 - loss64) <= 1e-4 * Math.Abs(loss64), $"loss {loss32} vs float64 {loss64}");

        // (b) every gradient entry vs central differences (h = 1e-4 in float64):
        //     per tensor, max |analytic − fd| ≤ 1e-3 · max |fd|.
        const double h = 1e-4;
        double worst = 0;
        for (int l = 0; l < c.Layers; l++)
            foreach (var (name, param, grad) in new[] { ("K", pk, dK), ("V", pv, dV) })
            {
                var fd = new double[param[l].Length];
                for (int i = 0; i < fd.Length; i++)
                {
                    double keep = param[l][i];
                    param[l][i] = keep + h; double up = Reference64.Loss(m, pk, pv, p, batch);
                    param[l][i] = keep - h; double down = Reference64.Loss(m, pk, pv, p, batch);
                    param[l][i] = keep;
                    fd[i] = (up - down) / (2 * h);
                }
                double maxRef = fd.Max(Math.Abs), maxErr = 0;
                for (int i = 0; i < fd.Length; i++) maxErr = Math.Max(maxErr, Math.Abs(grad[l][i] - fd[i]));
                output.WriteLine($"layer {l} d{name}: max|fd| {maxRef:E3}, max err {maxErr:E3} ({maxErr / maxRef:E2} relative)");
                Assert.True(maxRef > 1e-6, $"layer {l} d{name}: the reference gradient is ~0, the test would be vacuous");
                Assert.True(maxErr <= 1e-3 * maxRef, $"layer {l} d{name}: max error {maxErr:E3} > 1e-3 × {maxRef:E3}");
                worst = Math.Max(worst, maxErr / maxRef);
            }
        output.WriteLine($"loss32 {loss32} loss64 {loss64}; worst relative gradient error {worst:E2}");
    }
}
