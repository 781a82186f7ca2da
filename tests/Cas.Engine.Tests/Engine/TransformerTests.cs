using Cas.Engine.Models;

namespace Cas.Engine.Tests.Engine;

public class TransformerTests
{
    static float[] AllLogits(Transformer t, int[] tokens, KvPrefix? prefix = null)
    {
        var cache = new KvCache(t.Config, (prefix?.Length ?? 0) + tokens.Length, prefix);
        var logits = new float[tokens.Length * t.Config.VocabSize];
        t.ForwardAll(cache, tokens, logits);
        return logits;
    }

    static void Close(ReadOnlySpan<float> expect, ReadOnlySpan<float> actual, float tol, string what)
    {
        Assert.Equal(expect.Length, actual.Length);
        for (int i = 0; i < expect.Length; i++)
            Assert.True(Math.Abs(expect[i] - actual[i]) <= tol * (1 + Math.Abs(expect[i])), $"{what}: index {i}: {expect[i]} vs {actual[i]}");
    }

    /// <summary>Splitting the same tokens into chunks of any size gives the same logits (KV cache continuation).</summary>
    [Theory]
    [InlineData(Architecture.Llama, RopeStyle.Halves)]
    [InlineData(Architecture.Qwen2, RopeStyle.Halves)]
    [InlineData(Architecture.Qwen3, RopeStyle.Interleaved)]
    public void ChunkedPrefillEqualsOnePass(Architecture arch, RopeStyle rope)
    {
        var m = TinyModels.Create(arch, rope);
        var tokens = TinyModels.Tokens(40, m.Config.VocabSize, 2);
        var whole = AllLogits(new Transformer(m, 64), tokens);
        var chunked = AllLogits(new Transformer(m, 3), tokens);
        // Chunks of 3 rows take the per-head (non-SGEMM) attention path; 64 rows the SGEMM path.
        Close(whole, chunked, 2e-5f, "chunked vs whole");
    }

    /// <summary>
    /// A prefill longer than one row block of the SGEMM attention path (128 tokens: the causal triangle beyond each block
    /// is skipped and a KV group's heads are packed) equals the same tokens fed 3 at a time through the decode path,
    /// with no prefix and after a 37-slot referenced (composed, read in place) prefix. Tolerance as above: only the summation order differs.
    /// </summary>
    [Theory]
    [InlineData(Architecture.Llama, 0)]
    [InlineData(Architecture.Qwen3, 37)]
    public void LongPrefillEqualsSmallChunks(Architecture arch, int prefixLength)
    {
        var m = TinyModels.Create(arch, arch == Architecture.Qwen3 ? RopeStyle.Interleaved : RopeStyle.Halves, maxSeq: 512);
        var tokens = TinyModels.Tokens(300, m.Config.VocabSize, 4);
        var c = m.Config;
        var prefix = new ComposedPrefix(prefixLength == 0 ? [] : [ComposedCacheTests.RandomPrefix(c, prefixLength, 9)]);
        float[] Logits(int chunk)
        {
            var logits = new float[tokens.Length * c.VocabSize];
            new Transformer(m, chunk).ForwardAll(new KvCache(c, prefixLength + tokens.Length, prefix), tokens, logits);
            return logits;
        }
        var whole = Logits(512);
        var chunked = Logits(3);
        Close(whole, chunked, 2e-5f, "300-token prefill vs chunks of 3");
    }

    /// <summary>
    /// A prefix lifted from a real prefill (keys already rotated for 0..p-1) stands in exactly for those tokens:
    /// this is what a first-k cartridge is at initialisation.
    /// </summary>
    [Fact]
    public void PrefixFromPrefillReplacesTheTokens()
    {
        var m = TinyModels.Create();
        var c = m.Config;
        var t = new Transformer(m);
        var tokens = TinyModels.Tokens(30, c.VocabSize, 4);
        int p = 12;
        var full = AllLogits(t, tokens);

        var cache = new KvCache(c, p);
        t.Forward([cache], [tokens[..p]], default);
        var keys = new float[c.Layers][]; var values = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++) { keys[l] = cache.Keys[l]; values[l] = cache.Values[l]; } // capacity == p: same layout
        var prefix = new KvPrefix(c.Layers, c.KvHeads, c.HeadDim, p, keys, values);

