using Cas.Engine.Compute;
using Cas.Engine.Models;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Engine;

/// <summary>16-bit weight matrices: the widening kernels, resident bytes, and the fp32 default left as it was.</summary>
public class WeightPrecisionTests
{
    static float[] Random(int n, int seed)
    {
        var r = new Random(seed); var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(r.NextDouble() * 2 - 1);
        return a;
    }

    static void Close(float[] expect, float[] actual, string what, float tol = 1e-5f)
    {
        for (int i = 0; i < expect.Length; i++)
            Assert.True(Math.Abs(expect[i] - actual[i]) <= tol * (1 + Math.Abs(expect[i])), $"{what}: index {i}: {actual[i]} vs {expect[i]}");
    }

    /// <summary>
    /// y = x·Wᵀ + beta·y and y = a·W + beta·y with W in bf16 or fp16 equal SGEMM on the widened fp32 matrix within
    /// 1e-5·(1 + |y|) for x·Wᵀ (64/72-term sums) and 1e-4·(1 + |y|) for a·W (9000-term sums split into panels: float
    /// summation order only), for decode row counts (the few-rows kernel) and prefill row counts
    /// (panel widening; 9000 output rows span two panels); in_dim 64 takes the bf16 kernel that widens in registers, 72 the
    /// widen-a-row-into-L1 kernel.
    /// </summary>
    [Theory]
    [InlineData(WeightPrecision.BFloat16, 1, 64)]
    [InlineData(WeightPrecision.BFloat16, 5, 64)]
    [InlineData(WeightPrecision.BFloat16, 8, 72)]
    [InlineData(WeightPrecision.BFloat16, 40, 64)]
    [InlineData(WeightPrecision.Float16, 1, 64)]
    [InlineData(WeightPrecision.Float16, 40, 72)]
    public void SixteenBitProductsEqualFp32OnWidenedWeights(WeightPrecision precision, int rows, int inDim)
    {
        const int outDim = 9000;
        var w16 = new WeightTensor(Random(outDim * inDim, 1)).ToPrecision(precision);
        var w32 = w16.ToFloatArray();
        var x = Random(rows * inDim, 2);
        var y0 = Random(rows * outDim, 3);

        var want = (float[])y0.Clone(); var got = (float[])y0.Clone();
        Blas.Sgemm(false, true, rows, outDim, inDim, 1f, x, inDim, w32, inDim, 0.5f, want, outDim);
        WeightProduct.TimesTransposed(x, rows, w16, outDim, inDim, 0.5f, got, outDim);
        Close(want, got, $"x·Wᵀ {precision} rows {rows}");

        // Backward shape: a [rows, outDim] · W [outDim, inDim]
        var a = Random(rows * outDim, 4);
        var z0 = Random(rows * inDim, 5);
        var wantB = (float[])z0.Clone(); var gotB = (float[])z0.Clone();
        Blas.Sgemm(false, false, rows, inDim, outDim, 1f, a, outDim, w32, inDim, 1f, wantB, inDim);
        WeightProduct.Times(a, outDim, rows, w16, outDim, inDim, 1f, gotB, inDim);
        Close(wantB, gotB, $"a·W {precision} rows {rows}", 1e-4f);
    }

    /// <summary>
    /// A model whose weights are narrowed to bf16 holds half the matrix bytes, and its decode and prefill logits equal the
    /// fp32 engine run on the widened bf16 values (1e-4 relative: only summation order differs), so the 16-bit kernels
    /// change nothing but the weights' own rounding.
    /// </summary>
    [Fact]
    public void Bf16ModelHalvesBytesAndMatchesWidenedFp32()
    {
        var c = TinyModels.Config(maxSeq: 96);
        var fp32 = TinyModels.Create();
        var bf16Weights = fp32.Weights.ToPrecision(WeightPrecision.BFloat16);
        var widened = new Model(c, bf16Weights.ToPrecision(WeightPrecision.Float32), "widened");
        var bf16 = new Model(c, bf16Weights, "bf16");
        Assert.Equal(fp32.Weights.MatrixBytes, 2 * bf16.Weights.MatrixBytes);
        Assert.True(bf16.Weights.LmHead.SameStorage(bf16.Weights.TokenEmbedding), "a tied head stays tied");
        Assert.Equal(ModelFingerprint.Compute(widened), ModelFingerprint.Compute(bf16));

        var tokens = TinyModels.Tokens(30, c.VocabSize, 4);
        float[] Run(Model m, int chunk)
        {
            var t = new Transformer(m, chunk);
            var cache = new KvCache(c, tokens.Length);
            var logits = new float[tokens.Length * c.VocabSize];
            t.ForwardAll(cache, tokens, logits);
            return logits;
        }
        foreach (int chunk in new[] { 1, 3, 30 })
        {
            var want = Run(widened, chunk); var got = Run(bf16, chunk);
            double maxRef = want.Max(Math.Abs), maxDiff = want.Zip(got, (p, q) => Math.Abs(p - q)).Max();
            Assert.True(maxDiff / maxRef <= 1e-4, $"chunk {chunk}: relative {maxDiff / maxRef:E2}");
        }
    }

    /// <summary>A bf16 checkpoint loaded with <see cref="WeightStorage.File"/> keeps 16-bit matrices: half the bytes of
    /// the same file loaded as fp32.</summary>
    [Fact]
    public void FileStorageKeepsBf16AndHalvesResidentBytes()
    {
        string dir = Goldens.Path("models", "llama");
        Assert.True(Directory.Exists(dir), $"missing test model {dir}");
        var f32 = ModelLoader.Load(dir);
        var kept = ModelLoader.Load(dir, WeightStorage.File);
        Assert.Equal(WeightPrecision.Float32, f32.Weights.Layers[0].WGate.Precision);
        Assert.Equal(WeightPrecision.BFloat16, kept.Weights.Layers[0].WGate.Precision);
        Assert.Equal(f32.Weights.MatrixBytes, 2 * kept.Weights.MatrixBytes);
        Assert.Equal(ModelFingerprint.Compute(f32), ModelFingerprint.Compute(kept));
    }
}
