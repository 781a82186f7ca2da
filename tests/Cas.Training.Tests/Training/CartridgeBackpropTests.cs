using Cas.Engine;
using Cas.Engine.Models;
using Cas.Training.Evaluation;

namespace Cas.Training.Tests.Training;

public class CartridgeBackpropTests
{
    /// <summary>
    /// The training forward agrees with the engine's inference forward: logits from Transformer.ForwardAll over a
    /// KvCache holding the cartridge, scored with DistillationLoss, give the same mean loss (float32, 1e-5 relative).
    /// The attention-bias cases (Llama/Qwen3 with attention_bias = true: q/k/v and o_proj biases) guard against the
    /// training forward dropping a weight that generation uses.
    /// </summary>
    [Theory]
    [InlineData(Architecture.Llama, RopeStyle.Halves, false)]
    [InlineData(Architecture.Qwen2, RopeStyle.Interleaved, false)]
    [InlineData(Architecture.Qwen3, RopeStyle.Halves, false)]
    [InlineData(Architecture.Llama, RopeStyle.Halves, true)]
    [InlineData(Architecture.Qwen3, RopeStyle.Halves, true)]
    public void LossEqualsEngineForward(Architecture arch, RopeStyle rope, bool attentionBias)
    {
        var m = Tiny.Create(arch, rope, attentionBias: attentionBias);
        Assert.Equal(attentionBias, m.Weights.Layers[0].Bo != null);
        var c = m.Config;
        var prefix = Tiny.Prefix(c, 6, seed: 2);
        var batch = Tiny.Batch(c, seed: 9, k: 3, 10, 3, 17);

        double sum = 0; int n = 0;
        var t = new Transformer(m);
        foreach (var s in batch)
        {
            var cache = new KvCache(c, prefix.Length + s.Tokens.Length, prefix);
            var logits = new float[s.Tokens.Length * c.VocabSize];
            t.ForwardAll(cache, s.Tokens, logits);
            for (int i = 0; i < s.Tokens.Length; i++)
                if (s.Targets.HasTarget(i))
                {
                    sum += DistillationLoss.Compute(logits.AsSpan(i * c.VocabSize, c.VocabSize), s.Targets.IdsAt(i), s.Targets.LogProbsAt(i), default);
                    n++;
                }
        }
        double expect = sum / n;

        var train = new CartridgeBackprop(m, maxTokens: 64) { AttentionBlockRows = 8, ScoreBufferFloats = 500 };
        var (dK, dV) = Tiny.GradBuffers(prefix);
        float withGrad = train.LossAndGradient(prefix, batch, dK, dV);
        float trainLoss = train.Loss(prefix, batch);
        float evalLoss = new CartridgeBackprop(m, maxTokens: 4, training: false).Loss(prefix, batch);
        Assert.Equal(n, train.LastTargetPositions);
        foreach (var (what, v) in new[] { ("LossAndGradient", withGrad), ("Loss", trainLoss), ("loss-only instance", evalLoss) })
            Assert.True(Math.Abs(v - expect) <= 1e-5 * Math.Abs(expect), $"{what}: {v} vs engine {expect}");
    }

