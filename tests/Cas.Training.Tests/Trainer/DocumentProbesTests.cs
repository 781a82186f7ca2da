using Cas.SelfStudy;
using Cas.Engine;

namespace Cas.Training.Tests.Trainer;

public class DocumentProbesTests
{
    static readonly DocumentProbeOptions Small = new()
    {
        ChunkTokens = 100, ExamplesPerChunk = 10, MinProbeTokens = 3, MaxProbeTokens = 8, ContinuationTokens = 10, GenerationBatch = 4,
    };

    [Fact]
    public void SentenceStartsFollowFinalPunctuationAndLineBreaks()
    {
        var tok = new CharTokenizer();
        string text = "Hello there. How are you? \"Fine!\" she said.\nNext line... and 3.5 apples. End";
        var starts = DocumentProbes.SentenceStarts(tok, tok.Encode(text));
        int[] expected = [0, text.IndexOf("How"), text.IndexOf("\"Fine"), text.IndexOf("she"), text.IndexOf("Next"), text.IndexOf("and"), text.IndexOf("End")];
        Assert.Equal(expected, starts);
    }

    [Fact]
    public void TopKKeepsTheLargestUntilTheCumulativeCut()
    {
        float[] logits = [MathF.Log(0.2f), MathF.Log(0.5f), MathF.Log(0.05f), MathF.Log(0.2f), MathF.Log(0.05f)];
        var ids = new int[4]; var lps = new float[4];
        int n = TeacherTopK.Select(logits, 4, 0.99f, ids, lps);
        Assert.Equal(4, n);
        Assert.Equal([1, 0, 3, 2], ids); // ties: lower id first
        Assert.Equal([MathF.Log(0.5f), MathF.Log(0.2f), MathF.Log(0.2f), MathF.Log(0.05f)], lps.Select(x => x), new Tol(1e-6f));
        Assert.Equal(2, TeacherTopK.Select(logits, 4, 0.69f, ids, lps));  // 0.5 < 0.69 ≤ 0.5 + 0.2
        Assert.Equal(3, TeacherTopK.Select(logits, 4, 0.71f, ids, lps));
        Assert.Equal(1, TeacherTopK.Select(logits, 1, 0.99f, ids, lps));
        Assert.Equal(1, ids[0]);
    }

    sealed class Tol(float eps) : IEqualityComparer<float>
    {
        public bool Equals(float a, float b) => Math.Abs(a - b) <= eps;
        public int GetHashCode(float f) => 0;
    }

    [Fact]
    public void ChunksAreNearlyEqualAndCoverTheDocument()
    {
        var tokens = Enumerable.Range(0, 1001).ToArray();
        var chunks = DocumentProbes.Chunk(tokens, 400);
        Assert.Equal(3, chunks.Count);
        Assert.All(chunks, c => Assert.InRange(c.Length, 333, 334));
        Assert.Equal(tokens, chunks.SelectMany(c => c));
        Assert.Single(DocumentProbes.Chunk(tokens.AsSpan(0, 400), 400));
    }

