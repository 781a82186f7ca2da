using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using Cas.Engine.Models;

namespace Cas.Engine.Compute;

/// <summary>
/// Products with a weight matrix in its stored precision (<see cref="WeightTensor"/>). fp32 goes straight to
/// <see cref="Blas.Sgemm"/>. A 16-bit matrix is widened inside the kernel, so memory holds and streams half the bytes:
/// few rows (decode) read each 16-bit weight row once, widen it into a small per-thread buffer that stays in L1 and dot
/// it with every activation row; many rows (prefill, training) widen a panel of the matrix into a pooled fp32 buffer
/// (≈2 MB, cache-sized) and run SGEMM on it, panel after panel. Widening is exact, so results differ from fp32 weights
/// only by the weights' own rounding.
/// </summary>
public static unsafe class WeightProduct
{
    /// <summary>Floats of the pooled panel a 16-bit matrix is widened into before SGEMM.</summary>
    const int PanelFloats = 1 << 19;
    [ThreadStatic] static float[]? t_panel;
    [ThreadStatic] static float[]? t_row;

    /// <summary>y[rows, outDim] (row stride ldy) = x[rows, inDim] · Wᵀ + beta·y, W stored [outDim, inDim].</summary>
    public static void TimesTransposed(ReadOnlySpan<float> x, int rows, WeightTensor w, int outDim, int inDim, float beta, Span<float> y, int ldy)
    {
        if (w.Precision == WeightPrecision.Float32)
        {
            Blas.Sgemm(false, true, rows, outDim, inDim, 1f, x, inDim, w.Floats, inDim, beta, y, ldy);
            return;
        }
        if (rows == 0) return;
        if (w.Length < (long)outDim * inDim) throw new ArgumentException($"weight holds {w.Length} values, {outDim}×{inDim} needed.");
        if (x.Length < rows * inDim || y.Length < (rows - 1) * ldy + outDim) throw new ArgumentException("x or y is too small for this product.");
        if (rows <= Blas.SmallRows)
        {
            fixed (float* px = x) fixed (ushort* pb = w.Bits) fixed (float* py = y)
                FewRows16(rows, outDim, inDim, px, pb, w.Precision == WeightPrecision.BFloat16, beta, py, ldy);
            return;
        }
        int panel = Math.Max(16, PanelFloats / inDim);
        var buf = Panel(panel * inDim);
        for (int j0 = 0; j0 < outDim; j0 += panel)
        {
            int pn = Math.Min(panel, outDim - j0);
            WidenParallel(w, j0 * inDim, buf, pn * inDim);
            Blas.Sgemm(false, true, rows, pn, inDim, 1f, x, inDim, buf, inDim, beta, y.Slice(j0), ldy);
        }
    }

    /// <summary>y[rows, n] (row stride ldy) = a[rows, k] (row stride lda) · W + beta·y, W stored [k, n] (the backward of
    /// <see cref="TimesTransposed"/>: dx = dy · W).</summary>
    public static void Times(ReadOnlySpan<float> a, int lda, int rows, WeightTensor w, int k, int n, float beta, Span<float> y, int ldy)
    {
        if (w.Precision == WeightPrecision.Float32)
        {
            Blas.Sgemm(false, false, rows, n, k, 1f, a, lda, w.Floats, n, beta, y, ldy);
            return;
        }
        if (w.Length < (long)k * n) throw new ArgumentException($"weight holds {w.Length} values, {k}×{n} needed.");
        int panel = Math.Max(16, PanelFloats / n);
        var buf = Panel(panel * n);
        for (int k0 = 0; k0 < k; k0 += panel)
        {
            int kn = Math.Min(panel, k - k0);
            WidenParallel(w, k0 * n, buf, kn * n);
            Blas.Sgemm(false, false, rows, n, kn, 1f, a.Slice(k0), lda, buf, n, k0 == 0 ? beta : 1f, y, ldy);
        }
    }

    /// <summary>
    /// y_i[rows, outDims[i]] = x[rows, inDim] · W_iᵀ for matrices that read the same x (q/k/v, gate/up). A decode step
    /// (rows ≤ <see cref="Blas.FewRowsMax"/> for fp32, <see cref="Blas.SmallRows"/> for 16-bit) runs them as one parallel loop over 64-row blocks of all of them, so it
    /// pays one barrier instead of one per matrix; more rows run one product each.
    /// </summary>
    public static void TimesTransposedShared(float[] x, int rows, int inDim, WeightTensor[] w, int[] outDims, float[][] y)
    {
        if (rows > (w[0].Precision == WeightPrecision.Float32 ? Blas.FewRowsMax : Blas.SmallRows) || rows == 0 || !Blas.FewRowsKernel)
        {
            for (int i = 0; i < w.Length; i++) TimesTransposed(x.AsSpan(0, rows * inDim), rows, w[i], outDims[i], inDim, 0f, y[i], outDims[i]);
            return;
        }
        const int Block = 64;
        int blocks = 0;
        for (int i = 0; i < w.Length; i++)
        {
            if (w[i].Length < (long)outDims[i] * inDim || y[i].Length < rows * outDims[i] || x.Length < rows * inDim)
                throw new ArgumentException($"matrix {i}: sizes do not match {outDims[i]}×{inDim} for {rows} rows.");
            blocks += (outDims[i] + Block - 1) / Block;
        }
        Parallel.For(0, blocks, blk =>
        {
            int i = 0, first = blk;
            while (first >= (outDims[i] + Block - 1) / Block) { first -= (outDims[i] + Block - 1) / Block; i++; }
            int j0 = first * Block, j1 = Math.Min(outDims[i], j0 + Block), n = outDims[i];
            fixed (float* px = x) fixed (float* py = y[i])
            {
                if (w[i].Precision == WeightPrecision.Float32)
                    fixed (float* pw = w[i].Floats) ManagedGemm.FewRowsBlock(j0, j1, rows, inDim, 1f, px, inDim, pw, inDim, 0f, py, n);
                else
                    fixed (ushort* pw = w[i].Bits) Block16(j0, j1, rows, inDim, px, pw, w[i].Precision == WeightPrecision.BFloat16, 0f, py, n);
            }
        });
    }