        var rest = AllLogits(t, tokens[p..], prefix);
        Close(full.AsSpan(p * c.VocabSize), rest, 2e-5f, "prefix vs tokens");
    }

    [Fact]
    public void ConcatenatedPrefixesKeepTheirOrder()
    {
        var c = TinyModels.Config();
        var a = KvPrefix.Zeros(c, 2); var b = KvPrefix.Zeros(c, 3);
        for (int l = 0; l < c.Layers; l++) { Array.Fill(a.Keys[l], 1f); Array.Fill(b.Keys[l], 2f); Array.Fill(a.Values[l], -1f); Array.Fill(b.Values[l], -2f); }
        var ab = KvPrefix.Concat([a, b]);
        Assert.Equal(5, ab.Length);
        for (int l = 0; l < c.Layers; l++)
            for (int h = 0; h < c.KvHeads; h++)
                for (int s = 0; s < 5; s++)
                {
                    float expect = s < 2 ? 1f : 2f;
                    Assert.Equal(expect, ab.Keys[l][(h * 5 + s) * c.HeadDim]);
                    Assert.Equal(-expect, ab.Values[l][(h * 5 + s) * c.HeadDim + c.HeadDim - 1]);
                }
    }

    /// <summary>Sequences of different lengths decoded together give the same tokens as decoded alone.</summary>
    [Fact]
    public void BatchedGenerationEqualsOneAtATime()
    {
        var m = TinyModels.Create(Architecture.Qwen2, seed: 9, maxSeq: 200);
        var gen = new Generator(new Transformer(m, 16));
        var reqs = new List<GenerationRequest>();
        for (int i = 0; i < 6; i++)
            reqs.Add(new GenerationRequest(TinyModels.Tokens(3 + 7 * i, m.Config.VocabSize, 10 + i))
            {
                MaxTokens = 20 + i,
                Sampling = i % 2 == 0 ? SamplingOptions.Greedy : new SamplingOptions { Temperature = 0.9f, TopP = 0.95f, Seed = (ulong)i },
                StopTokens = i == 3 ? [5, 7] : [],
            });
        var batched = gen.Generate(reqs);
        for (int i = 0; i < reqs.Count; i++)
        {
            var alone = gen.Generate([reqs[i]]);
            Assert.Equal(alone[0].Tokens, batched[i].Tokens);
            Assert.Equal(alone[0].Finish, batched[i].Finish);
        }
    }

    [Fact]
    public void PromptLongerThanContextIsAClearError()
    {
        var m = TinyModels.Create(maxSeq: 32);
        var gen = new Generator(new Transformer(m));
        var ex = Assert.Throws<InvalidRequestException>(() => gen.Generate([new GenerationRequest(new int[40])]));
        Assert.Contains("context of 32", ex.Message);
    }

    [Fact]
    public void GenerationStopsAtTheContextEnd()
    {
        var m = TinyModels.Create(maxSeq: 32);
        var r = new Generator(new Transformer(m)).Generate([new GenerationRequest(new int[30]) { MaxTokens = 100 }]);
        // Positions 30 and 31 take the first two generated tokens; the third is sampled from position 31's
        // logits and needs no KV slot, so 3 tokens come out before the context is full.
        Assert.Equal(3, r[0].Tokens.Length);
        Assert.Equal(FinishReason.Context, r[0].Finish);
    }

    [Fact]
    public void TokenOutsideVocabularyIsRejectedBeforeAnythingChanges()
    {
        var m = TinyModels.Create();
        var cache = new KvCache(m.Config, 8);
        Assert.Throws<InvalidRequestException>(() => new Transformer(m).Forward([cache], [[1, 999]], default));
        Assert.Equal(0, cache.Length);
    }
}
