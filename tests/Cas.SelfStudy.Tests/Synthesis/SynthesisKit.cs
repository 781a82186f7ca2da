using System.Text;
using Cas.Engine;
using Cas.Engine.Compute;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using Cas.Tests.Common;

namespace Cas.SelfStudy.Tests.Synthesis;

/// <summary>
/// Tests that switch the process-wide BLAS backend run in this collection, alone: nothing else in the
/// assembly runs while they hold the managed (row-independent) kernels.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GlobalBlasCollection
{
    public const string Name = "global BLAS backend";
}

/// <summary>Forces the managed SGEMM for every shape (each output element is one dot product, whatever the batch) until disposed.</summary>
sealed class ManagedBlas : IDisposable
{
    public ManagedBlas() => Assert.True(Blas.TryUse(BlasBackend.Managed));
    public void Dispose() => Blas.UseAutomatic();
}

/// <summary>
/// UTF-8 bytes as ids 0..255 plus the ChatML special tokens &lt;|im_start|&gt; = 256, &lt;|im_end|&gt; = 257,
/// &lt;|endoftext|&gt; = 258 (EOS), recognised in text. Round-trips any text.
/// </summary>
sealed class ByteChatTokenizer : ITokenizer
{
    public const int ImStart = 256, ImEnd = 257, EndOfText = 258;
    static readonly string[] Specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"];

    public int VocabSize => 259;
    public int? BosId => null;
    public int? EosId => EndOfText;
    public IReadOnlyList<int> StartTokens => [];

    public int[] Encode(string text)
    {
        var ids = new List<int>();
        int i = 0;
        while (i < text.Length)
        {
            int next = text.Length, which = -1;
            for (int s = 0; s < Specials.Length; s++)
            {
                int at = text.IndexOf(Specials[s], i, StringComparison.Ordinal);
                if (at >= 0 && at < next) { next = at; which = s; }
            }
            foreach (var b in Encoding.UTF8.GetBytes(text[i..next])) ids.Add(b);
            if (which < 0) break;
            ids.Add(256 + which);
            i = next + Specials[which].Length;
        }
        return [.. ids];
    }

    public string Decode(ReadOnlySpan<int> ids)
    {
        var sb = new StringBuilder();
        var bytes = new List<byte>();
        foreach (var id in ids)
        {
            if (id < 256) { bytes.Add((byte)id); continue; }
            sb.Append(Encoding.UTF8.GetString([.. bytes])); bytes.Clear();
            sb.Append(Specials[id - 256]);
        }
        sb.Append(Encoding.UTF8.GetString([.. bytes]));
        return sb.ToString();
    }

    public int? SpecialTokenId(string content)
    {
        int i = Array.IndexOf(Specials, content);
        return i < 0 ? null : 256 + i;
    }
}

