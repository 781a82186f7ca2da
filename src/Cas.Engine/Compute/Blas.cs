using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Cas.Engine.Compute;

public enum BlasBackend { Managed, Blis, OpenBlas }

/// <summary>
/// Row-major single-precision GEMM: C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C.
/// Uses cblas_sgemm from BLIS or OpenBLAS when installed (loaded at run time with NativeLibrary),
/// else a managed kernel (logged once). Measured on the 2-core dev machine (AVX-512, 37 GB/s memory read):
/// OpenBLAS reaches ≈230 GFLOP/s at 2048³ where Debian's BLIS (generic kernels on this CPU) reaches ≈46, and at
/// M = 1 OpenBLAS manages ≈13 GFLOP/s and BLIS ≈35 in cache but only ≈18 GB/s from memory. So decode shapes —
/// 1 ≤ M ≤ <see cref="FewRowsMax"/> against a transposed B, y = x·Wᵀ — go to a managed kernel that reads each
/// weight row once for all M rows on both cores: batch-1 decode of SmolLM2-135M went from 28.7 tok/s (BLIS,
/// 41% of the bandwidth bound) to 54.6 tok/s (78%). Everything larger goes to OpenBLAS.
/// Environment: CAS_BLAS=blis|openblas|managed forces one backend for every shape.
/// </summary>
public static unsafe class Blas
{
    const int RowMajor = 101, NoTrans = 111, Trans = 112;

    // cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    static delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> s_blis;
    static delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> s_openblas;
    static BlasBackend s_large = BlasBackend.Managed, s_small = BlasBackend.Managed;
    static bool s_smallKernel = true;

    /// <summary>Most rows of A for which the managed decode kernels are used when B is transposed: the 16-bit ones
    /// (<see cref="WeightProduct"/>) always, the fp32 one unless <see cref="FewRowsMax"/> allows more.</summary>
    public const int SmallRows = 8;

    /// <summary>
    /// Most rows of A for which fp32 products against Wᵀ take the managed few-rows kernel: 16 where 512-bit vectors run
    /// its register-tiled path (batch-16 decode: projections 37 ms per step against OpenBLAS's 43–66 ms, and OpenBLAS's
    /// spinning threads no longer slow the attention between them), else <see cref="SmallRows"/>.
    /// </summary>
    public static readonly int FewRowsMax = Vector512.IsHardwareAccelerated ? 16 : SmallRows;
    static int s_threads = Environment.ProcessorCount;

    /// <summary>Messages about backend choice (written once, to stderr by default).</summary>
    public static Action<string> Log { get; set; } = m => Console.Error.WriteLine(m);

    /// <summary>Backend used for large products (prefill, training).</summary>
    public static BlasBackend LargeBackend { get { Init(); return s_large; } }
    /// <summary>Backend used for products with M ≤ 4 that the few-rows kernel does not take (M = 1, or B not transposed).</summary>
    public static BlasBackend SmallBackend { get { Init(); return s_small; } }

    /// <summary>Whether products with M ≤ <see cref="FewRowsMax"/> against Wᵀ take the managed few-rows kernel (not when a backend is forced).</summary>
    internal static bool FewRowsKernel { get { Init(); return s_smallKernel; } }

    static int s_init;
    static readonly object s_lock = new();

    static void Init()
    {
        if (Volatile.Read(ref s_init) != 0) return;
        lock (s_lock)
        {
            if (s_init != 0) return;
            s_blis = (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)
                Load(["libblis.so.4", "libblis.so", "libblis-mt.so.4"], "bli_thread_set_num_threads", true);
            s_openblas = (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)
                Load(["libopenblas.so.0", "libopenblas.so"], "openblas_set_num_threads", false);
            string? forced = Environment.GetEnvironmentVariable("CAS_BLAS")?.Trim().ToLowerInvariant();
            if (forced is "managed") { s_large = s_small = BlasBackend.Managed; s_smallKernel = false; }
            else if (forced is "openblas" && s_openblas != null) { s_large = s_small = BlasBackend.OpenBlas; s_smallKernel = false; }
            else if (forced is "blis" && s_blis != null) { s_large = s_small = BlasBackend.Blis; s_smallKernel = false; }
            else
            {
                if (forced is { Length: > 0 }) Log($"cas: CAS_BLAS={forced} is not available here; choosing automatically.");
                s_large = s_openblas != null ? BlasBackend.OpenBlas : s_blis != null ? BlasBackend.Blis : BlasBackend.Managed;
                s_small = s_blis != null ? BlasBackend.Blis : s_large;
                s_smallKernel = true;
            }
            if (s_large == BlasBackend.Managed)
                Log("cas: no BLAS library found (install libblis4-pthread or libopenblas0-pthread); using the managed SGEMM kernel, which is several times slower.");
            Volatile.Write(ref s_init, 1);
        }
    }

