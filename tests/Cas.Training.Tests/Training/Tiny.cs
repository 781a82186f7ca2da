using Cas.Engine;
using Cas.Engine.Models;

namespace Cas.Training.Tests.Training;

/// <summary>Small random-weight models, cartridges and batches for the gradient tests.</summary>
static class Tiny
{
    /// <param name="attentionBias">Llama/Qwen3 with attention_bias = true: q/k/v and o_proj biases.</param>
    public static ModelConfig Config(Architecture arch, RopeStyle rope, int kvHeads = 2, bool attentionBias = false) => new()
    {
        Architecture = arch, Dim = 32, HiddenDim = 48, Layers = 2, Heads = 4, KvHeads = kvHeads, HeadDim = 8,
        VocabSize = 61, MaxSeqLen = 64, RopeTheta = 10000f, NormEps = 1e-5f, Rope = rope,
        QkvBias = arch == Architecture.Qwen2 || attentionBias, AttnOutBias = attentionBias, QkNorm = arch == Architecture.Qwen3, TiedEmbeddings = arch == Architecture.Llama,
    };

    public static Model Create(Architecture arch, RopeStyle rope, int kvHeads = 2, ulong seed = 3, bool attentionBias = false) =>
        RandomWeights.Create(Config(arch, rope, kvHeads, attentionBias), seed);

    public static KvPrefix Prefix(ModelConfig c, int p, int seed, float std = 0.7f) =>
        TrainingBenchmark.RandomPrefix(c, p, new Random(seed), std);

    /// <summary>Sequences of the given lengths with top-k random targets; every third position is masked.</summary>
    public static TrainingSequence[] Batch(ModelConfig c, int seed, int k, params int[] lengths)
    {
        var rng = new Random(seed);
        var batch = new TrainingSequence[lengths.Length];
        for (int s = 0; s < lengths.Length; s++)
        {
            var full = TrainingBenchmark.RandomSequence(c.VocabSize, lengths[s], k, rng);
            var b = new SparseTargets.Builder(lengths[s]);
            for (int t = 0; t < lengths[s]; t++)
                if ((t + s) % 3 != 2) b.Add(t, full.Targets.IdsAt(t), full.Targets.LogProbsAt(t));
            batch[s] = new TrainingSequence(full.Tokens, b.Build());
        }
        return batch;
    }

    public static (float[][] dK, float[][] dV) GradBuffers(KvPrefix prefix)
    {
        var dK = new float[prefix.Layers][]; var dV = new float[prefix.Layers][];
        for (int l = 0; l < prefix.Layers; l++) { dK[l] = new float[prefix.Keys[l].Length]; dV[l] = new float[prefix.Values[l].Length]; }
        return (dK, dV);
    }

    public static double[][] ToDouble(float[][] a) => a.Select(x => x.Select(v => (double)v).ToArray()).ToArray();
}
