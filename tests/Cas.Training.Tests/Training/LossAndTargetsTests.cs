using Cas.Engine;

namespace Cas.Training.Tests.Training;

public class LossAndTargetsTests
{
    static float[] RandomLogits(int n, int seed, float scale)
    {
        var r = new Random(seed); var z = new float[n];
        for (int i = 0; i < n; i++) z[i] = (float)(r.NextDouble() * 2 - 1) * scale;
        return z;
    }

    static double LossF64(float[] z, int[] ids, float[] lps)
    {
        double max = z.Max(), s = 0;
        foreach (var v in z) s += Math.Exp(v - max);
        double logZ = max + Math.Log(s), loss = 0;
        for (int j = 0; j < ids.Length; j++) loss -= Math.Exp(lps[j]) * (z[ids[j]] - logZ);
        return loss;
    }

    /// <summary>Loss vs a float64 formula (1e-5 relative) and gradient vs float64 central differences (1e-4 absolute).</summary>
    [Theory]
    [InlineData(50, 1f)]
    [InlineData(3000, 8f)]
    public void LossAndGradientMatchFloat64(int vocab, float scale)
    {
        var z = RandomLogits(vocab, 1, scale);
        int[] ids = [3, 17, 40, 2]; float[] lps = [-0.3f, -1.9f, -2.5f, -4f]; // kept mass < 1: not renormalised
        var grad = new float[vocab];
        float loss = DistillationLoss.Compute(z, ids, lps, grad);
        double expect = LossF64(z, ids, lps);
        Assert.True(Math.Abs(loss - expect) <= 1e-5 * Math.Abs(expect), $"{loss} vs {expect}");
        float lossOnly = DistillationLoss.Compute(z, ids, lps, default); // loss-only path: same value to 1e-6 relative
        Assert.True(Math.Abs(lossOnly - loss) <= 1e-6 * Math.Abs(loss), $"{lossOnly} vs {loss}");
        const float h = 1e-2f;
        foreach (int i in new[] { 0, 3, 17, 40, 2, vocab - 1, vocab / 2 })
        {
            float keep = z[i];
            z[i] = keep + h; double up = LossF64(z, ids, lps);
            z[i] = keep - h; double down = LossF64(z, ids, lps);
            z[i] = keep;
            Assert.True(Math.Abs(grad[i] - (up - down) / (2 * h)) <= 1e-4, $"d/dz[{i}]: {grad[i]} vs {(up - down) / (2 * h)}");
        }
        // Σ dL/dz = Σp − Σp = 0.
        Assert.True(Math.Abs(grad.Sum()) <= 1e-5);
    }

    /// <summary>dLogits may alias logits; gradScale scales the gradient only.</summary>
    [Fact]
    public void InPlaceAndScaledGradient()
    {
        var z = RandomLogits(100, 2, 3f);
        int[] ids = [5, 9]; float[] lps = [-0.1f, -2.6f];
        var g = new float[100];
        float loss = DistillationLoss.Compute(z, ids, lps, g);
        var inPlace = (float[])z.Clone();
        float loss2 = DistillationLoss.Compute(inPlace, ids, lps, inPlace, gradScale: 0.25f);
        Assert.Equal(loss, loss2);
        for (int i = 0; i < 100; i++) Assert.Equal(0.25f * g[i], inPlace[i], 6);
    }

    /// <summary>Huge logits do not overflow; next-token targets (log-prob 0) give the ordinary cross-entropy.</summary>
    [Fact]
    public void StableForLargeLogits()
    {
        float[] z = [30000f, 29990f, -5000f];
        float loss = DistillationLoss.Compute(z, [1], [0f], new float[3]);
        double expect = -(29990.0 - (30000.0 + Math.Log(1 + Math.Exp(-10))));
        Assert.Equal(expect, loss, 4);
    }

    [Fact]
    public void NextTokenTargetsPointAtTheFollowingToken()
    {
        int[] tokens = [10, 11, 12, 13, 14];
        var all = SparseTargets.NextToken(tokens);
        Assert.Equal(5, all.Length);
        Assert.Equal(4, all.TargetPositions);
        for (int t = 0; t < 4; t++) { Assert.Equal([tokens[t + 1]], all.IdsAt(t).ToArray()); Assert.Equal([0f], all.LogProbsAt(t).ToArray()); }
        Assert.False(all.HasTarget(4));

        var part = SparseTargets.NextToken(tokens, start: 1, end: 3);
        Assert.Equal([false, true, true, false, false], Enumerable.Range(0, 5).Select(part.HasTarget).ToArray());
        Assert.Equal(12, part.IdsAt(1)[0]);
        Assert.Equal(13, part.IdsAt(2)[0]);
    }

    [Fact]
    public void BuilderLeavesSkippedPositionsMasked()
    {
        var t = new SparseTargets.Builder(6).Add(1, [4, 5], [-0.5f, -1f]).Add(4, [7], [-0.1f]).Build();
        Assert.Equal([0, 0, 2, 2, 2, 3, 3], t.Offsets);
        Assert.Equal(2, t.TargetPositions);
        Assert.Equal([4, 5], t.IdsAt(1).ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => new SparseTargets.Builder(3).Add(2, [1], [0f]).Add(1, [1], [0f]));
    }

    [Fact]
    public void MalformedTargetsAreRejected()
    {
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 2], [1], [0f]));          // last offset ≠ entries
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 2, 1], [1, 2], [0f, 0f])); // decreasing
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [1], [0.5f]));         // log-prob > 0
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [1], [float.NaN]));
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [-1], [0f]));
        Assert.Throws<InvalidRequestException>(() => new TrainingSequence([1, 2, 3], SparseTargets.None(2)));
    }
}
