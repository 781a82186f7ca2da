using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Runtime.CompilerServices;
using Cas.Engine.Compute;

namespace Cas.Engine;

/// <summary>
/// Attention, forward and backward: causal multi-head attention with grouped KV heads over a prefix (cartridge
/// slots, several cartridges composed) and the sequence's own tokens. PyTorch, per head h with kv head
/// g = h / (heads / kv_heads):
///   S = Q_h @ K_g[:L].T / sqrt(head_dim);  S[i, j] = -inf for j > P + i
///   O_h = softmax(S, -1) @ V_g[:L]
/// where the prefix holds P slots, token i sits at slot P + i and L = P + n. The mask and softmax of a score row are
/// <see cref="Ops.MaskedSoftmax"/>, shared by every path below.
///
/// Two layouts:
/// <list type="bullet">
/// <item>Inference (<see cref="AttendCaches"/>): each sequence's earlier tokens sit in its <see cref="KvCache"/>,
///   after the cartridges it references (<see cref="KvCache.Referenced"/>, a <see cref="ComposedPrefix"/> read in
///   place, shared by every sequence that uses it) or holds as a copy; new K/V are appended to the cache first. Long
///   segments run per KV group and block of tokens as SGEMMs, the group's query heads packed as one matrix and the
///   causal triangle beyond each block skipped (<see cref="CacheAttentionGemm"/>; the referenced parts' products are <see cref="PrefixScores"/> and
///   <see cref="PrefixValues"/>, the same calls training makes), short ones (decode) per KV group as one small grouped
///   product per key block of each part and of the cache (<see cref="AttendDecode"/>): each key and value row is read
///   once for all the group's query heads.</item>
/// <item>Training (<see cref="AttendPrefixed"/>, <see cref="AttendPrefixedBackward"/>): each sequence has a
///   <see cref="ComposedPrefix"/> whose parts are read in place, and its token K/V are rows of the batch. For one KV
///   group the queries of all its heads and all token rows are packed as rows r·group + j (token row r, j-th head of the
///   group). A unit is a block of consecutive tokens [T0, T1) of one sequence; a run is consecutive units whose
///   sequences have the same prefix parts; a chunk is consecutive units whose score rows fit the S buffer. The prefix
///   part of every product runs once per (run, part) — one large SGEMM when a whole batch shares a cartridge — and
///   the token part once per unit (the unit sees its sequence's tokens 0..T1-1 only: the causal triangle beyond it
///   is skipped). Score row layout: [prefix parts in order (P_s columns) | tokens], row stride P_max + T_max.
///   Backward recomputes P per chunk instead of storing it (memory stays linear in the token count).</item>
/// </list>
/// </summary>
public sealed partial class Transformer
{
    /// <summary>Rows per sequence at or above which the cache path's two products go through SGEMM (prefill).</summary>
    public const int AttentionGemmMinRows = 8;

    // ------------------------------------------------------------------------------------------------
    // Inference: KV caches

    void AttendCaches(int layer, int rows, LayerBuffers b)
    {
        StoreKv(layer, b.K, b.V);
        int qd = _c.QDim;
        var caches = _caches;
        // Long segments: SGEMM per head (BLAS uses all cores).
        int small = 0;
        foreach (var sg in _segments)
        {
            if (sg.Count < AttentionGemmMinRows) { small++; continue; }
            int group = _c.Heads / _c.KvHeads, need = group * Math.Min(sg.Count, CausalRowBlock) * (sg.Start + sg.Count);
            if (_scores.Length < need) _scores = GC.AllocateUninitializedArray<float>(need);
            if (_packQ.Length < group * CausalRowBlock * _c.HeadDim)
            {
                _packQ = new float[group * CausalRowBlock * _c.HeadDim]; _packO = new float[_packQ.Length];
            }
            CacheAttentionGemm(b.Q.AsSpan(sg.Row * qd), qd, caches[sg.Seq], layer, sg.Start, sg.Count, b.Att.AsSpan(sg.Row * qd), _scores, _packQ, _packO);
        }
        if (small == 0) return;
        AttendDecode(layer, b);
    }

    // ---- Decode: grouped product per (segment, KV group, key block), blocks merged by their softmax statistics.

    /// <summary>Fewest keys in one decode work item: below this a block costs more to schedule than to compute.</summary>
    const int DecodeMinBlockKeys = 256;

    /// <summary>Keys [T0, T1) of one source: referenced part <c>Part</c> of the sequence's composed prefix, or (−1) its own cache.</summary>
    record struct DecodeItem(int Segment, int Group, int Part, int T0, int T1);
    readonly List<DecodeItem> _decodeItems = new();
    float[] _blockO = [], _blockMax = [], _blockSum = [];   // per work item: partial O [M, hd], row max and Σexp [M]
    Action<int>? _decodeBody;
    int _decodeLayer;
    LayerBuffers? _decodeBuffers;
    [ThreadStatic] static float[]? t_blockScores;

