using System.Numerics.Tensors;

namespace Cas.Engine.Compute;

/// <summary>Row-wise elementwise kernels over TensorPrimitives. Shapes in comments; destination last.</summary>
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

    /// <summary>RMSNorm over each of <paramref name="rows"/> rows of width w.Length.</summary>
    public static void RmsNormRows(ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps, int rows, Span<float> dst)
    {
        int d = w.Length;
        for (int r = 0; r < rows; r++) RmsNorm(x.Slice(r * d, d), w, eps, dst.Slice(r * d, d));
    }

    /// <summary>gate = silu(gate) * up elementwise; up is overwritten (used as scratch).</summary>
    public static void SwiGlu(Span<float> gate, Span<float> up)
    {
        // silu(g)·u = g·u·σ(g)
        TensorPrimitives.Multiply(up, gate, up);   // up   = g·u
        TensorPrimitives.Sigmoid(gate, gate);      // gate = σ(g)
        TensorPrimitives.Multiply(gate, up, gate); // gate = g·u·σ(g)
    }

    /// <summary>In-place softmax of one row; subtracts the row max first.</summary>
    public static void Softmax(Span<float> x)
    {
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, x);
        TensorPrimitives.Exp(x, x);
        float sum = TensorPrimitives.Sum(x);
        TensorPrimitives.Multiply(x, 1f / sum, x);
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
}