    [Fact]
    public void TargetsAreTheTeachersDistributionWithTheChunkInContext()
    {
        // One chunk (the whole story), so the teacher's context is known exactly.
        var model = TrainerFixtures.Model(maxSeq: 512);
        var tok = new CharTokenizer();
        var data = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "story", Small with { ChunkTokens = 400 });
        var chunks = DocumentProbes.Chunk(tok.Encode(TrainerFixtures.Story), 400);
        Assert.Single(chunks);
        Assert.Equal(10, data.Count);
        Assert.Equal(["story"], data.DocumentIds);
        int[] sep = tok.Encode("\n");
        var t = new Transformer(model);
        int vocab = model.Config.VocabSize;
        var ids = new int[20]; var lps = new float[20];
        for (int e = 0; e < data.Count; e++)
        {
            var ex = data[e];
            Assert.Equal(sep, ex.Tokens[..sep.Length]);
            // The probe is a sentence of the chunk or an opener; targets start at its last token.
            int firstTarget = Enumerable.Range(0, ex.Tokens.Length).First(ex.Targets.HasTarget);
            int s0 = firstTarget + 1; // sep + probe length
            string probe = tok.Decode(ex.Tokens.AsSpan(sep.Length, s0 - sep.Length));
            Assert.True(DocumentProbes.TrainOpeners.Contains(probe) || TrainerFixtures.Story.Contains(probe), $"probe '{probe}'");
            // One teacher pass over BOS + chunk + the whole student sequence gives every position's distribution.
            var chunk = chunks[0];
            int[] prompt = [1, .. chunk, .. ex.Tokens];
            var logits = new float[prompt.Length * vocab];
            t.ForwardAll(new KvCache(model.Config, prompt.Length), prompt, logits);
            for (int pos = firstTarget; pos < ex.Tokens.Length; pos++)
            {
                // Every position from the end of the probe on has targets (continuation, plus EOS if drawn).
                if (!ex.Targets.HasTarget(pos)) { Assert.Equal(ex.Tokens.Length - 1, pos); continue; }
                int row = 1 + chunk.Length + pos;
                int k = TeacherTopK.Select(logits.AsSpan(row * vocab, vocab), 20, 0.99f, ids, lps);
                Assert.Equal(ids.AsSpan(0, k).ToArray(), ex.Targets.IdsAt(pos).ToArray());
                var got = ex.Targets.LogProbsAt(pos);
                for (int j = 0; j < k; j++) Assert.Equal(lps[j], got[j], 1e-4f);
                var kept = ex.Targets.LogProbsAt(pos).ToArray();
                Assert.InRange(kept.Length, 1, 20);
                for (int j = 1; j < kept.Length; j++) Assert.True(kept[j] <= kept[j - 1]);
                if (kept.Length < 20) Assert.True(kept.Sum(x => Math.Exp(x)) >= 0.99 - 1e-5);
                Assert.True(kept[..^1].Sum(x => Math.Exp(x)) < 0.99);
            }
        }
    }

    [Fact]
    public void BuildIsDeterministicPerSeedAndHeldOutProbesAreDisjoint()
    {
        var model = TrainerFixtures.Model();
        var tok = new CharTokenizer();
        var o = Small with { ExamplesPerChunk = 24, OpenerFraction = 0.3, HeldOutEvery = 3, MinProbeTokens = 8, MaxProbeTokens = 10 };
        var a = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "s", o);
        var b = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "s", o);
        var c = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "s", o with { Seed = 2 });
        Assert.Equal(a.Fingerprint, b.Fingerprint);
        Assert.NotEqual(a.Fingerprint, c.Fingerprint);

        var held = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "s", o with { Split = ProbeSplit.HeldOut, Seed = 2 });
        var held2 = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "s", o with { Split = ProbeSplit.HeldOut, Seed = 5 });
        int sep = tok.Encode("\n").Length;
        // Each probe is an opener of its split, or a slice of the story starting at a sentence start.
        HashSet<int> Starts(TrainingExamples d, string[] openers)
        {
            var starts = new HashSet<int>();
            for (int i = 0; i < d.Count; i++)
            {
                int s0 = Enumerable.Range(0, d[i].Tokens.Length).First(d[i].Targets.HasTarget) + 1;
                string probe = tok.Decode(d[i].Tokens.AsSpan(sep, s0 - sep));
                if (openers.Contains(probe)) continue;
                int at = TrainerFixtures.Story.IndexOf(probe, StringComparison.Ordinal);
                Assert.True(at >= 0, $"probe '{probe}' is neither an opener of its split nor part of the story");
                starts.Add(at);
            }
            return starts;
        }
        var trainStarts = Starts(a, DocumentProbes.TrainOpeners).Union(Starts(c, DocumentProbes.TrainOpeners)).ToHashSet();
        var heldStarts = Starts(held, DocumentProbes.HeldOutOpeners).Union(Starts(held2, DocumentProbes.HeldOutOpeners)).ToHashSet();
        Assert.True(heldStarts.Count >= 2, string.Join("|", heldStarts));
        Assert.True(trainStarts.Count >= 3, string.Join("|", trainStarts));
        Assert.Empty(trainStarts.Intersect(heldStarts));
    }

    [Fact]
    public void NextTokenExamplesPredictTheDocumentItself()
    {
        var tok = new CharTokenizer();
        var data = DocumentProbes.NextToken(tok, TrainerFixtures.Story, "s", 100);
        var body = tok.Encode(TrainerFixtures.Story);
        Assert.Equal(DocumentProbes.Chunk(body, 100).Count, data.Count);
        Assert.Equal(body, Enumerable.Range(0, data.Count).SelectMany(i => data[i].Tokens));
        var first = data[0];
        for (int t = 0; t + 1 < first.Tokens.Length; t++)
        {
            Assert.Equal([first.Tokens[t + 1]], first.Targets.IdsAt(t).ToArray());
            Assert.Equal(0f, first.Targets.LogProbsAt(t)[0]);
        }
        Assert.False(first.Targets.HasTarget(first.Tokens.Length - 1));
        Assert.Throws<InvalidRequestException>(() => DocumentProbes.NextToken(tok, "", "empty", 100));
    }

    [Fact]
    public void ContextTooSmallForTheProbesIsAClearError()
    {
        var model = TrainerFixtures.Model(maxSeq: 40);
        var e = Assert.Throws<InvalidRequestException>(() =>
            DocumentProbes.Build(model, new CharTokenizer(), TrainerFixtures.Story, "s", Small with { ContinuationTokens = 30 }));
        Assert.Contains("context (40)", e.Message);
    }
}