    /// <summary>
    /// Attention for the short (decode) segments of this chunk. For one segment of n &lt; <see cref="AttentionGemmMinRows"/>
    /// tokens and KV group g, the group's query heads of all n tokens are M = group·n rows (r = i·group + j) that share
    /// K_g and V_g, so each key and value row is read once for all of them:
    ///   S = scale·Q_g·K_g[t0..t1)ᵀ, then per row the block's max m, Σ exp(S − m) and O = exp(S − m)·V_g[t0..t1).
    /// The keys come from several sources — each part of the sequence's referenced <see cref="ComposedPrefix"/> (read in
    /// place) and its own cache — and a long source is split into key blocks so that even one sequence spreads over
    /// the cores (work items = segments × KV groups × source blocks); the blocks of a row are then merged exactly:
    ///   O = Σ_b e^{m_b − m}·O_b / Σ_b e^{m_b − m}·l_b,  m = max_b m_b.
    /// </summary>
    void AttendDecode(int layer, LayerBuffers b)
    {
        int hd = _c.HeadDim, kvh = _c.KvHeads, group = _c.Heads / kvh, mMax = group * (AttentionGemmMinRows - 1);
        var items = _decodeItems;
        items.Clear();
        int units = 0;
        foreach (var sg in _segments) if (sg.Count < AttentionGemmMinRows) units += kvh;
        int wanted = Math.Max(1, (4 * Environment.ProcessorCount + units - 1) / units);
        for (int si = 0; si < _segments.Count; si++)
        {
            var sg = _segments[si];
            if (sg.Count >= AttentionGemmMinRows) continue;
            var parts = _caches[sg.Seq].Referenced.Parts;
            int own = sg.Start + sg.Count - _caches[sg.Seq].Referenced.Length;
            for (int g = 0; g < kvh; g++)
                for (int part = -1; part < parts.Count; part++)
                {
                    int L = part < 0 ? own : parts[part].Length;
                    if (L == 0) continue;
                    int blocks = Math.Clamp(L / DecodeMinBlockKeys, 1, wanted);
                    for (int k = 0; k < blocks; k++)
                        items.Add(new DecodeItem(si, g, part, (int)((long)L * k / blocks), (int)((long)L * (k + 1) / blocks)));
                }
        }
        if (_blockMax.Length < items.Count * mMax)
        {
            int n = Math.Max(items.Count * 2, 64);
            _blockO = new float[n * mMax * hd]; _blockMax = new float[n * mMax]; _blockSum = new float[n * mMax];
        }
        _decodeLayer = layer; _decodeBuffers = b;
        _decodeBody ??= DecodeItemBody;
        if (items.Count == 1) _decodeBody(0); else Parallel.For(0, items.Count, _decodeBody);

        // Merge each (segment, group)'s consecutive blocks into the attention output.
        int qd = _c.QDim;
        for (int first = 0; first < items.Count;)
        {
            var it = items[first];
            int last = first + 1;
            while (last < items.Count && items[last].Segment == it.Segment && items[last].Group == it.Group) last++;
            var sg = _segments[it.Segment];
            MergeDecodeBlocks(_blockO.AsSpan(first * mMax * hd), _blockMax.AsSpan(first * mMax), _blockSum.AsSpan(first * mMax),
                last - first, mMax, sg.Count * group, hd, group, b.Att.AsSpan(sg.Row * qd + it.Group * group * hd), qd);
            first = last;
        }
        _decodeBuffers = null;
    }

    void DecodeItemBody(int index)
    {
        var it = _decodeItems[index];
        var sg = _segments[it.Segment];
        var b = _decodeBuffers!;
        var cache = _caches[sg.Seq];
        int hd = _c.HeadDim, group = _c.Heads / _c.KvHeads, mMax = group * (AttentionGemmMinRows - 1), qd = _c.QDim, l = _decodeLayer;
        int m = sg.Count * group, len = it.T1 - it.T0;
        var scores = t_blockScores;
        if (scores == null || scores.Length < m * len) t_blockScores = scores = GC.AllocateUninitializedArray<float>(Math.Max(m * len, 8192));
        // A referenced part lies wholly before the sequence's tokens (every row sees all of it: start = its length);
        // the own cache holds positions R.. at slots 0.., so token i (slot start − R + i) sees slots < start − R + i + 1.
        ReadOnlySpan<float> keys, values;
        int start;
        if (it.Part >= 0)
        {
            var part = cache.Referenced.Parts[it.Part];
            int p = part.Length;
            keys = part.Keys[l].AsSpan(it.Group * p * hd, p * hd); values = part.Values[l].AsSpan(it.Group * p * hd, p * hd);
            start = p;
        }
        else
        {
            int stride = cache.Stride;
            keys = cache.Keys[l].AsSpan(it.Group * stride * hd, stride * hd); values = cache.Values[l].AsSpan(it.Group * stride * hd, stride * hd);
            start = sg.Start - cache.Referenced.Length;
        }
        DecodeBlock(b.Q.AsSpan(sg.Row * qd + it.Group * group * hd), qd, group, sg.Count, start, keys, values, hd,
            it.T0, it.T1, _blockO.AsSpan(index * mMax * hd, m * hd), _blockMax.AsSpan(index * mMax, m), _blockSum.AsSpan(index * mMax, m), scores);
    }

