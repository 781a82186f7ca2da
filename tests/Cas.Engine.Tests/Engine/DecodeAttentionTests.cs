using Cas.Engine.Models;

namespace Cas.Engine.Tests.Engine;

/// <summary>
/// The grouped decode attention (one small product per KV group and key block, blocks merged by their softmax
/// statistics) against a float64 per-head reference, and against the prefill (SGEMM) path over long composed prefixes.
/// </summary>
public class DecodeAttentionTests
{
    static float[] RandomArray(int n, int seed, float scale = 1f)
    {
        var r = new Random(seed); var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(r.NextDouble() * 2 - 1) * scale;
        return a;
    }

    static KvPrefix RandomPrefix(ModelConfig c, int length, int seed)
    {
        var p = KvPrefix.Zeros(c, length);
        for (int l = 0; l < c.Layers; l++)
        {
            RandomArray(p.Keys[l].Length, seed * 100 + l, 2f).CopyTo(p.Keys[l], 0);
            RandomArray(p.Values[l].Length, seed * 100 + 50 + l).CopyTo(p.Values[l], 0);
        }
        return p;
    }

    /// <summary>
    /// Kernel level: n tokens × group heads against L keys, split into 1..5 key blocks and merged, equals PyTorch's
    /// formula softmax(q·Kᵀ/√hd, causal)·V computed per head in float64, within 2e-6 + 2e-5·|x| (float32 sums over up to
    /// 4096 keys). head_dim 24 exercises the vector body and the scalar tail, 64 is SmolLM2's.
    /// </summary>
    [Theory]
    [InlineData(1, 1, 64, 1)]
    [InlineData(45, 1, 64, 2)]
    [InlineData(300, 1, 64, 3)]
    [InlineData(17, 1, 24, 2)]
    [InlineData(300, 3, 64, 3)]
    [InlineData(512, 7, 24, 4)]
    [InlineData(4096, 1, 64, 5)]
    [InlineData(4096, 4, 64, 3)]
    public void BlocksMergedEqualFloat64Reference(int L, int n, int hd, int blocks)
    {
        const int group = 3;
        int start = L - n, qStride = group * hd + 5, m = n * group;
        var q = RandomArray(n * qStride, 1, 2f);
        var keys = RandomArray(L * hd, 2, 2f);
        var values = RandomArray(L * hd, 3);
        var o = new float[blocks * m * hd]; var max = new float[blocks * m]; var sum = new float[blocks * m];
        var scores = new float[m * L];
        for (int k = 0; k < blocks; k++)
        {
            int t0 = L * k / blocks, t1 = L * (k + 1) / blocks;
            Transformer.DecodeBlock(q, qStride, group, n, start, keys, values, hd, t0, t1,
                o.AsSpan(k * m * hd, m * hd), max.AsSpan(k * m, m), sum.AsSpan(k * m, m), scores);
        }
        var dst = new float[n * qStride];
        Transformer.MergeDecodeBlocks(o, max, sum, blocks, m, m, hd, group, dst, qStride);

        for (int i = 0; i < n; i++)
            for (int j = 0; j < group; j++)
            {
                int visible = start + i + 1;
                var s = new double[visible];
                double mx = double.NegativeInfinity;
                for (int t = 0; t < visible; t++)
                {
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double)q[i * qStride + j * hd + e] * keys[t * hd + e];
                    s[t] = d / Math.Sqrt(hd); mx = Math.Max(mx, s[t]);
                }
                double z = 0;
                for (int t = 0; t < visible; t++) { s[t] = Math.Exp(s[t] - mx); z += s[t]; }
                for (int e = 0; e < hd; e++)
                {
                    double want = 0;
                    for (int t = 0; t < visible; t++) want += s[t] / z * values[t * hd + e];
                    float got = dst[i * qStride + j * hd + e];
                    Assert.True(Math.Abs(got - want) <= 2e-6 + 2e-5 * Math.Abs(want), $"token {i} head {j} dim {e}: {got} vs {want}");
                }
            }
    }

    static ModelConfig Config(int maxSeq) => new()
    {
        Architecture = Architecture.Llama, Dim = 96, HiddenDim = 160, Layers = 2, Heads = 6, KvHeads = 2, HeadDim = 64,
        VocabSize = 67, MaxSeqLen = maxSeq, RopeTheta = 10000f, Rope = RopeStyle.Halves, TiedEmbeddings = true,
    };

    /// <summary>
    /// Model level, behind long composed prefixes (up to 4096 slots): decoding the tokens one chunk of 1–3 at a time
    /// (the grouped decode kernel, several key blocks per group) gives the logits that one prefill pass gives (the SGEMM
    /// path), and a batch of sequences behind different prefixes decoded together equals each decoded alone; within
    /// 1e-4·(1 + |logit|) (float32 summation order over thousands of keys).
    /// </summary>
    [Theory]
    [InlineData(16)]
    [InlineData(512)]
    [InlineData(4076)]
    public void DecodeBehindComposedPrefixEqualsPrefill(int prefixSlots)
    {
        var c = Config(4200);
        var model = RandomWeights.Create(c, 5);
        var a = RandomPrefix(c, prefixSlots / 2, 1);
        var bPart = RandomPrefix(c, prefixSlots - prefixSlots / 2, 2);
        var prefixes = new[] { KvPrefix.Concat([a, bPart]), KvPrefix.Concat([bPart, a]), a };
        var tokens = TinyModels.Tokens(20, c.VocabSize, 9);
        int V = c.VocabSize;

        var expected = new float[prefixes.Length][];
        for (int s = 0; s < prefixes.Length; s++)
        {
            var cache = new KvCache(c, prefixes[s].Length + tokens.Length, prefixes[s]);
            expected[s] = new float[tokens.Length * V];
            new Transformer(model, 64).ForwardAll(cache, tokens, expected[s]);   // 20 rows: the SGEMM path
        }

        // All three sequences together, tokens fed 1, 2 or 3 at a time (decode path), last logits compared.
        var t = new Transformer(model, 16);
        var caches = prefixes.Select(p => new KvCache(c, p.Length + tokens.Length, p)).ToArray();
        var logits = new float[prefixes.Length * V];
        int at = 0, step = 0;
        while (at < tokens.Length)
        {
            int take = Math.Min(1 + step++ % 3, tokens.Length - at);
            var chunk = tokens.AsSpan(at, take).ToArray();
            t.Forward(caches, prefixes.Select(_ => chunk).ToArray(), logits);
            at += take;
            for (int s = 0; s < prefixes.Length; s++)
                for (int v = 0; v < V; v++)
                {
                    float want = expected[s][(at - 1) * V + v], got = logits[s * V + v];
                    Assert.True(Math.Abs(got - want) <= 1e-4f * (1 + Math.Abs(want)), $"prefix {s}, after {at} tokens, logit {v}: {got} vs {want}");
                }
        }
    }
}