    /// <summary>
    /// A batch whose sequences sit behind different composed prefixes ([A], [B, A], [A, B], [] — references, no copy)
    /// gives the same loss as the engine's generation path over caches holding <see cref="KvPrefix.Concat"/> of the
    /// same parts (float32, 1e-5 relative); A's gradient from the batch equals the sum of the gradients of the
    /// sequences computed one by one, and a frozen B is left untouched.
    /// </summary>
    [Theory]
    [InlineData(Architecture.Llama, true)]
    [InlineData(Architecture.Qwen3, false)]
    public void ComposedPrefixesEqualConcatenatedCaches(Architecture arch, bool attentionBias)
    {
        var m = Tiny.Create(arch, RopeStyle.Halves, attentionBias: attentionBias);
        var c = m.Config;
        var a = Tiny.Prefix(c, 6, seed: 3); var b = Tiny.Prefix(c, 4, seed: 5);
        var batch = Tiny.Batch(c, seed: 11, k: 3, 9, 12, 7, 5);
        ComposedPrefix[] prefixes = [ComposedPrefix.Of(a), ComposedPrefix.Of(b, a), ComposedPrefix.Of(a, b), ComposedPrefix.Empty];

        double sum = 0; int n = 0;
        var t = new Transformer(m);
        for (int s = 0; s < batch.Length; s++)
        {
            var parts = prefixes[s].Parts;
            var cache = new KvCache(c, prefixes[s].Length + batch[s].Tokens.Length, parts.Count == 0 ? null : KvPrefix.Concat(parts));
            var logits = new float[batch[s].Tokens.Length * c.VocabSize];
            t.ForwardAll(cache, batch[s].Tokens, logits);
            for (int i = 0; i < batch[s].Tokens.Length; i++)
                if (batch[s].Targets.HasTarget(i))
                {
                    sum += DistillationLoss.Compute(logits.AsSpan(i * c.VocabSize, c.VocabSize), batch[s].Targets.IdsAt(i), batch[s].Targets.LogProbsAt(i), default);
                    n++;
                }
        }

        var bBefore = b.Keys.Concat(b.Values).Select(x => (float[])x.Clone()).ToArray();
        var bp = new CartridgeBackprop(m, maxTokens: 40) { AttentionBlockRows = 8, ScoreBufferFloats = 400 };
        var whole = new KvGradient(a);
        float loss = bp.LossAndGradient(prefixes, batch, [whole]);
        Assert.True(Math.Abs(loss - sum / n) <= 1e-5 * Math.Abs(sum / n), $"composed batch loss {loss} vs engine {sum / n}");
        float lossOnly = new CartridgeBackprop(m, maxTokens: 8, training: false).Loss(prefixes, batch);
        Assert.True(Math.Abs(lossOnly - sum / n) <= 1e-5 * Math.Abs(sum / n), $"loss-only {lossOnly} vs engine {sum / n}");
        Assert.Equal(bBefore, b.Keys.Concat(b.Values).ToArray());

        var oneByOne = new KvGradient(a);
        for (int s = 0; s < batch.Length; s++)
            bp.LossAndGradient([prefixes[s]], [batch[s]], [oneByOne], accumulate: true, divisor: n);
        for (int l = 0; l < c.Layers; l++)
            foreach (var (x, y) in new[] { (whole.Keys[l], oneByOne.Keys[l]), (whole.Values[l], oneByOne.Values[l]) })
            {
                float max = x.Max(Math.Abs);
                Assert.True(max > 0);
                for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-5f * max, $"layer {l} [{i}]: {x[i]} vs {y[i]}");
            }
    }

    /// <summary>
    /// <see cref="Placement.Aligned"/> (tokens start at max p_i instead of Σp_i) is, by RoPE's relative positions, the
    /// concatenation with every key rotated δ = Σp_i − max p_i positions further: the same loss (1e-5 relative), and the
    /// gradient of a part's keys is that of the rotated copy rotated back by −δ (values' gradients equal), 1e-5 of the max.
    /// </summary>
    [Theory]
    [InlineData(Architecture.Llama, RopeStyle.Halves)]
    [InlineData(Architecture.Qwen3, RopeStyle.Interleaved)]
    public void AlignedPlacementEqualsRotatedConcatenation(Architecture arch, RopeStyle rope)
    {
        var m = Tiny.Create(arch, rope);
        var c = m.Config;
        var a = Tiny.Prefix(c, 6, seed: 3); var b = Tiny.Prefix(c, 4, seed: 5);
        int delta = a.Length + b.Length - Math.Max(a.Length, b.Length);
        var a2 = PrefixComposition.Rotate(c, a, delta); var b2 = PrefixComposition.Rotate(c, b, delta);
        var batch = Tiny.Batch(c, seed: 11, k: 3, 9, 12);
        var bp = new CartridgeBackprop(m, maxTokens: 40) { AttentionBlockRows = 8, ScoreBufferFloats = 400 };
        var ga = new KvGradient(a);
        float aligned = bp.LossAndGradient([new ComposedPrefix([b, a], Placement.Aligned), new ComposedPrefix([a, b], Placement.Aligned)], batch, [ga]);
        var ga2 = new KvGradient(a2);
        float rotated = bp.LossAndGradient([ComposedPrefix.Of(b2, a2), ComposedPrefix.Of(a2, b2)], batch, [ga2]);
        Assert.True(Math.Abs(aligned - rotated) <= 1e-5 * Math.Abs(rotated), $"aligned loss {aligned} vs rotated concatenation {rotated}");
        float concat = bp.Loss([ComposedPrefix.Of(b, a), ComposedPrefix.Of(a, b)], batch);
        Assert.True(Math.Abs(aligned - concat) > 1e-4 * Math.Abs(concat), "placement must change the loss (the test would prove nothing otherwise)");
        var back = PrefixComposition.Rotate(c, new KvPrefix(c.Layers, c.KvHeads, c.HeadDim, a.Length, ga2.Keys, ga2.Values), -delta);
        for (int l = 0; l < c.Layers; l++)
            foreach (var (x, y) in new[] { (ga.Keys[l], back.Keys[l]), (ga.Values[l], back.Values[l]) })
            {
                float max = x.Max(Math.Abs);
                Assert.True(max > 0);
                for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-5f * max, $"layer {l} [{i}]: {x[i]} vs {y[i]}");
            }
    }

    /// <summary>
    /// Micro-batches: gradients of two halves accumulated with the total divisor equal the gradient of the whole
    /// batch (1e-5 of the max-abs gradient), and the losses add up. Also checks that accumulate: false overwrites.
    /// </summary>
    [Fact]
    public void AccumulatedMicroBatchesEqualTheWholeBatch()
    {
        var m = Tiny.Create(Architecture.Qwen2, RopeStyle.Halves);
        var c = m.Config;
        var prefix = Tiny.Prefix(c, 5, seed: 4);
        var batch = Tiny.Batch(c, seed: 3, k: 4, 8, 5, 11, 6);
        var bp = new CartridgeBackprop(m, maxTokens: 32);

        var (wk, wv) = Tiny.GradBuffers(prefix);
        float whole = bp.LossAndGradient(prefix, batch, wk, wv);
        int total = bp.LastTargetPositions;

        var (ak, av) = Tiny.GradBuffers(prefix);
        foreach (var g in ak.Concat(av)) Array.Fill(g, 123f); // must be overwritten by the first call
        float a = bp.LossAndGradient(prefix, batch[..2], ak, av, accumulate: false, divisor: total);
        float b = bp.LossAndGradient(prefix, batch[2..], ak, av, accumulate: true, divisor: total);
        Assert.True(Math.Abs(a + b - whole) <= 1e-5 * Math.Abs(whole), $"{a} + {b} vs {whole}");
        for (int l = 0; l < c.Layers; l++)
            foreach (var (x, y) in new[] { (wk[l], ak[l]), (wv[l], av[l]) })
            {
                float max = x.Max(Math.Abs);
                Assert.True(max > 0);
                for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - y[i]) <= 1e-5f * max, $"layer {l} [{i}]: {x[i]} vs {y[i]}");
            }
    }

    /// <summary>Packed sequences do not see each other: the batch's loss sum is the sum of each sequence's alone.</summary>
    [Fact]
    public void PackedSequencesAreIndependent()
    {
        var m = Tiny.Create(Architecture.Llama, RopeStyle.Halves, kvHeads: 1);
        var prefix = Tiny.Prefix(m.Config, 4, seed: 8);
        var batch = Tiny.Batch(m.Config, seed: 6, k: 2, 12, 7, 9);
        var bp = new CartridgeBackprop(m, 64, training: false);
        bp.Loss(prefix, batch);
        double together = bp.LastLossSum, alone = 0;
        foreach (var s in batch) { bp.Loss(prefix, [s]); alone += bp.LastLossSum; }
        Assert.True(Math.Abs(together - alone) <= 1e-5 * Math.Abs(alone), $"{together} vs {alone}");
    }

    /// <summary>A few plain SGD steps on the prefix with our gradient lower the loss on a fixed batch, every step.</summary>
    [Theory]
    [InlineData(Architecture.Llama)]
    [InlineData(Architecture.Qwen3)]
    public void GradientDescentLowersTheLoss(Architecture arch)
    {
        var m = Tiny.Create(arch, RopeStyle.Halves);
        var c = m.Config;
        var prefix = Tiny.Prefix(c, 8, seed: 1);
        var batch = Tiny.Batch(c, seed: 2, k: 5, 14, 9);
        var bp = new CartridgeBackprop(m, 32);
        var (dK, dV) = Tiny.GradBuffers(prefix);
        float first = bp.LossAndGradient(prefix, batch, dK, dV), last = first;
        for (int step = 0; step < 6; step++)
        {
            for (int l = 0; l < c.Layers; l++)
                for (int i = 0; i < dK[l].Length; i++) { prefix.Keys[l][i] -= 2f * dK[l][i]; prefix.Values[l][i] -= 2f * dV[l][i]; }
            float loss = bp.LossAndGradient(prefix, batch, dK, dV);
            Assert.True(loss < last, $"step {step}: loss went from {last} to {loss}");
            last = loss;
        }
        Assert.True(last < first - 1e-3f, $"loss only moved from {first} to {last}");
    }

    /// <summary>An empty cartridge (p = 0) is plain causal LM training: loss equals the float64 reference.</summary>
    [Fact]
    public void EmptyPrefixWorks()
    {
        var m = Tiny.Create(Architecture.Qwen3, RopeStyle.Interleaved);
        var prefix = KvPrefix.Zeros(m.Config, 0);
        var batch = Tiny.Batch(m.Config, seed: 4, k: 3, 6, 10);
        var (dK, dV) = Tiny.GradBuffers(prefix);
        float loss = new CartridgeBackprop(m, 16) { AttentionBlockRows = 4 }.LossAndGradient(prefix, batch, dK, dV);
        double expect = Reference64.Loss(m, Tiny.ToDouble(prefix.Keys), Tiny.ToDouble(prefix.Values), 0, batch);
        Assert.True(Math.Abs(loss - expect) <= 1e-4 * expect, $"{loss} vs {expect}");
    }

    [Fact]
    public void BadInputsAreRejectedWithClearErrors()
    {
        var m = Tiny.Create(Architecture.Llama, RopeStyle.Halves);
        var c = m.Config;
        var prefix = Tiny.Prefix(c, 4, seed: 1);
        var bp = new CartridgeBackprop(m, 16);
        var (dK, dV) = Tiny.GradBuffers(prefix);

        var e = Assert.Throws<InvalidRequestException>(() => bp.Loss(prefix, [TrainingSequence.NextToken([1, 2, c.VocabSize])]));
        Assert.Contains("vocabulary", e.Message);
        var far = new TrainingSequence([1, 2], new SparseTargets([0, 1, 1], [c.VocabSize + 5], [0f]));
        Assert.Contains("target token id", Assert.Throws<InvalidRequestException>(() => bp.Loss(prefix, [far])).Message);
        var tooLong = TrainingSequence.NextToken(new int[c.MaxSeqLen - 3]);
        Assert.Contains("context", Assert.Throws<InvalidRequestException>(() => bp.Loss(prefix, [tooLong])).Message);
        var otherShape = KvPrefix.Zeros(c with { KvHeads = 4 }, 4);
        Assert.Contains("does not match the model", Assert.Throws<InvalidRequestException>(() => bp.Loss(otherShape, [TrainingSequence.NextToken([1, 2])])).Message);
        var (smallK, smallV) = Tiny.GradBuffers(KvPrefix.Zeros(c, 3));
        Assert.Throws<ArgumentException>(() => bp.LossAndGradient(prefix, [TrainingSequence.NextToken([1, 2])], smallK, smallV));
        Assert.Throws<InvalidOperationException>(() => new CartridgeBackprop(m, 4, training: false).LossAndGradient(prefix, [TrainingSequence.NextToken([1, 2])], dK, dV));
    }

    /// <summary>A batch without any target has loss 0 and (when not accumulating) a zero gradient.</summary>
    [Fact]
    public void NoTargetsGiveZero()
    {
        var m = Tiny.Create(Architecture.Llama, RopeStyle.Halves);
        var prefix = Tiny.Prefix(m.Config, 4, seed: 1);
        var (dK, dV) = Tiny.GradBuffers(prefix);
        Array.Fill(dK[0], 1f);
        var seq = new TrainingSequence([3, 4, 5], SparseTargets.None(3));
        Assert.Equal(0f, new CartridgeBackprop(m, 8).LossAndGradient(prefix, [seq], dK, dV));
        Assert.All(dK[0], v => Assert.Equal(0f, v));
    }

    /// <summary>
    /// The planning estimate covers the per-token buffers exactly: what an instance holds beyond it is the LM head block
    /// and the attention score chunks (bounded by rows·group × (p + T) floats each, two of them).
    /// </summary>
    [Fact]
    public void MemoryEstimateMatchesTheBuffers()
    {
        var m = Tiny.Create(Architecture.Qwen3, RopeStyle.Halves);
        var c = m.Config;
        var bp = new CartridgeBackprop(m, maxTokens: 40, lmHeadRows: 16);
        var prefix = Tiny.Prefix(c, 6, seed: 1);
        var (dK, dV) = Tiny.GradBuffers(prefix);
        bp.LossAndGradient(prefix, Tiny.Batch(c, seed: 1, k: 2, 20, 20), dK, dV);
        Assert.Equal(40, bp.MaxTokens);
        long extra = bp.AllocatedBytes - CartridgeBackprop.ActivationBytes(c, 40) - 4L * 16 * (c.VocabSize + 2 * c.Dim + 2);
        int group = c.Heads / c.KvHeads;
        Assert.InRange(extra, 1, 2 * 4L * 40 * group * (6 + 20));
    }

    /// <summary>The benchmark entry point runs on a small shape and reports self-consistent figures.</summary>
    [Fact]
    public void BenchmarkReportsConsistentFigures()
    {
        var r = TrainingBenchmark.Run(Tiny.Config(Architecture.Llama, RopeStyle.Halves) with { MaxSeqLen = 256 },
            prefixLength: 16, sequences: 2, sequenceLength: 24, topK: 4, steps: 2);
        Assert.True(r.SecondsPerStep > 0 && r.SecondsPerStep <= r.MedianSecondsPerStep);
        Assert.Equal(r.GFlopPerStep / r.SecondsPerStep, r.GFlops, 6);
        Assert.Equal(48 / r.SecondsPerStep, r.TokensPerSecond, 6);
        Assert.True(float.IsFinite(r.Loss) && r.Loss > 0);
        // StepFlops counts the LM head on all 48 target positions, forward and backward.
        var c = Tiny.Config(Architecture.Llama, RopeStyle.Halves);
        double withHead = CartridgeBackprop.StepFlops(c, 16, [24, 24], 48), noHead = CartridgeBackprop.StepFlops(c, 16, [24, 24], 0);
        Assert.Equal(4.0 * 48 * c.Dim * c.VocabSize, withHead - noHead, 6);
    }
}