    /// <summary>
    /// One decode work item: rows r = i·group + j (token i of n, j-th query head of the group; q row at
    /// i·qStride + j·hd) against keys/values [t0, t1) of the group ([slot, hd] rows). Token i sees slots &lt; start + i + 1.
    /// Writes per row the unnormalised O = Σ_t e^{s_t − max}·v_t into o [M, hd], max and Σ e^{s_t − max}
    /// (max = −∞, sum = 0, o = 0 for a row that sees no key of the block). scores: scratch of M·(t1 − t0).
    /// </summary>
    internal static void DecodeBlock(ReadOnlySpan<float> q, int qStride, int group, int n, int start,
        ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int hd, int t0, int t1,
        Span<float> o, Span<float> max, Span<float> sum, Span<float> scores)
    {
        if (n == 1 && hd == 64 && Vector512.IsHardwareAccelerated)
        {
            OneToken64(q, group, start, keys, values, t0, t1, o, max, sum, scores);
            return;
        }
        int m = n * group, len = t1 - t0;
        float scale = 1f / MathF.Sqrt(hd);
        int allSee = Math.Clamp(start + 1 - t0, 0, len);   // keys of the block every row sees
        // S: each key row read once for all M rows.
        for (int t = 0; t < len; t++)
        {
            var k = keys.Slice((t0 + t) * hd, hd);
            for (int i = 0; i < n; i++)
            {
                if (t >= start + i + 1 - t0) continue;
                for (int j = 0; j < group; j++)
                    scores[(i * group + j) * len + t] = Dot(q.Slice(i * qStride + j * hd, hd), k) * scale;
            }
        }
        o.Slice(0, m * hd).Clear();
        for (int r = 0; r < m; r++)
        {
            int see = Math.Clamp(start + r / group + 1 - t0, 0, len);
            var sr = scores.Slice(r * len, see);
            if (see == 0) { max[r] = float.NegativeInfinity; sum[r] = 0; continue; }
            sum[r] = Ops.ExpFromMax(sr, out max[r]);
        }
        // O: each value row read once for all M rows.
        for (int t = 0; t < len; t++)
        {
            var v = values.Slice((t0 + t) * hd, hd);
            for (int r = 0; r < m; r++)
                if (t < allSee || t < start + r / group + 1 - t0)
                    MultiplyAdd(v, scores[r * len + t], o.Slice(r * hd, hd));
        }
    }

    /// <summary>
    /// <see cref="DecodeBlock"/> for one token (batch-1 and batched decode) with head_dim 64 and 512-bit vectors.
    /// Scores: sixteen keys at a time per head, each key row four vectors (L1-resident after the first head), and the
    /// sixteen 16-lane products reduced together into one vector of sixteen scores (<see cref="Sums16"/>) instead of
    /// one horizontal sum per key, the cost that dominated at long contexts. Output: each value row is loaded once for
    /// three heads (<see cref="ValuesThreeHeads"/>), their output rows held in registers over the whole block.
    /// </summary>
    static unsafe void OneToken64(ReadOnlySpan<float> q, int group, int start, ReadOnlySpan<float> keys, ReadOnlySpan<float> values,
        int t0, int t1, Span<float> o, Span<float> max, Span<float> sum, Span<float> scores)
    {
        int len = t1 - t0, see = Math.Clamp(start + 1 - t0, 0, len);
        if (keys.Length < t1 * 64 || values.Length < t1 * 64 || q.Length < group * 64 || o.Length < group * 64 || scores.Length < group * len)
            throw new ArgumentException("decode block operands are too small.");
        if (see == 0)
        {
            o.Slice(0, group * 64).Clear();
            for (int j = 0; j < group; j++) { max[j] = float.NegativeInfinity; sum[j] = 0; }
            return;
        }
        const float Scale = 0.125f;   // 1/√64
        fixed (float* pq = q) fixed (float* pk = keys) fixed (float* pv = values) fixed (float* ps = scores) fixed (float* po = o)
        {
            float* k0 = pk + (long)t0 * 64;
            for (int j = 0; j < group; j++)
            {
                float* qj = pq + j * 64, sj = ps + j * len;
                var q0 = Vector512.Load(qj); var q1 = Vector512.Load(qj + 16); var q2 = Vector512.Load(qj + 32); var q3 = Vector512.Load(qj + 48);
                int t = 0;
                for (; t + 16 <= see; t += 16)
                    (Sums16(k0 + (long)t * 64, q0, q1, q2, q3) * Scale).Store(sj + t);
                for (; t < see; t++)
                    sj[t] = Vector512.Sum(KeyProduct(k0 + (long)t * 64, q0, q1, q2, q3)) * Scale;
                sum[j] = Ops.ExpFromMax(scores.Slice(j * len, see), out max[j]);
            }
            // Values: three heads per pass (SmolLM2's group) with twelve accumulators in registers, then one at a time.
            int jv = 0;
            for (; jv + 3 <= group; jv += 3) ValuesThreeHeads(pv + (long)t0 * 64, see, ps + jv * len, len, po + jv * 64);
            for (; jv < group; jv++) ValuesOneHead(pv + (long)t0 * 64, see, ps + jv * len, po + jv * 64);
        }
    }

