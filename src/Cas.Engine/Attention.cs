using System.Numerics.Tensors;
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
/// <item>Inference (<see cref="AttendCaches"/>): each sequence's prefix and earlier tokens sit in its
///   <see cref="KvCache"/>; new K/V are appended there first. Long segments run per head as two SGEMMs, short ones
///   (decode) as dot products per (sequence, head) over the cores.</item>
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
        int qd = _c.QDim, heads = _c.Heads;
        var caches = _caches;
        // Long segments: SGEMM per head (BLAS uses all cores).
        int small = 0;
        foreach (var sg in _segments)
        {
            if (sg.Count < AttentionGemmMinRows) { small++; continue; }
            int need = sg.Count * (sg.Start + sg.Count);
            if (_scores.Length < need) _scores = GC.AllocateUninitializedArray<float>(need);
            CacheAttentionGemm(b.Q.AsSpan(sg.Row * qd), qd, caches[sg.Seq], layer, sg.Start, sg.Count, b.Att.AsSpan(sg.Row * qd), _scores);
        }
        if (small == 0) return;
        // Short segments (decode): one work item per (segment, head), spread over the cores.
        var segs = _segments;
        Parallel.For(0, segs.Count * heads, item =>
        {
            var sg = segs[item / heads];
            if (sg.Count >= AttentionGemmMinRows) return;
            int L = sg.Start + sg.Count;
            var scores = t_scores;
            if (scores == null || scores.Length < L) t_scores = scores = GC.AllocateUninitializedArray<float>(Math.Max(L, 1024));
            CacheAttentionHead(b.Q.AsSpan(sg.Row * qd), qd, caches[sg.Seq], layer, sg.Start, sg.Count, item % heads, b.Att.AsSpan(sg.Row * qd), scores);
        });
    }

    [ThreadStatic] static float[]? t_scores;

    void StoreKv(int layer, float[] k, float[] v)
    {
        int hd = _c.HeadDim, kvd = _c.KvDim;
        foreach (var sg in _segments)
        {
            var cache = _caches[sg.Seq];
            var K = cache.Keys[layer]; var V = cache.Values[layer]; int cap = cache.Capacity;
            for (int i = 0; i < sg.Count; i++)
            {
                int r = sg.Row + i, slot = sg.Start + i;
                for (int g = 0; g < _c.KvHeads; g++)
                {
                    k.AsSpan(r * kvd + g * hd, hd).CopyTo(K.AsSpan((g * cap + slot) * hd, hd));
                    v.AsSpan(r * kvd + g * hd, hd).CopyTo(V.AsSpan((g * cap + slot) * hd, hd));
                }
            }
        }
    }

    /// <summary>
    /// Prefill-sized attention for one sequence: heads run one after another, each as two SGEMMs that BLAS spreads
    /// over the cores. q, o: [n, heads*head_dim] row stride qStride; scores: scratch of at least n*L floats.
    /// </summary>
    static void CacheAttentionGemm(ReadOnlySpan<float> q, int qStride, KvCache cache, int layer, int start, int n,
        Span<float> o, Span<float> scores)
    {
        var c = cache.Config;
        int hd = c.HeadDim, group = c.Heads / c.KvHeads, L = start + n, cap = cache.Capacity;
        float scale = 1f / MathF.Sqrt(hd);
        var sc = scores.Slice(0, n * L);
        for (int h = 0; h < c.Heads; h++)
        {
            int g = h / group;
            var kg = cache.Keys[layer].AsSpan(g * cap * hd, L * hd);
            var vg = cache.Values[layer].AsSpan(g * cap * hd, L * hd);
            // S[n, L] = scale * Q_h[n, hd] · K_g[L, hd]ᵀ
            Blas.Sgemm(false, true, n, L, hd, scale, q.Slice(h * hd), qStride, kg, hd, 0f, sc, L);
            for (int i = 0; i < n; i++) Ops.MaskedSoftmax(sc.Slice(i * L, L), start + i + 1);
            // O_h[n, hd] = P[n, L] · V_g[L, hd]
            Blas.Sgemm(false, false, n, hd, L, 1f, sc, L, vg, hd, 0f, o.Slice(h * hd), qStride);
        }
    }

    /// <summary>
    /// Decode-sized attention for one head of one sequence (n small): dot products and weighted sums row by row.
    /// scores: scratch of at least L floats.
    /// </summary>
    static void CacheAttentionHead(ReadOnlySpan<float> q, int qStride, KvCache cache, int layer, int start, int n, int h,
        Span<float> o, Span<float> scores)
    {
        var c = cache.Config;
        int hd = c.HeadDim, g = h / (c.Heads / c.KvHeads), cap = cache.Capacity;
        float scale = 1f / MathF.Sqrt(hd);
        var keys = cache.Keys[layer].AsSpan(g * cap * hd);
        var values = cache.Values[layer].AsSpan(g * cap * hd);
        for (int i = 0; i < n; i++)
        {
            var qi = q.Slice(i * qStride + h * hd, hd);
            int visible = start + i + 1;
            var s = scores.Slice(0, visible);
            for (int j = 0; j < visible; j++) s[j] = TensorPrimitives.Dot(qi, keys.Slice(j * hd, hd)) * scale;
            Ops.MaskedSoftmax(s, visible);
            var oi = o.Slice(i * qStride + h * hd, hd);
            oi.Clear();
            for (int j = 0; j < visible; j++) TensorPrimitives.MultiplyAdd(values.Slice(j * hd, hd), s[j], oi, oi);
        }
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
                    int col = 0; bool first = true;
                    foreach (var part in run.Prefix.Parts)
                    {
                        int p = part.Length;
                        if (p == 0) continue;
                        Blas.Sgemm(false, false, run.M, hd, p, 1f, S.Slice((run.Rho - ch.Rho) * ld + col), ld,
                            part.Values[l].AsSpan(g * p * hd, p * hd), hd, first ? 0f : 1f, _op.AsSpan(run.Rho * hd, run.M * hd), hd);
                        col += p; first = false;
                    }
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
            int col = 0;
            foreach (var part in run.Prefix.Parts)
            {
                int p = part.Length;
                if (p == 0) continue;
                Blas.Sgemm(false, true, run.M, p, hd, scale, _qp.AsSpan(run.Rho * hd, run.M * hd), hd,
                    part.Keys[l].AsSpan(g * p * hd, p * hd), hd, 0f, S.Slice((run.Rho - ch.Rho) * ld + col), ld);
                col += p;
            }
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
