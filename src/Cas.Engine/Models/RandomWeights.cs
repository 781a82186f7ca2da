namespace Cas.Engine.Models;

/// <summary>
/// Random weights for a real config: the subject of speed and memory benchmarks (not of quality).
/// Linear weights ~ N(0, 0.02²)·(scaled by fan-in for stability), norms ≈ 1; q/k/v biases when
/// <see cref="ModelConfig.QkvBias"/>, the o_proj bias when <see cref="ModelConfig.AttnOutBias"/>.
/// </summary>
public static class RandomWeights
{
    public static Model Create(ModelConfig c, ulong seed = 1)
    {
        c.Validate();
        var rng = new SplitMix(seed);
        float[] Mat(int rows, int cols) { var a = WeightMemory.Allocate<float>(checked(rows * cols)); rng.FillNormal(a, 1f / MathF.Sqrt(cols)); return a; }
        float[] Norm(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = 1f + 0.1f * rng.NextNormal(); return a; }
        float[] Bias(int n) { var a = new float[n]; rng.FillNormal(a, 0.02f); return a; }
        var layers = new LayerWeights[c.Layers];
        for (int l = 0; l < c.Layers; l++)
            layers[l] = new LayerWeights
            {
                AttnNorm = Norm(c.Dim),
                Wq = Mat(c.QDim, c.Dim), Wk = Mat(c.KvDim, c.Dim), Wv = Mat(c.KvDim, c.Dim), Wo = Mat(c.Dim, c.QDim),
                Bq = c.QkvBias ? Bias(c.QDim) : null, Bk = c.QkvBias ? Bias(c.KvDim) : null, Bv = c.QkvBias ? Bias(c.KvDim) : null,
                Bo = c.AttnOutBias ? Bias(c.Dim) : null, // attention_bias = true (Llama/Qwen3): o_proj has a bias too
                QNorm = c.QkNorm ? Norm(c.HeadDim) : null, KNorm = c.QkNorm ? Norm(c.HeadDim) : null,
                FfnNorm = Norm(c.Dim),
                WGate = Mat(c.HiddenDim, c.Dim), WUp = Mat(c.HiddenDim, c.Dim), WDown = Mat(c.Dim, c.HiddenDim),
            };
        var emb = WeightMemory.Allocate<float>(checked(c.VocabSize * c.Dim));
        rng.FillNormal(emb, 1f);
        WeightTensor embedding = emb;
        var head = c.TiedEmbeddings ? embedding : new WeightTensor(Mat(c.VocabSize, c.Dim));
        return new Model(c, new ModelWeights { TokenEmbedding = embedding, Layers = layers, FinalNorm = Norm(c.Dim), LmHead = head }, $"random(seed={seed})");
    }

    /// <summary>SplitMix64 with Box–Muller normals: fast, seedable, identical on every platform.</summary>
    sealed class SplitMix(ulong seed)
    {
        ulong _s = seed;
        ulong Next() { ulong z = _s += 0x9E3779B97F4A7C15UL; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL; z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL; return z ^ (z >> 31); }
        double Uniform() => ((Next() >> 11) + 0.5) / (1UL << 53);
        public float NextNormal() => (float)(Math.Sqrt(-2 * Math.Log(Uniform())) * Math.Cos(2 * Math.PI * Uniform()));
        public void FillNormal(Span<float> a, float std) { for (int i = 0; i < a.Length; i++) a[i] = NextNormal() * std; }
    }
}