    /// <summary>o[0..64) = Σ_t p[t]·v_t over <paramref name="n"/> value rows of 64 floats.</summary>
    static unsafe void ValuesOneHead(float* v, int n, float* p, float* o)
    {
        Vector512<float> o0 = default, o1 = default, o2 = default, o3 = default;
        for (int t = 0; t < n; t++, v += 64)
        {
            var w = Vector512.Create(p[t]);
            o0 = Vector512.FusedMultiplyAdd(Vector512.Load(v), w, o0); o1 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 16), w, o1);
            o2 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 32), w, o2); o3 = Vector512.FusedMultiplyAdd(Vector512.Load(v + 48), w, o3);
        }
        o0.Store(o); o1.Store(o + 16); o2.Store(o + 32); o3.Store(o + 48);
    }

    /// <summary><see cref="ValuesOneHead"/> for three heads (probability rows p, p + ldp, p + 2·ldp; outputs o, o + 64,
    /// o + 128), each value row loaded once.</summary>
    static unsafe void ValuesThreeHeads(float* v, int n, float* p, int ldp, float* o)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default,
            c0 = default, c1 = default, c2 = default, c3 = default;
        for (int t = 0; t < n; t++, v += 64)
        {
            var v0 = Vector512.Load(v); var v1 = Vector512.Load(v + 16); var v2 = Vector512.Load(v + 32); var v3 = Vector512.Load(v + 48);
            var w = Vector512.Create(p[t]);
            a0 = Vector512.FusedMultiplyAdd(v0, w, a0); a1 = Vector512.FusedMultiplyAdd(v1, w, a1); a2 = Vector512.FusedMultiplyAdd(v2, w, a2); a3 = Vector512.FusedMultiplyAdd(v3, w, a3);
            w = Vector512.Create(p[ldp + t]);
            b0 = Vector512.FusedMultiplyAdd(v0, w, b0); b1 = Vector512.FusedMultiplyAdd(v1, w, b1); b2 = Vector512.FusedMultiplyAdd(v2, w, b2); b3 = Vector512.FusedMultiplyAdd(v3, w, b3);
            w = Vector512.Create(p[2 * ldp + t]);
            c0 = Vector512.FusedMultiplyAdd(v0, w, c0); c1 = Vector512.FusedMultiplyAdd(v1, w, c1); c2 = Vector512.FusedMultiplyAdd(v2, w, c2); c3 = Vector512.FusedMultiplyAdd(v3, w, c3);
        }
        a0.Store(o); a1.Store(o + 16); a2.Store(o + 32); a3.Store(o + 48);
        b0.Store(o + 64); b1.Store(o + 80); b2.Store(o + 96); b3.Store(o + 112);
        c0.Store(o + 128); c1.Store(o + 144); c2.Store(o + 160); c3.Store(o + 176);
    }

    /// <summary>The 16-lane products of one 64-float key row with q (four vectors); their lane sum is q·k.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector512<float> KeyProduct(float* k, Vector512<float> q0, Vector512<float> q1, Vector512<float> q2, Vector512<float> q3)
    {
        var a = Vector512.Multiply(Vector512.Load(k), q0);
        a = Vector512.FusedMultiplyAdd(Vector512.Load(k + 16), q1, a);
        a = Vector512.FusedMultiplyAdd(Vector512.Load(k + 32), q2, a);
        return Vector512.FusedMultiplyAdd(Vector512.Load(k + 48), q3, a);
    }

    /// <summary>
    /// q·k for the sixteen key rows at k (64 floats each), as one vector (lane t = key t). The sixteen product vectors
    /// are summed pairwise while they are interleaved — within 128-bit lanes by 32- then 64-bit unpacks, then across
    /// lanes by 128-bit shuffles — so each step halves the vectors and every lane keeps one key: 45 shuffles and adds
    /// for sixteen keys instead of sixteen horizontal sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector512<float> Sums16(float* k, Vector512<float> q0, Vector512<float> q1, Vector512<float> q2, Vector512<float> q3)
    {
        // Level 1: keys (2i, 2i+1) → per 128-bit lane [2i, 2i+1, 2i, 2i+1] partial sums.
        var p0 = Pair32(KeyProduct(k, q0, q1, q2, q3), KeyProduct(k + 64, q0, q1, q2, q3));
        var p1 = Pair32(KeyProduct(k + 128, q0, q1, q2, q3), KeyProduct(k + 192, q0, q1, q2, q3));
        var p2 = Pair32(KeyProduct(k + 256, q0, q1, q2, q3), KeyProduct(k + 320, q0, q1, q2, q3));
        var p3 = Pair32(KeyProduct(k + 384, q0, q1, q2, q3), KeyProduct(k + 448, q0, q1, q2, q3));
        var p4 = Pair32(KeyProduct(k + 512, q0, q1, q2, q3), KeyProduct(k + 576, q0, q1, q2, q3));
        var p5 = Pair32(KeyProduct(k + 640, q0, q1, q2, q3), KeyProduct(k + 704, q0, q1, q2, q3));
        var p6 = Pair32(KeyProduct(k + 768, q0, q1, q2, q3), KeyProduct(k + 832, q0, q1, q2, q3));
        var p7 = Pair32(KeyProduct(k + 896, q0, q1, q2, q3), KeyProduct(k + 960, q0, q1, q2, q3));
        // Level 2: → per 128-bit lane [4i, 4i+1, 4i+2, 4i+3].
        var u0 = Pair64(p0, p1); var u1 = Pair64(p2, p3); var u2 = Pair64(p4, p5); var u3 = Pair64(p6, p7);
        // Levels 3 and 4: sum the four 128-bit lanes of each u, lane i of the result ← u_i.
        return Lanes(Lanes(u0, u1), Lanes(u2, u3));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Pair32(Vector512<float> a, Vector512<float> b) => Avx512F.UnpackLow(a, b) + Avx512F.UnpackHigh(a, b);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Pair64(Vector512<float> a, Vector512<float> b) =>
        Avx512F.UnpackLow(a.AsDouble(), b.AsDouble()).AsSingle() + Avx512F.UnpackHigh(a.AsDouble(), b.AsDouble()).AsSingle();

    /// <summary>128-bit lanes [a0+a1, a2+a3, b0+b1, b2+b3].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Lanes(Vector512<float> a, Vector512<float> b) =>
        Avx512F.Shuffle4x128(a, b, 0b10_00_10_00) + Avx512F.Shuffle4x128(a, b, 0b11_01_11_01);

    /// <summary>
    /// Merges <paramref name="blocks"/> partial results (stride mMax rows) of M rows into dst rows r = i·group + j at
    /// i·dstStride + j·hd: O = Σ_b e^{m_b − m}·O_b / Σ_b e^{m_b − m}·l_b.
    /// </summary>
    internal static void MergeDecodeBlocks(ReadOnlySpan<float> o, ReadOnlySpan<float> max, ReadOnlySpan<float> sum,
        int blocks, int mMax, int m, int hd, int group, Span<float> dst, int dstStride)
    {
        for (int r = 0; r < m; r++)
        {
            float mx = float.NegativeInfinity;
            for (int k = 0; k < blocks; k++) mx = MathF.Max(mx, max[k * mMax + r]);
            var d = dst.Slice(r / group * dstStride + r % group * hd, hd);
            d.Clear();
            float denominator = 0;
            for (int k = 0; k < blocks; k++)
            {
                if (sum[k * mMax + r] == 0) continue;
                float w = MathF.Exp(max[k * mMax + r] - mx);
                denominator += w * sum[k * mMax + r];
                MultiplyAdd(o.Slice((k * mMax + r) * hd, hd), w, d);
            }
            TensorPrimitives.Multiply(d, 1f / denominator, d);
        }
    }

    /// <summary>a·b over hd floats, 256-bit vectors with two accumulators (head_dim is small: a library call costs more).</summary>
    static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = a.Length, d = 0;
        ref float pa = ref MemoryMarshal.GetReference(a);
        ref float pb = ref MemoryMarshal.GetReference(b);
        float s = 0;
        if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            var acc0 = Vector256<float>.Zero; var acc1 = Vector256<float>.Zero;
            for (; d <= n - 16; d += 16)
            {
                acc0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pa, (nuint)d), Vector256.LoadUnsafe(ref pb, (nuint)d), acc0);
                acc1 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pa, (nuint)d + 8), Vector256.LoadUnsafe(ref pb, (nuint)d + 8), acc1);
            }
            s = Vector256.Sum(acc0 + acc1);
        }
        for (; d < n; d++) s += a[d] * b[d];
        return s;
    }

    /// <summary>dst += w·x.</summary>
    static void MultiplyAdd(ReadOnlySpan<float> x, float w, Span<float> dst)
    {
        int n = x.Length, d = 0;
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float pd = ref MemoryMarshal.GetReference(dst);
        if (Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; d <= n - 8; d += 8)
                Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)d), vw, Vector256.LoadUnsafe(ref pd, (nuint)d)).StoreUnsafe(ref pd, (nuint)d);
        }
        for (; d < n; d++) dst[d] += w * x[d];
    }

    void StoreKv(int layer, float[] k, float[] v)
    {
        int hd = _c.HeadDim, kvd = _c.KvDim;
        foreach (var sg in _segments)
        {
            var cache = _caches[sg.Seq];
            var K = cache.Keys[layer]; var V = cache.Values[layer]; int cap = cache.Stride, r0 = cache.Referenced.Length;
            for (int i = 0; i < sg.Count; i++)
            {
                int r = sg.Row + i, slot = sg.Start + i - r0;
                for (int g = 0; g < _c.KvHeads; g++)
                {
                    k.AsSpan(r * kvd + g * hd, hd).CopyTo(K.AsSpan((g * cap + slot) * hd, hd));
                    v.AsSpan(r * kvd + g * hd, hd).CopyTo(V.AsSpan((g * cap + slot) * hd, hd));
                }
            }
        }
    }

    /// <summary>
    /// Prefill-sized attention for one sequence, as SGEMMs that BLAS spreads over the cores: per KV group g and block of
    /// up to <see cref="CausalRowBlock"/> tokens, the group's query heads of the block's tokens are packed as one matrix
    /// Q_p [group·m, hd] (row j·m + i = head j of token i) that shares K_g and V_g, so each product is group times
    /// taller and there are group times fewer of them. A block's products stop at the last key its last token sees, so
    /// the causal upper triangle is mostly never computed (5/8 of the full work for 512 tokens from position 0):
    ///   S = scale·Q_p·[K_parts; K_own[0, seen)]ᵀ, P = masked softmax of each row (rows over the cores),
    ///   O_p = P·[V_parts; V_own[0, seen)], unpacked into o.
    /// The referenced parts go through <see cref="PrefixScores"/> and <see cref="PrefixValues"/>; score row layout:
    /// [referenced parts in order (R columns) | own slots], seen columns.
    /// q, o: [n, heads*head_dim] row stride qStride; scores: at least group·min(n, block)·(start + n) floats; packQ,
    /// packO: at least group·block·head_dim floats each.
    /// </summary>
    static void CacheAttentionGemm(ReadOnlySpan<float> q, int qStride, KvCache cache, int layer, int start, int n,
        Span<float> o, float[] scores, float[] packQ, float[] packO)
    {
        var c = cache.Config;
        var prefix = cache.Referenced;
        int hd = c.HeadDim, group = c.Heads / c.KvHeads, L = start + n, R = prefix.Length, own = L - R, stride = cache.Stride;
        float scale = 1f / MathF.Sqrt(hd);
        for (int g = 0; g < c.KvHeads; g++)
        {
            var kg = cache.Keys[layer].AsSpan(g * stride * hd, own * hd);
            var vg = cache.Values[layer].AsSpan(g * stride * hd, own * hd);
            for (int i0 = 0; i0 < n; i0 += CausalRowBlock)
            {
                int m = Math.Min(CausalRowBlock, n - i0), M = group * m, seen = start + i0 + m, ownSeen = seen - R;
                for (int j = 0; j < group; j++)
                    for (int i = 0; i < m; i++)
                        q.Slice((i0 + i) * qStride + (g * group + j) * hd, hd).CopyTo(packQ.AsSpan((j * m + i) * hd, hd));
                var sc = scores.AsSpan(0, M * seen);
                PrefixScores(prefix, layer, g, hd, M, packQ, hd, scale, sc, seen);
                Blas.Sgemm(false, true, M, ownSeen, hd, scale, packQ, hd, kg, hd, 0f, sc.Slice(R), seen);
                int firstVisible = start + i0 + 1;
                Ops.ParallelRows(M, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++) Ops.MaskedSoftmax(scores.AsSpan(r * seen, seen), firstVisible + r % m);
                }, 64);
                bool any = PrefixValues(prefix, layer, g, hd, M, sc, seen, packO, hd);
                Blas.Sgemm(false, false, M, hd, ownSeen, 1f, sc.Slice(R), seen, vg, hd, any ? 1f : 0f, packO, hd);
                for (int j = 0; j < group; j++)
                    for (int i = 0; i < m; i++)
                        packO.AsSpan((j * m + i) * hd, hd).CopyTo(o.Slice((i0 + i) * qStride + (g * group + j) * hd, hd));
            }
        }
    }

    /// <summary>Most tokens per block of <see cref="CacheAttentionGemm"/>: smaller skips more of the causal triangle,
    /// larger keeps the products big enough for BLAS.</summary>
    const int CausalRowBlock = 128;

    // ------------------------------------------------------------------------------------------------
    // The composed prefix's part of the products, shared by training and inference (parts read in place)

    /// <summary>
    /// S[:, 0..P) = scale·Q·[K_part0; K_part1; …]ᵀ for KV group g of layer l: one SGEMM per part, its columns after the
    /// previous part's. q: m rows of head_dim at row stride ldq; s: row stride lds.
    /// </summary>
    static void PrefixScores(ComposedPrefix prefix, int l, int g, int hd, int m, ReadOnlySpan<float> q, int ldq, float scale, Span<float> s, int lds)
    {
        int col = 0;
        foreach (var part in prefix.Parts)
        {
            int p = part.Length;
            if (p == 0) continue;
            Blas.Sgemm(false, true, m, p, hd, scale, q, ldq, part.Keys[l].AsSpan(g * p * hd, p * hd), hd, 0f, s.Slice(col), lds);
            col += p;
        }
    }

    /// <summary>
    /// O = P[:, 0..P)·[V_part0; V_part1; …] for KV group g of layer l (O overwritten). False when the prefix has no slot
    /// (O untouched): the caller's next product then overwrites instead of adding.
    /// </summary>
    static bool PrefixValues(ComposedPrefix prefix, int l, int g, int hd, int m, ReadOnlySpan<float> probabilities, int ldp, Span<float> o, int ldo)
    {
        int col = 0; bool first = true;
        foreach (var part in prefix.Parts)
        {
            int p = part.Length;
            if (p == 0) continue;
            Blas.Sgemm(false, false, m, hd, p, 1f, probabilities.Slice(col), ldp, part.Values[l].AsSpan(g * p * hd, p * hd), hd, first ? 0f : 1f, o, ldo);
            col += p; first = false;
        }
        return !first;
    }

    // ------------------------------------------------------------------------------------------------
    // Training: composed prefixes + the batch's tokens

    /// <summary>
    /// Forward, per KV group g and chunk: S = scale·Q·[K_parts; K_tokens]ᵀ, P = causal softmax(S), O = P·[V_parts; V_tokens].
    /// </summary>
    void AttendPrefixed(int l, int rows, LayerBuffers b)
    {
        int hd = _c.HeadDim, qd = _c.QDim, kvd = _c.KvDim, ld = _ld, gw = _c.Heads / _c.KvHeads * hd;
        for (int g = 0; g < _c.KvHeads; g++)
        {
            Pack(b.Q, qd, rows, g * gw, gw, _qp);
            foreach (var ch in _chunks)
            {
                var S = _s.AsSpan(0, ch.M * ld);
                Probabilities(l, b, g, ch, S);
                for (int ri = ch.FirstRun; ri < ch.FirstRun + ch.Runs; ri++)
                {
                    var run = _runs[ri];
                    PrefixValues(run.Prefix, l, g, hd, run.M, S.Slice((run.Rho - ch.Rho) * ld), ld, _op.AsSpan(run.Rho * hd, run.M * hd), hd);
                }
                for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
                {
                    var un = _units[u]; var sq = _seqs[un.Seq];
                    Blas.Sgemm(false, false, un.M, hd, un.T1, 1f, S.Slice((un.Rho - ch.Rho) * ld + sq.P), ld,
                        b.V.AsSpan(sq.Row * kvd + g * hd), kvd, sq.P > 0 ? 1f : 0f, _op.AsSpan(un.Rho * hd, un.M * hd), hd);
                }
            }
            Unpack(_op, gw, rows, g * gw, b.Att, qd);
        }
    }

    /// <summary>P [chunk rows, ld] for the packed queries in _qp: scores, causal mask (zeros), row softmax.</summary>
    void Probabilities(int l, LayerBuffers b, int g, Chunk ch, Span<float> S)
    {
        int hd = _c.HeadDim, kvd = _c.KvDim, group = _c.Heads / _c.KvHeads, ld = _ld;
        float scale = 1f / MathF.Sqrt(hd);
        for (int ri = ch.FirstRun; ri < ch.FirstRun + ch.Runs; ri++)
        {
            var run = _runs[ri];
            PrefixScores(run.Prefix, l, g, hd, run.M, _qp.AsSpan(run.Rho * hd, run.M * hd), hd, scale, S.Slice((run.Rho - ch.Rho) * ld), ld);
        }
        for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
        {
            var un = _units[u]; var sq = _seqs[un.Seq];
            Blas.Sgemm(false, true, un.M, un.T1, hd, scale, _qp.AsSpan(un.Rho * hd, un.M * hd), hd,
                b.K.AsSpan(sq.Row * kvd + g * hd), kvd, 0f, S.Slice((un.Rho - ch.Rho) * ld + sq.P), ld);
        }
        var s = _s; var visible = _visible; int rho0 = ch.Rho;
        Ops.ParallelRows(ch.M, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++) Ops.MaskedSoftmax(s.AsSpan(i * ld, ld), visible[(rho0 + i) / group]);
        });
    }

    /// <summary>
    /// Backward of <see cref="AttendPrefixed"/> for KV group g of layer l, with P recomputed:
    ///   dP = dO·Vᵀ;  dS = P∘(dP − rowsum(P∘dP));  dV += Pᵀ·dO;  dK += scale·dSᵀ·Q;  dQ = scale·dS·K.
    /// The sums over the group's query heads (GQA) and, for a prefix part, over all sequences of a run happen inside
    /// the SGEMMs (their rows are stacked). A part's dK/dV go to its <see cref="KvGradient"/> (frozen parts have none and
    /// are only read); token parts go to _dk/_dv/_dq, skipped at the bottom layer where only prefix gradients are wanted.
    /// dO is the packed _dAtt; b holds layer l's saved q, k, v.
    /// </summary>
    void AttendPrefixedBackward(int l, LayerBuffers b, int rows, int g, bool bottom)
    {
        int hd = _c.HeadDim, qd = _c.QDim, kvd = _c.KvDim, ld = _ld, group = _c.Heads / _c.KvHeads, gw = group * hd;
        float scale = 1f / MathF.Sqrt(hd);
        Pack(b.Q, qd, rows, g * gw, gw, _qp);
        Pack(_dAtt, qd, rows, g * gw, gw, _op);
        foreach (var ch in _chunks)
        {
            var P = _s.AsSpan(0, ch.M * ld);
            var dS = _dp.AsSpan(0, ch.M * ld);
            Probabilities(l, b, g, ch, P);

            // dP = dO · [V_parts; V_tokens]ᵀ ;  dV += Pᵀ · dO
            for (int ri = ch.FirstRun; ri < ch.FirstRun + ch.Runs; ri++)
            {
                var run = _runs[ri];
                var dO = _op.AsSpan(run.Rho * hd, run.M * hd);
                int col = 0, at = (run.Rho - ch.Rho) * ld;
                foreach (var part in run.Prefix.Parts)
                {
                    int p = part.Length;
                    if (p == 0) continue;
                    Blas.Sgemm(false, true, run.M, p, hd, 1f, dO, hd, part.Values[l].AsSpan(g * p * hd, p * hd), hd, 0f, dS.Slice(at + col), ld);
                    if (_gradOf.TryGetValue(part, out var grad))
                        Blas.Sgemm(true, false, p, hd, run.M, 1f, P.Slice(at + col), ld, dO, hd, 1f, grad.Values[l].AsSpan(g * p * hd, p * hd), hd);
                    col += p;
                }
            }
            for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
            {
                var un = _units[u]; var sq = _seqs[un.Seq];
                int at = (un.Rho - ch.Rho) * ld + sq.P, kv = sq.Row * kvd + g * hd;
                var dOu = _op.AsSpan(un.Rho * hd, un.M * hd);
                Blas.Sgemm(false, true, un.M, un.T1, hd, 1f, dOu, hd, b.V.AsSpan(kv), kvd, 0f, dS.Slice(at), ld);
                if (!bottom) Blas.Sgemm(true, false, un.T1, hd, un.M, 1f, P.Slice(at), ld, dOu, hd, 1f, _dv.AsSpan(kv), kvd);
            }
            // dS = P ∘ (dP − Σ_j P·dP), zero past the diagonal
            var s = _s; var dp = _dp; var visible = _visible; int rho0 = ch.Rho;
            Ops.ParallelRows(ch.M, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                {
                    int vis = visible[(rho0 + i) / group];
                    var pr = s.AsSpan(i * ld, vis);
                    var dr = dp.AsSpan(i * ld, ld);
                    var dv = dr.Slice(0, vis);
                    float dot = TensorPrimitives.Dot(pr, dv);
                    TensorPrimitives.Subtract(dv, dot, dv);
                    TensorPrimitives.Multiply(dv, pr, dv);
                    dr.Slice(vis).Clear();
                }
            });
            // dK += scale · dSᵀ · Q ;  dQ = scale · dS · [K_parts; K_tokens]
            for (int ri = ch.FirstRun; ri < ch.FirstRun + ch.Runs; ri++)
            {
                var run = _runs[ri];
                var q = _qp.AsSpan(run.Rho * hd, run.M * hd);
                int col = 0, at = (run.Rho - ch.Rho) * ld; bool first = true;
                foreach (var part in run.Prefix.Parts)
                {
                    int p = part.Length;
                    if (p == 0) continue;
                    if (_gradOf.TryGetValue(part, out var grad))
                        Blas.Sgemm(true, false, p, hd, run.M, scale, dS.Slice(at + col), ld, q, hd, 1f, grad.Keys[l].AsSpan(g * p * hd, p * hd), hd);
                    if (!bottom)
                        Blas.Sgemm(false, false, run.M, hd, p, scale, dS.Slice(at + col), ld, part.Keys[l].AsSpan(g * p * hd, p * hd), hd,
                            first ? 0f : 1f, _dqp.AsSpan(run.Rho * hd, run.M * hd), hd);
                    col += p; first = false;
                }
            }
            if (bottom) continue;
            for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
            {
                var un = _units[u]; var sq = _seqs[un.Seq];
                int at = (un.Rho - ch.Rho) * ld + sq.P, kv = sq.Row * kvd + g * hd;
                var qu = _qp.AsSpan(un.Rho * hd, un.M * hd);
                Blas.Sgemm(true, false, un.T1, hd, un.M, scale, dS.Slice(at), ld, qu, hd, 1f, _dk.AsSpan(kv), kvd);
                Blas.Sgemm(false, false, un.M, hd, un.T1, scale, dS.Slice(at), ld, b.K.AsSpan(kv), kvd, sq.P > 0 ? 1f : 0f,
                    _dqp.AsSpan(un.Rho * hd, un.M * hd), hd);
            }
        }
        if (!bottom) Unpack(_dqp, gw, rows, g * gw, _dq, qd);
    }

    /// <summary>dst[r·w ..] = src[r·srcStride + col ..] (w floats) for each token row r: one KV group's query heads.</summary>
    static void Pack(float[] src, int srcStride, int rows, int col, int w, float[] dst)
    {
        for (int r = 0; r < rows; r++) src.AsSpan(r * srcStride + col, w).CopyTo(dst.AsSpan(r * w, w));
    }

    static void Unpack(float[] src, int w, int rows, int col, float[] dst, int dstStride)
    {
        for (int r = 0; r < rows; r++) src.AsSpan(r * w, w).CopyTo(dst.AsSpan(r * dstStride + col, w));
    }
}
