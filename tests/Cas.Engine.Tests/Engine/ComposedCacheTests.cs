using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Engine.Tests.Engine;

/// <summary>
/// Inference over a <see cref="ComposedPrefix"/> held by reference (<see cref="KvCache.Referenced"/>) against the same
/// cartridges copied into the cache with <see cref="KvPrefix.Concat"/>: same logits within 1e-4·(1 + |x|) (float32
/// sums split per part instead of over one contiguous prefix), the same greedy tokens, through every attention path
/// (prefill SGEMMs, chunked prefill, the grouped decode kernel with a part split into key blocks), and no copy of the
/// cartridges in the cache.
/// </summary>
public class ComposedCacheTests
{
    const float Tol = 1e-4f;

    internal static KvPrefix RandomPrefix(ModelConfig c, int length, int seed)
    {
        var r = new Random(seed);
        var p = KvPrefix.Zeros(c, length);
        for (int l = 0; l < c.Layers; l++)
            for (int i = 0; i < p.Keys[l].Length; i++) { p.Keys[l][i] = (float)(r.NextDouble() * 4 - 2); p.Values[l][i] = (float)(r.NextDouble() * 2 - 1); }
        return p;
    }

    static void Close(ReadOnlySpan<float> expect, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expect.Length, actual.Length);
        for (int i = 0; i < expect.Length; i++)
            Assert.True(Math.Abs(expect[i] - actual[i]) <= Tol * (1 + Math.Abs(expect[i])), $"{what}: index {i}: {expect[i]} vs {actual[i]}");
    }

    static int Argmax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }

    /// <summary>
    /// <see cref="Placement.Aligned"/>: the tokens start at position max p_i although they follow all Σp_i slots; by
    /// RoPE's relative positions that equals the concatenated copy with every key rotated δ = Σp_i − max p_i positions
    /// further (rotated here with the engine's <see cref="Rope"/>): same logits for a prompt and 8 greedy steps.
    /// </summary>
    [Fact]
    public void AlignedPlacementEqualsRotatedCopy()
    {
        var m = TinyModels.Create(maxSeq: 256);
        var c = m.Config;
        var t = new Transformer(m, 256);
        KvPrefix[] parts = [RandomPrefix(c, 5, 1), RandomPrefix(c, 30, 2), RandomPrefix(c, 17, 3)];
        var aligned = new ComposedPrefix(parts, Placement.Aligned);
        Assert.Equal((52, 30), (aligned.Length, aligned.Positions));
        int delta = aligned.Length - aligned.Positions, half = c.HeadDim / 2;
        var rotated = KvPrefix.Concat(parts);
        var rope = new Rope(c);
        var cos = new float[half]; var sin = new float[half];
        rope.Angles(delta, cos, sin);
        for (int l = 0; l < c.Layers; l++)
            for (int row = 0; row < c.KvHeads * rotated.Length; row++) rope.Rotate(rotated.Keys[l].AsSpan(row * c.HeadDim, c.HeadDim), cos, sin);
        var prompt = TinyModels.Tokens(9, c.VocabSize, 7);
        int capacity = aligned.Length + prompt.Length + 8, v = c.VocabSize;
        var byRef = new KvCache(c, capacity, aligned);
        var copy = new KvCache(c, capacity, rotated);
        var plain = new KvCache(c, capacity, new ComposedPrefix(parts));
        Assert.Equal(delta, byRef.PositionShift);
        var a = new float[v]; var b = new float[v]; var z = new float[v];
        t.Forward([byRef], [prompt], a);
        t.Forward([copy], [prompt], b);
        t.Forward([plain], [prompt], z);
        Close(b, a, "prefill");
        Assert.True(a.Zip(z).Max(p => Math.Abs(p.First - p.Second)) > 1e-3f, "the placement must change the logits (else this test proves nothing)");
        for (int s = 0; s < 8; s++)
        {
            int[] next = [Argmax(b)];
            t.Forward([byRef], [next], a);
            t.Forward([copy], [next], b);
            Close(b, a, $"decode step {s}");
        }
    }

    /// <summary>
    /// Parts of 5, 300 (more than one decode key block), 0 and 17 slots; prompts of 12 tokens (SGEMM prefill), 3 tokens
    /// (decode-kernel prefill) and 40 tokens with 16-row chunks (the second chunk attends to the parts and the first
    /// chunk); then 24 greedy steps with the composed, the copied and a prefix-less sequence in one batch.
    /// </summary>
    [Theory]
    [InlineData(12, 256)]
    [InlineData(3, 256)]
    [InlineData(40, 16)]
    public void ComposedEqualsConcatenatedCopy(int promptLength, int chunk)
    {
        var m = TinyModels.Create(maxSeq: 512);
        var c = m.Config;
        var t = new Transformer(m, chunk);
        KvPrefix[] parts = [RandomPrefix(c, 5, 1), RandomPrefix(c, 300, 2), KvPrefix.Zeros(c, 0), RandomPrefix(c, 17, 3)];
        var composed = new ComposedPrefix(parts);
        int R = composed.Length, steps = 24, capacity = R + promptLength + steps;
        var prompt = TinyModels.Tokens(promptLength, c.VocabSize, 7);
        var other = TinyModels.Tokens(5, c.VocabSize, 8);

        var byRef = new KvCache(c, capacity, composed);
        var copy = new KvCache(c, capacity, KvPrefix.Concat(parts));
        var bare = new KvCache(c, other.Length + steps);
        Assert.Equal(R, byRef.PrefixLength);
        Assert.Equal(R, byRef.Length);

        int v = c.VocabSize;
        var a = new float[v]; var b = new float[v]; var z = new float[v];
        t.Forward([byRef], [prompt], a);
        t.Forward([copy], [prompt], b);
        t.Forward([bare], [other], z);
        Close(b, a, "prefill");

        var logits = new float[3 * v];
        int[] ta = [Argmax(a)], tb = [Argmax(b)], tz = [Argmax(z)];
        for (int s = 0; s < steps - 1; s++)
        {
            Assert.Equal(tb[0], ta[0]);
            t.Forward([byRef, bare, copy], [ta, tz, tb], logits);
            Close(logits.AsSpan(2 * v, v), logits.AsSpan(0, v), $"decode step {s}");
            ta[0] = Argmax(logits.AsSpan(0, v)); tz[0] = Argmax(logits.AsSpan(v, v)); tb[0] = Argmax(logits.AsSpan(2 * v, v));
        }
        Assert.Equal(copy.Length, byRef.Length);
    }

    /// <summary>A decode step's logits do not depend on which other sequences share the step (each attends to its own prefix).</summary>
    [Fact]
    public void SequencesWithDifferentPrefixesShareAStep()
    {
        var m = TinyModels.Create(maxSeq: 128);
        var c = m.Config;
        var t = new Transformer(m);
        var x = RandomPrefix(c, 9, 11); var y = RandomPrefix(c, 13, 12);
        var prompt = TinyModels.Tokens(4, c.VocabSize, 5);
        ComposedPrefix[] prefixes = [ComposedPrefix.Of(x, y), ComposedPrefix.Of(y), ComposedPrefix.Of(y, x)];
        var alone = new float[prefixes.Length][];
        for (int i = 0; i < prefixes.Length; i++)
        {
            var cache = new KvCache(c, 40, prefixes[i]);
            t.Forward([cache], [prompt], new float[c.VocabSize]);
            alone[i] = new float[c.VocabSize];
            t.Forward([cache], [[3]], alone[i]);
        }
        var caches = prefixes.Select(p => new KvCache(c, 40, p)).ToArray();
        t.Forward(caches, [prompt, prompt, prompt], new float[3 * c.VocabSize]);
        var together = new float[3 * c.VocabSize];
        t.Forward(caches, [[3], [3], [3]], together);
        for (int i = 0; i < prefixes.Length; i++) Close(alone[i], together.AsSpan(i * c.VocabSize, c.VocabSize), $"sequence {i}");
        // x·y and y alone differ (so the check above tells prefixes apart). x·y and y·x agree: keys keep the positions
        // they were trained at, so attention sees the same set of slots whatever the order.
        float diff = 0;
        for (int i = 0; i < c.VocabSize; i++) diff = Math.Max(diff, Math.Abs(together[i] - together[c.VocabSize + i]));
        Assert.True(diff > 1e-2f, $"x·y and y alone gave the same logits (max difference {diff})");
        Close(together.AsSpan(0, c.VocabSize), together.AsSpan(2 * c.VocabSize, c.VocabSize), "x·y vs y·x");
    }

    /// <summary>The cache holds only the sequence's own slots; the cartridges are the caller's objects, read and never written.</summary>
    [Fact]
    public void CartridgesAreReferencedNotCopied()
    {
        var m = TinyModels.Create(maxSeq: 128);
        var c = m.Config;
        var t = new Transformer(m);
        var x = RandomPrefix(c, 20, 21); var y = RandomPrefix(c, 30, 22);
        var before = new[] { x, y }.Select(p => p.Keys.Concat(p.Values).Select(a => (float[])a.Clone()).ToArray()).ToArray();
        var composed = ComposedPrefix.Of(x, y);
        var cache = new KvCache(c, 50 + 10, composed);
        var copy = new KvCache(c, 50 + 10, KvPrefix.Concat([x, y]));

        long perSlot = 2L * c.Layers * c.KvHeads * c.HeadDim * sizeof(float);
        Assert.Equal(10, cache.Stride);
        Assert.Equal(10 * perSlot, cache.Bytes);
        Assert.Equal(60 * perSlot, copy.Bytes);
        for (int l = 0; l < c.Layers; l++) Assert.Equal(c.KvHeads * 10 * c.HeadDim, cache.Keys[l].Length);
        Assert.Same(x, cache.Referenced.Parts[0]);
        Assert.Same(y, cache.Referenced.Parts[1]);

        t.Forward([cache], [TinyModels.Tokens(6, c.VocabSize, 1)], new float[c.VocabSize]);
        t.Forward([cache], [[1]], new float[c.VocabSize]);
        t.Forward([cache], [[2]], new float[c.VocabSize]);
        Assert.Equal(58, cache.Length);
        var after = new[] { x, y }.Select(p => p.Keys.Concat(p.Values).ToArray()).ToArray();
        for (int i = 0; i < 2; i++)
            for (int a = 0; a < after[i].Length; a++) Assert.Equal(before[i][a], after[i][a]);

        // Full: 2 more tokens fit the 60 positions, a third does not.
        t.Forward([cache], [[1, 2]], default);
        Assert.Throws<InvalidRequestException>(() => t.Forward([cache], [[1]], default));
    }

    /// <summary>A fork shares the referenced prefix and copies only the own slots; another prefix is refused.</summary>
    [Fact]
    public void ForkKeepsTheReferences()
    {
        var m = TinyModels.Create(maxSeq: 128);
        var c = m.Config;
        var t = new Transformer(m);
        var x = RandomPrefix(c, 12, 31);
        var prompt = TinyModels.Tokens(7, c.VocabSize, 2);
        var shared = new KvCache(c, 40, ComposedPrefix.Of(x));
        t.Forward([shared], [prompt], default);
        var fork = new KvCache(c, 40, ComposedPrefix.Of(x));
        fork.CopyFrom(shared);
        var whole = new KvCache(c, 40, ComposedPrefix.Of(x));
        var a = new float[c.VocabSize]; var b = new float[c.VocabSize];
        t.Forward([fork], [[5]], a);
        t.Forward([whole], [[.. prompt, 5]], b);
        Close(b, a, "fork");
        Assert.Throws<InvalidRequestException>(() => new KvCache(c, 40, ComposedPrefix.Of(RandomPrefix(c, 12, 31))).CopyFrom(shared));
    }

    [Fact]
    public void WrongShapeIsRefused()
    {
        var c = TinyModels.Config();
        var other = TinyModels.Config() with { Layers = 3 };
        Assert.Throws<InvalidRequestException>(() => new KvCache(c, 20, ComposedPrefix.Of(KvPrefix.Zeros(other, 4))));
        Assert.Throws<InvalidRequestException>(() => new KvCache(c, 4, ComposedPrefix.Of(KvPrefix.Zeros(c, 4))));
    }
}