static class Kit
{
    static readonly Lazy<(Model, ITokenizer)> stories = new(() =>
    {
        var model = ModelLoader.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));
        var tok = TokenizerLoader.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "tok512.bin"));
        return (model, tok);
    });

    /// <summary>stories260K and its tokenizer (skips the test when ../shared is absent).</summary>
    public static (Model Model, ITokenizer Tokenizer) Stories()
    {
        TestPaths.RequireShared("models/stories260K/stories260K.bin");
        return stories.Value;
    }

    static readonly Lazy<Model> tinyChat = new(() => RandomWeights.Create(new ModelConfig
    {
        Architecture = Architecture.Llama, Dim = 32, HiddenDim = 64, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 8,
        VocabSize = 259, MaxSeqLen = 2048, RopeTheta = 10000f, TiedEmbeddings = false,
    }, seed: 5));

    /// <summary>A random-weight model whose vocabulary matches <see cref="ByteChatTokenizer"/>.</summary>
    public static Model TinyChatModel => tinyChat.Value;

    /// <summary>Simple story-like documents written from word lists (deterministic), in the style stories260K knows.</summary>
    public static List<Document> StoryDocuments(int count = 3, int sentences = 40)
    {
        string[] names = ["Lily", "Tom", "Sam", "Mia", "Ben", "Anna"];
        string[] things = ["ball", "kite", "cat", "tree", "boat", "cake", "dog", "hat"];
        string[] adjectives = ["big", "red", "little", "happy", "shiny", "soft"];
        string[] verbs = ["saw", "found", "liked", "wanted", "made", "lost"];
        var docs = new List<Document>();
        for (int d = 0; d < count; d++)
        {
            var rng = new DeterministicRng((ulong)(d + 11));
            var sb = new StringBuilder();
            for (int s = 0; s < sentences * (d + 1); s++)
            {
                string Pick(string[] a) => a[rng.NextInt(a.Length)];
                sb.Append(Pick(names)).Append(' ').Append(Pick(verbs)).Append(" a ").Append(Pick(adjectives)).Append(' ').Append(Pick(things)).Append(". ");
                if (s % 5 == 4) sb.Append('\n');
            }
            docs.Add(new Document($"story-{d}", sb.ToString(), $"test:{d}", Document.NoMetadata, Document.NoQuestions));
        }
        return docs;
    }

    /// <summary>Options small enough for stories260K's 512-token context and a quick test.</summary>
    public static SelfStudyOptions SmallOptions(long conversations = 12) => new()
    {
        Conversations = conversations,
        Seed = 7,
        MinChunkTokens = 48,
        MaxChunkTokens = 96,
        ConversationsPerChunk = 3,
        Concurrency = 4,
        UserAgent = AgentOptions.UserDefaults with { MaxTokens = 24 },
        AnswerAgent = AgentOptions.AnswerDefaults with { MaxTokens = 32 },
    };

    public static List<Conversation> RunToList(SelfStudySynthesizer s)
    {
        var list = new List<Conversation>();
        s.Run(null, list.Add);
        return list;
    }

    public static DatasetWriterOptions WriterOptions(SelfStudySynthesizer s) => new() { Fsync = false, Metadata = s.Metadata() };

    /// <summary>Runs into a new dataset file and returns its bytes.</summary>
    public static byte[] RunToFile(SelfStudySynthesizer s, string path)
    {
        using (var w = DatasetWriter.Open(path, resume: false, WriterOptions(s))) s.WriteTo(w);
        return File.ReadAllBytes(path);
    }

    /// <summary>The student's whole sequence: every message's tokens in order.</summary>
    public static int[] StudentSequence(Conversation c) => c.Messages.SelectMany(m => m.Tokens).ToArray();

    public static double[] ReferenceLogSoftmax(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (var x in logits) max = Math.Max(max, x);
        double sum = 0;
        foreach (var x in logits) sum += Math.Exp(x - max);
        var r = new double[logits.Length];
        for (int i = 0; i < r.Length; i++) r[i] = logits[i] - max - Math.Log(sum);
        return r;
    }

    /// <summary>
    /// Recomputes agent B from scratch on teacher prefix + student sequence (one whole prefill) and checks
    /// every answer token is B's greedy choice there and every stored log-prob is that position's
    /// log-softmax (within <paramref name="tolerance"/>), with the top-k rule holding.
    /// </summary>
    public static void CheckAgainstTeacher(Model model, int[] teacherPrefix, Conversation c, int maxK = 20, double mass = 0.99, double tolerance = 1e-4)
    {
        int vocab = model.Config.VocabSize;
        int[] seq = [.. teacherPrefix, .. StudentSequence(c)];
        var logits = new float[seq.Length * vocab];
        new Transformer(model, maxChunkTokens: 512).ForwardAll(new KvCache(model.Config, seq.Length), seq, logits);
        int pos = teacherPrefix.Length;
        foreach (var m in c.Messages)
        {
            if (m.Role == MessageRole.Assistant)
            {
                Assert.NotNull(m.Targets);
                Assert.Equal(m.Tokens.Length, m.Targets!.Length);
                for (int p = 0; p < m.Tokens.Length; p++)
                {
                    var row = logits.AsSpan((pos + p - 1) * vocab, vocab);
                    var reference = ReferenceLogSoftmax(row);
                    Assert.Equal(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(row), m.Tokens[p]);
                    CheckTopKRule(m.Targets, p, maxK, mass);
                    var ids = m.Targets.IdsAt(p);
                    var lps = m.Targets.LogProbsAt(p);
                    Assert.Equal(m.Tokens[p], ids[0]);
                    for (int e = 0; e < ids.Length; e++)
                        Assert.True(Math.Abs(lps[e] - reference[ids[e]]) < tolerance, $"position {p} entry {e}: {lps[e]} vs reference {reference[ids[e]]}");
                }
            }
            pos += m.Tokens.Length;
        }
    }

    /// <summary>k ≤ maxK, ids distinct, log-probs descending, the cumulative probability reaches the mass exactly at the last entry (or k = maxK).</summary>
    public static void CheckTopKRule(SparseTargets t, int p, int maxK, double mass)
    {
        var ids = t.IdsAt(p);
        var lps = t.LogProbsAt(p);
        Assert.InRange(ids.Length, 1, maxK);
        Assert.Equal(ids.Length, ids.ToArray().Distinct().Count());
        double cum = 0;
        for (int e = 0; e < lps.Length; e++)
        {
            if (e > 0) Assert.True(lps[e] <= lps[e - 1], $"position {p}: log-probs not descending at entry {e}");
            // Stored log-probs are floats; the selection summed doubles, hence the small slack.
            Assert.True(cum < mass + 1e-6, $"position {p}: cumulative {cum} reached {mass} before entry {e}; the list should have been cut");
            cum += Math.Exp(lps[e]);
        }
        if (ids.Length < maxK) Assert.True(cum >= mass - 1e-6, $"position {p}: k = {ids.Length} < {maxK} but cumulative is only {cum}");
    }

    public static void SameRecords(IReadOnlyList<Conversation> want, IReadOnlyList<Conversation> got, double logProbTolerance)
    {
        Assert.Equal(want.Count, got.Count);
        for (int i = 0; i < want.Count; i++)
        {
            var a = want[i];
            var b = got[i];
            Assert.Equal(a.Id, b.Id);
            Assert.Equal(a.Chunk, b.Chunk);
            Assert.Equal(a.SeedPrompt, b.SeedPrompt);
            Assert.Equal(a.Messages.Count, b.Messages.Count);
            for (int m = 0; m < a.Messages.Count; m++)
            {
                Assert.Equal(a.Messages[m].Text, b.Messages[m].Text);
                Assert.Equal(a.Messages[m].Tokens, b.Messages[m].Tokens);
                if (a.Messages[m].Targets is not { } ta) { Assert.Null(b.Messages[m].Targets); continue; }
                var tb = b.Messages[m].Targets!;
                Assert.Equal(ta.Offsets.ToArray(), tb.Offsets.ToArray());
                Assert.Equal(ta.Ids.ToArray(), tb.Ids.ToArray());
                var la = ta.LogProbs; var lb = tb.LogProbs;
                for (int e = 0; e < la.Length; e++)
                    Assert.True(Math.Abs(la[e] - lb[e]) <= logProbTolerance, $"record {i} message {m} entry {e}: {la[e]} vs {lb[e]}");
            }
        }
    }
}
