using Cas.Engine.Models;

namespace Cas.Engine.Tests.Engine;

/// <summary>Small random-weight models for invariant tests (no files needed).</summary>
static class TinyModels
{
    public static ModelConfig Config(Architecture arch = Architecture.Llama, RopeStyle rope = RopeStyle.Halves, int maxSeq = 96) => new()
    {
        Architecture = arch, Dim = 32, HiddenDim = 72, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 8,
        VocabSize = 61, MaxSeqLen = maxSeq, RopeTheta = 10000f, Rope = rope,
        QkvBias = arch == Architecture.Qwen2, QkNorm = arch == Architecture.Qwen3, TiedEmbeddings = arch == Architecture.Llama,
    };

    public static Model Create(Architecture arch = Architecture.Llama, RopeStyle rope = RopeStyle.Halves, ulong seed = 1, int maxSeq = 96) =>
        RandomWeights.Create(Config(arch, rope, maxSeq), seed);

    public static int[] Tokens(int n, int vocab, int seed)
    {
        var r = new Random(seed); var a = new int[n];
        for (int i = 0; i < n; i++) a[i] = r.Next(vocab);
        return a;
    }
}
