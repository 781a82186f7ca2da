using System.Numerics.Tensors;

namespace Cas.Engine.Compute;

/// <summary>
/// Row-wise elementwise kernels over TensorPrimitives, each forward beside its backward. Shapes in comments;
/// destination last.
/// </summary>
public static class Ops
{
    /// <summary>out = x * w / sqrt(mean(x²) + eps) for one row; returns 1/rms (backward needs it).</summary>
    public static float RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps, Span<float> dst)
    {
        float ss = TensorPrimitives.SumOfSquares(x);
        float inv = 1f / MathF.Sqrt(ss / x.Length + eps);
        TensorPrimitives.Multiply(x, inv, dst);
        TensorPrimitives.Multiply(dst, w, dst);
        return inv;
    }

    /// <summary>
    /// Backward of <see cref="RmsNorm"/> y = w∘x·inv, inv = 1/sqrt(mean(x²)+eps). Given dy (destroyed),
    /// dx (+)= inv·(dy∘w) − x·inv³·Σ(dy∘w∘x)/n. dx may be the same memory as dy when accumulate is false.
    /// </summary>
    public static void RmsNormBackward(ReadOnlySpan<float> x, float inv, ReadOnlySpan<float> w, Span<float> dy, Span<float> dx, bool accumulate)
    {
        TensorPrimitives.Multiply(dy, w, dy);
        float c = TensorPrimitives.Dot(dy, x) * inv * inv * inv / x.Length;
        TensorPrimitives.Multiply(dy, inv, dy);
        TensorPrimitives.MultiplyAdd(x, -c, dy, dy);
        if (accumulate) TensorPrimitives.Add(dx, dy, dx);
        else dy.CopyTo(dx);
    }

    /// <summary>h = silu(gate)·up elementwise. h may be the same memory as gate (inference runs it in place).</summary>
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> h)
    {
        Span<float> tBuf = stackalloc float[256];
        for (int i = 0; i < gate.Length; i += 256)
        {
            int n = Math.Min(256, gate.Length - i);
            var g = gate.Slice(i, n); var t = tBuf.Slice(0, n);
            TensorPrimitives.Sigmoid(g, t);                  // σ(g)
            TensorPrimitives.Multiply(t, g, t);              // silu(g)
            TensorPrimitives.Multiply(t, up.Slice(i, n), h.Slice(i, n)); // silu(g)·u
        }
    }

    /// <summary>
    /// Backward of <see cref="SwiGlu"/>. Given dh in dg: du = dh·silu(g), dg = dh·u·σ(g)·(1 + g·(1−σ(g))).
    /// </summary>
    public static void SwiGluBackward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dg, Span<float> du)
    {
        Span<float> sBuf = stackalloc float[256];
        Span<float> tBuf = stackalloc float[256];
        for (int i = 0; i < gate.Length; i += 256)
        {
            int n = Math.Min(256, gate.Length - i);
            var g = gate.Slice(i, n); var u = up.Slice(i, n); var dh = dg.Slice(i, n); var dU = du.Slice(i, n);
            var s = sBuf.Slice(0, n); var t = tBuf.Slice(0, n);
            TensorPrimitives.Sigmoid(g, s);           // s = σ(g)
            TensorPrimitives.Multiply(g, s, t);       // t = silu(g)
            TensorPrimitives.Multiply(dh, t, dU);     // du = dh·silu(g)
            // silu'(g) = s + t·(1 − s) = s + t − t·s
            TensorPrimitives.Multiply(t, s, t);       // t = g·s²
            TensorPrimitives.MultiplyAdd(g, s, s, s); // s = s + g·s
            TensorPrimitives.Subtract(s, t, s);       // s = silu'(g)
            TensorPrimitives.Multiply(dh, u, dh);
            TensorPrimitives.Multiply(dh, s, dh);     // dg = dh·u·silu'(g)
        }
    }

    /// <summary>In-place softmax of one row; subtracts the row max first.</summary>
    public static void Softmax(Span<float> x)
    {
        float sum = ExpFromMax(x, out _);
        TensorPrimitives.Multiply(x, 1f / sum, x);
    }

    /// <summary>x = exp(x − max x) in place (the unnormalised softmax); returns Σ x, max x in <paramref name="max"/>.</summary>
    public static float ExpFromMax(Span<float> x, out float max)
    {
        max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, x);
        TensorPrimitives.Exp(x, x);
        return TensorPrimitives.Sum(x);
    }

    /// <summary>
    /// One attention score row under the causal mask: softmax over the first <paramref name="visible"/> entries,
    /// zeros after them (the masked keys get probability 0).
    /// </summary>
    public static void MaskedSoftmax(Span<float> row, int visible)
    {
        Softmax(row.Slice(0, visible));
        row.Slice(visible).Clear();
    }

    /// <summary>
    /// Runs body(r0, r1) over [0, rows) split into contiguous ranges of at least <paramref name="minRows"/> rows, at
    /// most one per core (inline when rows are few): the row-wise elementwise work of a forward or backward pass.
    /// </summary>
    public static void ParallelRows(int rows, Action<int, int> body, int minRows = 4)
    {
        int chunks = Math.Min(Environment.ProcessorCount, rows / minRows);
        if (chunks <= 1) { body(0, rows); return; }
        Parallel.For(0, chunks, c => body((int)((long)rows * c / chunks), (int)((long)rows * (c + 1) / chunks)));
    }

    /// <summary>log-softmax of a row into dst (numerically stable).</summary>
    public static void LogSoftmax(ReadOnlySpan<float> x, Span<float> dst)
    {
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, dst);
        // log Σ exp(x - max), accumulated in double for long vocabularies.
        double sum = 0;
        foreach (var v in dst) sum += Math.Exp(v);
        TensorPrimitives.Subtract(dst, (float)Math.Log(sum), dst);
    }

    /// <summary>y[rows, out] += bias[out] for each row.</summary>
    public static void AddBiasRows(Span<float> y, ReadOnlySpan<float> bias, int rows)
    {
        int d = bias.Length;
        for (int r = 0; r < rows; r++) TensorPrimitives.Add(y.Slice(r * d, d), bias, y.Slice(r * d, d));
    }

    /// <summary>y[rows, out] = x[rows, in] · W[out, in]ᵀ (+ bias).</summary>
    public static void Linear(ReadOnlySpan<float> x, int rows, ReadOnlySpan<float> w, int outDim, int inDim, Span<float> y, ReadOnlySpan<float> bias = default)
    {
        Blas.Sgemm(false, true, rows, outDim, inDim, 1f, x, inDim, w, inDim, 0f, y, outDim);
        if (!bias.IsEmpty) AddBiasRows(y.Slice(0, rows * outDim), bias, rows);
    }

    /// <summary>y = x·Wᵀ (+ bias) with W in its stored precision (<see cref="WeightProduct"/>).</summary>
    public static void Linear(ReadOnlySpan<float> x, int rows, Models.WeightTensor w, int outDim, int inDim, Span<float> y, ReadOnlySpan<float> bias = default)
    {
        WeightProduct.TimesTransposed(x, rows, w, outDim, inDim, 0f, y, outDim);
        if (!bias.IsEmpty) AddBiasRows(y.Slice(0, rows * outDim), bias, rows);
    }
}
