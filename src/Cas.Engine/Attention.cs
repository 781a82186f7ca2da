using System.Numerics.Tensors;
using Cas.Engine.Compute;

namespace Cas.Engine;

/// <summary>
/// Causal multi-head attention with grouped KV heads over a sequence's cache: the prefix
/// (cartridge) slots, earlier tokens, and the new tokens themselves.
///
/// PyTorch, per head h with kv head g = h / (heads / kv_heads):
///   S = Q_h @ K_g[:L].T / sqrt(head_dim);  S[i, j] = -inf for j > start + i
///   O_h = softmax(S, -1) @ V_g[:L]
/// where the n new tokens sit at slots start..start+n-1 and L = start + n.
/// </summary>
public static class Attention
{
    /// <summary>Rows per sequence at or above which the two products go through SGEMM (prefill/training).</summary>
    public const int GemmMinRows = 8;

    /// <summary>
    /// Prefill-sized attention for one sequence: heads run one after another, each as two SGEMMs
    /// that BLAS spreads over the cores.
    /// q, o: [n, heads*head_dim] row stride qStride; scores: scratch of at least n*L floats.
    /// </summary>
    public static void ForwardGemm(ReadOnlySpan<float> q, int qStride, KvCache cache, int layer, int start, int n,
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
            for (int i = 0; i < n; i++)
            {
                int visible = start + i + 1;
                var row = sc.Slice(i * L, L);
                Ops.Softmax(row.Slice(0, visible));
                row.Slice(visible).Clear();
            }
            // O_h[n, hd] = P[n, L] · V_g[L, hd]
            Blas.Sgemm(false, false, n, hd, L, 1f, sc, L, vg, hd, 0f, o.Slice(h * hd), qStride);
        }
    }

    /// <summary>
    /// Decode-sized attention for one head of one sequence (n small): dot products and
    /// weighted sums row by row. scores: scratch of at least L floats.
    /// </summary>
    public static void ForwardHead(ReadOnlySpan<float> q, int qStride, KvCache cache, int layer, int start, int n, int h,
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
            Ops.Softmax(s);
            var oi = o.Slice(i * qStride + h * hd, hd);
            oi.Clear();
            for (int j = 0; j < visible; j++) TensorPrimitives.MultiplyAdd(values.Slice(j * hd, hd), s[j], oi, oi);
        }
    }
}