    static float[] Panel(int n)
    {
        var b = t_panel;
        if (b == null || b.Length < n) t_panel = b = GC.AllocateUninitializedArray<float>(Math.Max(n, PanelFloats));
        return b;
    }

    static void WidenParallel(WeightTensor w, int start, float[] dst, int count)
    {
        Ops.ParallelRows(count, (i0, i1) => w.Widen(start + i0, dst.AsSpan(i0, i1 - i0)), 1 << 16);
    }

    /// <summary>C[M, N] = A[M, K] · B[N, K]ᵀ + beta·C for M ≤ <see cref="Blas.SmallRows"/>, B 16-bit: each B row widened
    /// once into L1 and dotted with the M rows of A; blocks of 64 rows of B over the cores.</summary>
    static void FewRows16(int m, int n, int k, float* a, ushort* b, bool bf16, float beta, float* c, int ldc)
    {
        const int Block = 64;
        int blocks = (n + Block - 1) / Block;
        if ((long)n * k < 1 << 15) { Block16(0, n, m, k, a, b, bf16, beta, c, ldc); return; }
        Parallel.For(0, blocks, blk => Block16(blk * Block, Math.Min(n, (blk + 1) * Block), m, k, a, b, bf16, beta, c, ldc));
    }

    /// <summary>
    /// bf16 rows widened in registers (a bf16 value is the top half of an fp32: zero-extend, shift left 16) and
    /// multiplied into one accumulator pair per activation row, so each weight is loaded and widened once.
    /// </summary>
    static void BlockBf16(int j0, int j1, int m, int k, float* a, ushort* b, float beta, float* c, int ldc)
    {
        if (m == 1)
        {
            // Batch-1 decode: accumulators in registers.
            for (int j = j0; j < j1; j++)
            {
                ushort* bj = b + (long)j * k;
                var a0 = Vector256<float>.Zero; var a1 = Vector256<float>.Zero;
                for (int d = 0; d < k; d += 16)
                {
                    var (lo, hi) = Vector256.Widen(Vector256.Load(bj + d));
                    a0 = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(lo, 16).AsSingle(), Vector256.Load(a + d), a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.ShiftLeft(hi, 16).AsSingle(), Vector256.Load(a + d + 8), a1);
                }
                float dot = Vector256.Sum(a0 + a1);
                c[j] = beta == 0 ? dot : dot + beta * c[j];
            }
            return;
        }
        Span<Vector256<float>> acc = stackalloc Vector256<float>[2 * Blas.SmallRows];
        for (int j = j0; j < j1; j++)
        {
            ushort* bj = b + (long)j * k;
            acc.Slice(0, 2 * m).Clear();
            for (int d = 0; d < k; d += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(bj + d));
                var wl = Vector256.ShiftLeft(lo, 16).AsSingle();
                var wh = Vector256.ShiftLeft(hi, 16).AsSingle();
                for (int i = 0; i < m; i++)
                {
                    float* ai = a + (long)i * k + d;
                    acc[2 * i] = Vector256.FusedMultiplyAdd(wl, Vector256.Load(ai), acc[2 * i]);
                    acc[2 * i + 1] = Vector256.FusedMultiplyAdd(wh, Vector256.Load(ai + 8), acc[2 * i + 1]);
                }
            }
            for (int i = 0; i < m; i++)
            {
                float dot = Vector256.Sum(acc[2 * i] + acc[2 * i + 1]);
                float* ci = c + (long)i * ldc + j;
                *ci = beta == 0 ? dot : dot + beta * *ci;
            }
        }
    }

    static void Block16(int j0, int j1, int m, int k, float* a, ushort* b, bool bf16, float beta, float* c, int ldc)
    {
        if (bf16 && Vector256.IsHardwareAccelerated && k % 16 == 0) { BlockBf16(j0, j1, m, k, a, b, beta, c, ldc); return; }
        var row = t_row;
        if (row == null || row.Length < k) t_row = row = new float[Math.Max(k, 4096)];
        var r = row.AsSpan(0, k);
        for (int j = j0; j < j1; j++)
        {
            var bits = new ReadOnlySpan<ushort>(b + (long)j * k, k);
            if (bf16) HalfPrecision.BF16ToFloat(bits, r); else HalfPrecision.F16ToFloat(bits, r);
            for (int i = 0; i < m; i++)
            {
                float dot = TensorPrimitives.Dot(new ReadOnlySpan<float>(a + (long)i * k, k), r);
                float* ci = c + (long)i * ldc + j;
                *ci = beta == 0 ? dot : dot + beta * *ci;
            }
        }
    }
}
