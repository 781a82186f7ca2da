using System.Text;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;

namespace Cas.Training.Tests.Trainer;

/// <summary>
/// One token per printable ASCII character (id = 3 + code − 32) and per line break (98), BOS = 1, EOS = 2, unk = 0:
/// token i of a text is character i, which makes positions in tests easy to reason about.
/// </summary>
sealed class CharTokenizer : ITokenizer
{
    public int VocabSize => 3 + 95 + 1;
    public int? BosId => 1;
    public int? EosId => 2;
    public IReadOnlyList<int> StartTokens { get; } = [1];
    public int[] Encode(string text) => text.Select(c => c >= 32 && c < 127 ? 3 + c - 32 : c == '\n' ? 98 : 0).ToArray();
    public string Decode(ReadOnlySpan<int> ids)
    {
        var sb = new StringBuilder();
        foreach (int id in ids) if (id == 98) sb.Append('\n'); else if (id >= 3 && id < 98) sb.Append((char)(id - 3 + 32));
        return sb.ToString();
    }
    public int? SpecialTokenId(string content) => null;
}

static class TrainerFixtures
{
    /// <summary>A small random Llama with a vocabulary that fits <see cref="CharTokenizer"/>.</summary>
    public static ModelConfig Config(int maxSeq = 160, Architecture arch = Architecture.Llama) => new()
    {
        Architecture = arch, Dim = 32, HiddenDim = 48, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 8,
        VocabSize = 100, MaxSeqLen = maxSeq, RopeTheta = 10000f, NormEps = 1e-5f, Rope = RopeStyle.Halves,
        QkvBias = arch == Architecture.Qwen2, QkNorm = arch == Architecture.Qwen3, TiedEmbeddings = true,
    };

    public static Model Model(ulong seed = 5, int maxSeq = 160) => RandomWeights.Create(Config(maxSeq), seed);

    public const string Story =
        "Mara kept bees behind the mill. Every spring she counted the hives. " +
        "There were nine of them, painted blue. One hive was older than the rest! " +
        "Her brother Tomas fixed its roof with tin. Why did the bees like it best? " +
        "Nobody knew. The honey from it tasted of clover.";

    /// <summary>Random distillation-style examples (top-k targets at most positions).</summary>
    public static List<TrainingSequence> RandomExamples(int count, int vocab, int seed, int minLen = 6, int maxLen = 14, int k = 4)
    {
        var rng = new Random(seed);
        var list = new List<TrainingSequence>();
        for (int i = 0; i < count; i++)
        {
            int n = rng.Next(minLen, maxLen + 1);
            var tokens = new int[n];
            for (int t = 0; t < n; t++) tokens[t] = rng.Next(vocab);
            var b = new SparseTargets.Builder(n);
            for (int t = 0; t < n; t++)
            {
                if (t % 4 == 3) continue;
                var ids = new int[k]; var lps = new float[k];
                var raw = new double[k]; double sum = 0;
                for (int j = 0; j < k; j++) { ids[j] = (tokens[t] * 7 + j * 13 + i) % vocab; raw[j] = rng.NextDouble() + 0.1; sum += raw[j]; }
                if (ids.Distinct().Count() != k) continue;
                for (int j = 0; j < k; j++) lps[j] = (float)Math.Log(0.98 * raw[j] / sum);
                b.Add(t, ids, lps);
            }
            list.Add(new TrainingSequence(tokens, b.Build()));
        }
        return list;
    }

    public static KvPrefix Clone(KvPrefix p) =>
        new(p.Layers, p.KvHeads, p.HeadDim, p.Length, p.Keys.Select(a => (float[])a.Clone()).ToArray(), p.Values.Select(a => (float[])a.Clone()).ToArray());

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "cas-trainer-tests-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(d);
        return d;
    }
}
