using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Engine.Tests.Engine;

/// <summary>
/// <see cref="Transformer.MeanHiddenState"/>: the mean over positions of RMSNorm_final(x_t), the vector the LM head
/// reads. Reference: the LM head is linear, so W_head · mean_t(h_t) = mean_t(W_head · h_t) = the mean of the logits
/// <see cref="Transformer.ForwardAll"/> computes. The tiny models' head is [61, 32] with random entries (full column
/// rank), so equal images mean equal vectors: this checks every component, not a projection of them.
/// </summary>
public class MeanHiddenStateTests
{
    [Theory]
    [InlineData(Architecture.Llama, RopeStyle.Halves)]
    [InlineData(Architecture.Qwen2, RopeStyle.Halves)]
    [InlineData(Architecture.Qwen3, RopeStyle.Interleaved)]
    public void HeadOfTheMeanIsTheMeanOfTheLogits(Architecture arch, RopeStyle rope)
    {
        var m = TinyModels.Create(arch, rope);
        var c = m.Config;
        foreach (int n in new[] { 1, 40 })
        {
            var tokens = TinyModels.Tokens(n, c.VocabSize, 5 + n);
            var logits = new float[n * c.VocabSize];
            new Transformer(m).ForwardAll(new KvCache(c, n), tokens, logits);
            var meanLogits = new double[c.VocabSize];
            for (int t = 0; t < n; t++)
                for (int v = 0; v < c.VocabSize; v++) meanLogits[v] += logits[t * c.VocabSize + v] / (double)n;

            // Chunks of 7 rows: the sum is accumulated over several passes of the chunk loop.
            var mean = new float[c.Dim];
            new Transformer(m, maxChunkTokens: 7).MeanHiddenState(tokens, mean);
            var head = new float[c.VocabSize];
            Ops.Linear(mean, 1, m.Weights.LmHead, c.VocabSize, c.Dim, head);
            // fp32 sums of 32 products and of n logits: 1e-4 relative (the logits are O(1)).
            for (int v = 0; v < c.VocabSize; v++)
                Assert.True(Math.Abs(head[v] - meanLogits[v]) <= 1e-4 * (1 + Math.Abs(meanLogits[v])), $"{arch} n={n} v={v}: {head[v]} vs {meanLogits[v]}");

            // The same vector whatever the chunking (one pass of 256 rows vs passes of 7).
            var whole = new float[c.Dim];
            new Transformer(m).MeanHiddenState(tokens, whole);
            for (int d = 0; d < c.Dim; d++) Assert.True(Math.Abs(whole[d] - mean[d]) <= 1e-5f * (1 + Math.Abs(whole[d])), $"chunked d={d}: {mean[d]} vs {whole[d]}");
        }
    }

    /// <summary>Embedding a text between two steps of a decode changes neither the caller's cache nor what it decodes next.</summary>
    [Fact]
    public void LeavesNoKvStateBehind()
    {
        var m = TinyModels.Create();
        var c = m.Config;
        var first = TinyModels.Tokens(10, c.VocabSize, 1); var next = TinyModels.Tokens(5, c.VocabSize, 2);

        var plain = new Transformer(m); var plainCache = new KvCache(c, 15);
        var expect = new float[c.VocabSize];
        plain.Forward([plainCache], [first], default);
        plain.Forward([plainCache], [next], expect);

        var t = new Transformer(m); var cache = new KvCache(c, 15);
        t.Forward([cache], [first], default);
        var keys = cache.Keys.Select(k => (float[])k.Clone()).ToArray();
        t.MeanHiddenState(TinyModels.Tokens(30, c.VocabSize, 3), new float[c.Dim]);
        Assert.Equal(10, cache.Length);
        for (int l = 0; l < c.Layers; l++) Assert.Equal(keys[l], cache.Keys[l]);
        var actual = new float[c.VocabSize];
        t.Forward([cache], [next], actual);
        Assert.Equal(15, cache.Length);
        Assert.Equal(expect, actual); // same arithmetic in the same order: bit-identical
    }

    [Fact]
    public void RejectsEmptyAndTooLongInput()
    {
        var m = TinyModels.Create(maxSeq: 16);
        var t = new Transformer(m);
        Assert.Throws<InvalidRequestException>(() => t.MeanHiddenState([], new float[m.Config.Dim]));
        Assert.Throws<InvalidRequestException>(() => t.MeanHiddenState(new int[17], new float[m.Config.Dim]));
        Assert.Throws<ArgumentException>(() => t.MeanHiddenState([1], new float[m.Config.Dim + 1]));
    }
}
