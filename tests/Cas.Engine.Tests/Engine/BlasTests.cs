using Cas.Engine.Compute;

namespace Cas.Engine.Tests.Engine;

public class BlasTests
{
    /// <summary>Every installed backend agrees with a float64 triple loop, for all transposes and padded strides.</summary>
    [Theory]
    [InlineData(BlasBackend.Managed)]
    [InlineData(BlasBackend.Blis)]
    [InlineData(BlasBackend.OpenBlas)]
    public void SgemmMatchesNaiveProduct(BlasBackend backend)
    {
        var before = (Blas.LargeBackend, Blas.SmallBackend);
        if (!Blas.TryUse(backend)) Assert.Skip($"{backend} is not installed on this machine (apt-get install libblis4-pthread / libopenblas0-pthread).");
        try { CheckAgainstNaive(backend.ToString()); }
        finally { Blas.TryUse(before.LargeBackend); Blas.UseAutomatic(); }
    }

    /// <summary>The automatic per-shape choice (few-rows decode kernel for M ≤ Blas.FewRowsMax against Wᵀ, libraries otherwise).</summary>
    [Fact]
    public void AutomaticChoiceMatchesNaiveProduct()
    {
        Blas.UseAutomatic();
        CheckAgainstNaive("automatic");
    }

    static void CheckAgainstNaive(string backend)
    {
        {
            var rng = new Random(5);
            // (4..16, n, k % 16 == 0) take the register-tiled few-rows path where 512-bit vectors run it: a row count that
            // is not a multiple of 4, and a column count that leaves 1–3 rows of B after the 4-row tiles. The last two
            // (M·N·K ≥ 2^18) are split over the cores for OpenBLAS, by columns (M < N) and by rows, at a point that is
            // not the middle.
            foreach (var (m, n, k) in new[] { (1, 7, 5), (3, 1, 9), (1, 300, 200), (8, 129, 70), (17, 33, 65), (64, 48, 31),
                (4, 9, 32), (13, 66, 48), (16, 131, 64), (7, 3, 16), (70, 129, 40), (150, 33, 70) })
            foreach (bool ta in new[] { false, true })
            foreach (bool tb in new[] { false, true })
            {
                int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
                var a = new float[(ta ? k : m) * lda]; var b = new float[(tb ? n : k) * ldb]; var c = new float[m * ldc];
                for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() - 0.5);
                for (int i = 0; i < b.Length; i++) b[i] = (float)(rng.NextDouble() - 0.5);
                for (int i = 0; i < c.Length; i++) c[i] = (float)(rng.NextDouble() - 0.5);
                var c0 = (float[])c.Clone();
                Blas.Sgemm(ta, tb, m, n, k, 0.7f, a, lda, b, ldb, 0.3f, c, ldc);
                for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double s = 0;
                    for (int p = 0; p < k; p++) s += (double)(ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
                    double expect = 0.7 * s + 0.3 * c0[i * ldc + j];
                    // fp32 accumulation of ≤70 products of |x|≤0.5: absolute error well under 1e-5.
                    Assert.True(Math.Abs(c[i * ldc + j] - expect) < 1e-5, $"{backend} m={m} n={n} k={k} ta={ta} tb={tb} at ({i},{j}): {c[i * ldc + j]} vs {expect}");
                }
                // Padding columns of C are untouched.
                for (int i = 0; i < m; i++) Assert.Equal(c0[i * ldc + n], c[i * ldc + n]);
            }
        }
    }

    [Fact]
    public void SgemmRejectsOperandsThatAreTooSmall()
    {
        var ex = Assert.Throws<ArgumentException>(() => Blas.Sgemm(false, false, 4, 4, 4, 1f, new float[15], 4, new float[16], 4, 0f, new float[16], 4));
        Assert.Contains("M=4 N=4 K=4", ex.Message);
    }
}