    static void* Load(string[] names, string setThreads, bool blis)
    {
        foreach (var name in names)
        {
            if (!NativeLibrary.TryLoad(name, out var lib)) continue;
            if (!NativeLibrary.TryGetExport(lib, "cblas_sgemm", out var fn)) continue;
            if (NativeLibrary.TryGetExport(lib, setThreads, out var st))
            {
                if (blis) ((delegate* unmanaged<long, void>)st)(s_threads);
                else ((delegate* unmanaged<int, void>)st)(1);   // we split its products over the cores (OpenBlasSplit)
            }
            return (void*)fn;
        }
        return null;
    }

    /// <summary>Restores the automatic per-shape choice.</summary>
    public static void UseAutomatic()
    {
        lock (s_lock) { s_init = 0; }
        Init();
    }

    /// <summary>Forces one backend for every shape (tests and benchmarks). Returns false when that library is not installed.</summary>
    public static bool TryUse(BlasBackend backend)
    {
        Init();
        if (backend == BlasBackend.Blis && s_blis == null) return false;
        if (backend == BlasBackend.OpenBlas && s_openblas == null) return false;
        s_large = s_small = backend;
        s_smallKernel = false;
        return true;
    }

    /// <summary>C[M,N] = alpha * op(A) · op(B) + beta * C, row-major; lda/ldb/ldc are row strides.</summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k,
        float alpha, ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc)
    {
        if (m == 0 || n == 0) return;
        CheckSizes(transA, transB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        Init();
        var backend = m <= 4 ? s_small : s_large;
        if (s_smallKernel && transB && !transA && m <= FewRowsMax && k > 0)
        {
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
                ManagedGemm.FewRows(m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
            return;
        }
        fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c)
        {
            switch (backend)
            {
                case BlasBackend.Blis:
                    s_blis(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
                    break;
                case BlasBackend.OpenBlas:
                    if (s_threads > 1 && (long)m * n * k >= SplitMinWork)
                        OpenBlasSplit(transA, transB, m, n, k, alpha, (nint)pa, lda, (nint)pb, ldb, beta, (nint)pc, ldc);
                    else
                        s_openblas(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
                    break;
                default:
                    ManagedGemm.Run(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
                    break;
            }
        }
    }

    /// <summary>Multiply-adds (M·N·K) from which an OpenBLAS product is split over the cores (OpenBLAS's own threshold
    /// for going multi-threaded is about the same, 2^18).</summary>
    const long SplitMinWork = 1 << 18;

    /// <summary>
    /// OpenBLAS runs single-threaded (set at load) and a large product is split here into one block of C per core on
    /// .NET's thread pool: rows of C when M ≥ N, else columns, at multiples of 16. With OpenBLAS's own threads, its
    /// idle worker kept spinning after each product while our parallel loops (attention, norms) ran next on the same
    /// two cores; one pool for both took prefill attention 136–261 → 102–164 ms per 512 tokens and prefill 1.04× in
    /// paired runs, and results are bit-identical (each block is the same kernel over the same K).
    /// </summary>
    static void OpenBlasSplit(bool transA, bool transB, int m, int n, int k, float alpha, nint a, int lda, nint b, int ldb, float beta, nint c, int ldc)
    {
        int parts = s_threads;
        bool byRows = m >= n;
        int len = byRows ? m : n;
        Parallel.For(0, parts, i =>
        {
            int lo = (int)((long)len * i / parts) & ~15, hi = i == parts - 1 ? len : (int)((long)len * (i + 1) / parts) & ~15;
            if (hi <= lo) return;
            float* pa = (float*)a, pb = (float*)b, pc = (float*)c;
            if (byRows)
                s_openblas(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, hi - lo, n, k, alpha,
                    transA ? pa + lo : pa + (long)lo * lda, lda, pb, ldb, beta, pc + (long)lo * ldc, ldc);
            else
                s_openblas(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, hi - lo, k, alpha,
                    pa, lda, transB ? pb + (long)lo * ldb : pb + lo, ldb, beta, pc + lo, ldc);
        });
    }

    static void CheckSizes(bool transA, bool transB, int m, int n, int k, int aLen, int lda, int bLen, int ldb, int cLen, int ldc)
    {
        long needA = transA ? (long)(k - 1) * lda + m : (long)(m - 1) * lda + k;
        long needB = transB ? (long)(n - 1) * ldb + k : (long)(k - 1) * ldb + n;
        long needC = (long)(m - 1) * ldc + n;
        if (k > 0 && (aLen < needA || bLen < needB) || cLen < needC
            || lda < (transA ? m : k) || ldb < (transB ? k : n) || ldc < n)
            ThrowBadGemm(m, n, k, aLen, lda, bLen, ldb, cLen, ldc);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void ThrowBadGemm(int m, int n, int k, int aLen, int lda, int bLen, int ldb, int cLen, int ldc) =>
        throw new ArgumentException($"sgemm operands too small: M={m} N={n} K={k}, |A|={aLen} lda={lda}, |B|={bLen} ldb={ldb}, |C|={cLen} ldc={ldc}.");
}

/// <summary>The fallback SGEMM: B is packed transposed so every C element is one contiguous dot product.</summary>
static unsafe class ManagedGemm
{
    public static void Run(bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        // Pack op(A) as [M,K] rows and op(B) as [N,K] rows so the inner loop is a dot of contiguous rows.
        float[]? aPack = null, bPack = null;
        float* ap = a; int aStride = lda;
        if (transA)
        {
            aPack = GC.AllocateUninitializedArray<float>(m * k);
            for (int i = 0; i < m; i++) for (int p = 0; p < k; p++) aPack[i * k + p] = a[(long)p * lda + i];
            aStride = k;
        }
        float* bp = b; int bStride = ldb;
        if (!transB)
        {
            bPack = GC.AllocateUninitializedArray<float>(n * k);
            for (int p = 0; p < k; p++) for (int j = 0; j < n; j++) bPack[j * k + p] = b[(long)p * ldb + j];
            bStride = k;
        }
        fixed (float* aPk = aPack) fixed (float* bPk = bPack)
        {
            float* A = aPack != null ? aPk : ap;
            float* B = bPack != null ? bPk : bp;
            int sa = aStride, sb = bStride;
            // Parallelise over the larger of M and N.
            if (m >= n)
                Parallel.For(0, m, i => Row(A + (long)i * sa, B, sb, c + (long)i * ldc, n, k, alpha, beta));
            else
                Parallel.For(0, n, j =>
                {
                    var bj = new ReadOnlySpan<float>(B + (long)j * sb, k);
                    for (int i = 0; i < m; i++)
                    {
                        float dot = System.Numerics.Tensors.TensorPrimitives.Dot(new ReadOnlySpan<float>(A + (long)i * sa, k), bj);
                        float* ci = c + (long)i * ldc + j;
                        *ci = beta == 0 ? alpha * dot : alpha * dot + beta * *ci;
                    }
                });
        }
    }

    /// <summary>
    /// C[M,N] = alpha·A[M,K]·B[N,K]ᵀ + beta·C for small M: each row of B (a weight row) is read once and
    /// dotted with all M rows of A, so the cost is one pass over B whatever M is.
    /// </summary>
    public static void FewRows(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        const int Block = 64;
        int blocks = (n + Block - 1) / Block;
        if ((long)n * k < 1 << 15) { FewRowsBlock(0, n, m, k, alpha, a, lda, b, ldb, beta, c, ldc); return; }
        Parallel.For(0, blocks, blk => FewRowsBlock(blk * Block, Math.Min(n, (blk + 1) * Block), m, k, alpha, a, lda, b, ldb, beta, c, ldc));
    }

    internal static void FewRowsBlock(int j0, int j1, int m, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        int j = j0;
        if (m >= TileRows && k % 16 == 0 && Vector512.IsHardwareAccelerated)
            j = TiledBlock(j0, j1, m, k, alpha, a, lda, b, ldb, beta, c, ldc);
        for (; j < j1; j++)
        {
            var bj = new ReadOnlySpan<float>(b + (long)j * ldb, k);
            for (int i = 0; i < m; i++)
            {
                float dot = System.Numerics.Tensors.TensorPrimitives.Dot(new ReadOnlySpan<float>(a + (long)i * lda, k), bj);
                float* ci = c + (long)i * ldc + j;
                *ci = beta == 0 ? alpha * dot : alpha * dot + beta * *ci;
            }
        }
    }

    /// <summary>Rows of A per register tile of <see cref="TiledBlock"/>; fewer rows use one dot product per C element.</summary>
    const int TileRows = 4;

    /// <summary>
    /// <see cref="FewRowsBlock"/> for M ≥ <see cref="TileRows"/> (batched decode) with 512-bit vectors: C for four rows
    /// of B and four rows of A at a time, sixteen accumulators in registers, so each loaded vector feeds four FMAs (one
    /// dot product per element loads both operands for every FMA). Rows of B stream from memory once; the M rows of A
    /// stay in L1/L2. Needs K % 16 == 0. Returns the first row of B it left (the last 1–3 rows of a block that is not a
    /// multiple of 4), for the caller's dot-product loop.
    /// </summary>
    static int TiledBlock(int j0, int j1, int m, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc)
    {
        int j = j0;
        for (; j + 4 <= j1; j += 4)
        {
            float* b0 = b + (long)j * ldb, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb;
            int i = 0;
            for (; i + TileRows <= m; i += TileRows)
            {
                float* a0 = a + (long)i * lda, a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda;
                Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default,
                    c10 = default, c11 = default, c12 = default, c13 = default,
                    c20 = default, c21 = default, c22 = default, c23 = default,
                    c30 = default, c31 = default, c32 = default, c33 = default;
                for (int d = 0; d < k; d += 16)
                {
                    var w0 = Vector512.Load(b0 + d); var w1 = Vector512.Load(b1 + d);
                    var w2 = Vector512.Load(b2 + d); var w3 = Vector512.Load(b3 + d);
                    var x = Vector512.Load(a0 + d);
                    c00 = Vector512.FusedMultiplyAdd(w0, x, c00); c01 = Vector512.FusedMultiplyAdd(w1, x, c01);
                    c02 = Vector512.FusedMultiplyAdd(w2, x, c02); c03 = Vector512.FusedMultiplyAdd(w3, x, c03);
                    x = Vector512.Load(a1 + d);
                    c10 = Vector512.FusedMultiplyAdd(w0, x, c10); c11 = Vector512.FusedMultiplyAdd(w1, x, c11);
                    c12 = Vector512.FusedMultiplyAdd(w2, x, c12); c13 = Vector512.FusedMultiplyAdd(w3, x, c13);
                    x = Vector512.Load(a2 + d);
                    c20 = Vector512.FusedMultiplyAdd(w0, x, c20); c21 = Vector512.FusedMultiplyAdd(w1, x, c21);
                    c22 = Vector512.FusedMultiplyAdd(w2, x, c22); c23 = Vector512.FusedMultiplyAdd(w3, x, c23);
                    x = Vector512.Load(a3 + d);
                    c30 = Vector512.FusedMultiplyAdd(w0, x, c30); c31 = Vector512.FusedMultiplyAdd(w1, x, c31);
                    c32 = Vector512.FusedMultiplyAdd(w2, x, c32); c33 = Vector512.FusedMultiplyAdd(w3, x, c33);
                }
                Put(c + (long)i * ldc + j, c00, c01, c02, c03, alpha, beta);
                Put(c + (long)(i + 1) * ldc + j, c10, c11, c12, c13, alpha, beta);
                Put(c + (long)(i + 2) * ldc + j, c20, c21, c22, c23, alpha, beta);
                Put(c + (long)(i + 3) * ldc + j, c30, c31, c32, c33, alpha, beta);
            }
            for (; i < m; i++)
            {
                float* ai = a + (long)i * lda;
                Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
                for (int d = 0; d < k; d += 16)
                {
                    var x = Vector512.Load(ai + d);
                    s0 = Vector512.FusedMultiplyAdd(Vector512.Load(b0 + d), x, s0);
                    s1 = Vector512.FusedMultiplyAdd(Vector512.Load(b1 + d), x, s1);
                    s2 = Vector512.FusedMultiplyAdd(Vector512.Load(b2 + d), x, s2);
                    s3 = Vector512.FusedMultiplyAdd(Vector512.Load(b3 + d), x, s3);
                }
                Put(c + (long)i * ldc + j, s0, s1, s2, s3, alpha, beta);
            }
        }
        return j;
    }

    /// <summary>c[0..4) = alpha·(Σs0, Σs1, Σs2, Σs3) + beta·c (c not read when beta is 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Put(float* c, Vector512<float> s0, Vector512<float> s1, Vector512<float> s2, Vector512<float> s3, float alpha, float beta)
    {
        float d0 = Vector512.Sum(s0), d1 = Vector512.Sum(s1), d2 = Vector512.Sum(s2), d3 = Vector512.Sum(s3);
        if (beta == 0) { c[0] = alpha * d0; c[1] = alpha * d1; c[2] = alpha * d2; c[3] = alpha * d3; }
        else { c[0] = alpha * d0 + beta * c[0]; c[1] = alpha * d1 + beta * c[1]; c[2] = alpha * d2 + beta * c[2]; c[3] = alpha * d3 + beta * c[3]; }
    }

    static void Row(float* ai, float* B, int sb, float* ci, int n, int k, float alpha, float beta)
    {
        var a = new ReadOnlySpan<float>(ai, k);
        for (int j = 0; j < n; j++)
        {
            float dot = System.Numerics.Tensors.TensorPrimitives.Dot(a, new ReadOnlySpan<float>(B + (long)j * sb, k));
            ci[j] = beta == 0 ? alpha * dot : alpha * dot + beta * ci[j];
        }
    }
}
