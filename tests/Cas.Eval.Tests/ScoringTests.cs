using Cas.Collections;
using Cas.Data;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Service;
using Cas.Service.V1;
using Cas.Training;
using Cas.Training.Evaluation;

namespace Cas.Eval.Tests;

/// <summary>
/// QueryEngine.ScoreAsync (the scoring path of `cas eval collection`) against forward passes computed outside the
/// service: stories260K, three short documents, first-k cartridges (p = 16) put in the store as the documents' fresh
/// cartridges. Skipped when ../shared is absent.
/// </summary>
public sealed class ScoringTests : IDisposable
{
    static readonly (string Id, string Text)[] Docs =
    [
        ("cat", "Lily had a small cat named Tom. The cat liked to play with a red ball in the garden. One day the cat ran after the ball and found a frog."),
        ("ship", "Ben saw a big ship on the sea. The ship had white sails and a loud horn. Ben waved at the sailors and they waved back."),
        ("moon", "At night Sue looked at the moon. The moon was round and bright. Sue wished she could fly to the moon in a rocket."),
    ];

    readonly string _dir = Directory.CreateTempSubdirectory("cas-eval-test-").FullName;
    ServiceState? _state;

    public void Dispose()
    {
        _state?.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    (ServiceState State, ModelHost Host) Setup()
    {
        (_state, var host) = StoriesCollection.Create(_dir, Docs);
        foreach (var (id, text) in Docs)
        {
            int[] ids = [.. host.Tokenizer.StartTokens, .. host.Tokenizer.Encode(text)];
            var cart = Cartridge.ForModel(host.Model, CartridgeInit.FirstK(host.Model, ids, 16), CartridgeInitKind.FirstK);
            _state.Store.Put(CollectionCatalog.CartridgeId("s", id), cart, CollectionCatalog.CartridgeLabels(_state.Catalog.GetDocument("s", id)));
        }
        return (_state, host);
    }

    static int[] Answer(ModelHost host) => Prompting.EncodeContinuation(host.Tokenizer, " the cat ran to the big ship and saw the moon.");

    /// <summary>−log q of tokens[from..] after prefix + tokens, by the engine's forward on a fresh cache, normalised in double.</summary>
    static double[] DirectNll(ModelHost host, KvPrefix? prefix, int[] tokens, int from)
    {
        var c = host.Config;
        var cache = new KvCache(c, (prefix?.Length ?? 0) + tokens.Length, prefix);
        var logits = new float[tokens.Length * c.VocabSize];
        new Transformer(host.Model).ForwardAll(cache, tokens, logits);
        var nll = new double[tokens.Length - from];
        for (int t = from; t < tokens.Length; t++)
        {
            var row = logits.AsSpan((t - 1) * c.VocabSize, c.VocabSize);
            nll[t - from] = HeldOutEvaluator.LogSumExp(row) - row[tokens[t]];
        }
        return nll;
    }

    [Fact]
    public async Task CartridgeScoreEqualsAForwardOverTheSameComposedPrefix()
    {
        var (state, host) = Setup();
        var engine = new QueryEngine(state);
        int[] answer = Answer(host);
        var request = new AskRequest { Collection = "s", Question = "the cat and the red ball and the ship", MaxCartridges = 2, RetrieveChunks = 16, MaxTokens = 64 };
        var s = await engine.ScoreAsync(AskMode.Cartridges, request, answer, ScoreFraming.Continuation, CancellationToken.None);

        Assert.Equal(2, s.Ask.Documents.Count);
        Assert.Contains(s.Ask.Documents, d => d.DocumentId == "cat");
        // The prompt after cartridges is "\n" + the question as continuation text (what training puts after a cartridge).
        Assert.Equal(Prompting.EncodeContinuation(host.Tokenizer, "\n" + request.Question), s.Prompt);
        var parts = s.Ask.Documents.Select(d => state.Store.Get(d.CartridgeId).Prefix).ToList();
        Assert.Equal(parts.Sum(p => p.Length), s.Ask.Tokens.CartridgeSlots);
        var direct = DirectNll(host, KvPrefix.Concat(parts), [.. s.Prompt, .. answer], s.Prompt.Length);
        Assert.Equal(answer.Length, s.TokenNll.Length);
        // Same engine forward; only the log-normaliser differs (float log-softmax vs double log-sum-exp): 1e-4 per token.
        for (int i = 0; i < answer.Length; i++) Assert.True(Math.Abs(direct[i] - s.TokenNll[i]) < 1e-4, $"token {i}: {s.TokenNll[i]} vs {direct[i]}");

        // Ask with the same request uses exactly the cartridges the score used.
        var a = await engine.AskAsync(AskMode.Cartridges, request, _ => Task.CompletedTask, CancellationToken.None);
        Assert.Equal(s.Ask.Documents.Select(d => (d.DocumentId, d.CartridgeVersion)), a.Documents.Select(d => (d.DocumentId, d.CartridgeVersion)));

        // The context matters: the same answer after other cartridges scores differently.
        var other = await engine.ScoreAsync(AskMode.Cartridges, new AskRequest(request) { DocumentIds = { "moon" } }, answer, ScoreFraming.Continuation, CancellationToken.None);
        Assert.NotEqual(s.Nll, other.Nll, 3);
    }

    [Fact]
    public async Task NoContextScoreEqualsThePlainModelsNll()
    {
        var (state, host) = Setup();
        int[] answer = Answer(host);
        var request = new AskRequest { Collection = "s", Question = "Once upon a time", MaxTokens = 64 };
        var s = await new QueryEngine(state).ScoreAsync(AskMode.NoContext, request, answer, ScoreFraming.Continuation, CancellationToken.None);
        Assert.Empty(s.Ask.Documents);
        Assert.Equal(0, s.Ask.Tokens.CartridgeSlots);
        int[] prompt = Prompting.Encode(host.Tokenizer, "Once upon a time", addStart: true);
        Assert.Equal(prompt, s.Prompt);

        // The held-out evaluator's "none" condition (BOS prefilled as a prefix, the rest run as student tokens): an
        // independent path to the plain model's NLL of the answer after BOS + question.
        int[] student = [.. prompt[1..], .. answer];
        var set = new EvalSet([[prompt[0]]], [prompt[0]],
            [new EvalExample(new TrainingSequence(student, SparseTargets.NextToken(student, prompt.Length - 2)), 0)], "plain");
        var none = new HeldOutEvaluator(host.Model).None(set);
        Assert.Equal(answer.Length, none.NllPositions);
        Assert.True(Math.Abs(none.MeanNll * answer.Length - s.Nll) < 1e-4 * answer.Length, $"{s.Nll} vs {none.MeanNll * answer.Length}");
    }

    [Fact]
    public async Task IclScoreReadsTheGoldDocumentAndRagTheRetrievedChunks()
    {
        var (state, host) = Setup();
        var engine = new QueryEngine(state);
        int[] answer = Answer(host);
        var icl = await engine.ScoreAsync(AskMode.Icl, new AskRequest { Collection = "s", Question = "The cat", MaxTokens = 64, DocumentIds = { "ship" } },
            answer, ScoreFraming.Continuation, CancellationToken.None);
        Assert.Equal(["ship"], icl.Ask.Documents.Select(d => d.DocumentId));
        int[] expected = Prompting.Encode(host.Tokenizer, Docs[1].Text + "\n\nThe cat", addStart: true);
        Assert.Equal(expected, icl.Prompt);
        var direct = DirectNll(host, null, [.. icl.Prompt, .. answer], icl.Prompt.Length);
        Assert.True(Math.Abs(direct.Sum() - icl.Nll) < 1e-4 * answer.Length);

        var rag = await engine.ScoreAsync(AskMode.Rag, new AskRequest { Collection = "s", Question = "sails horn sailors", MaxTokens = 64, RetrieveChunks = 1 },
            answer, ScoreFraming.Question, CancellationToken.None);
        Assert.Single(rag.Ask.Chunks);
        Assert.Equal("ship", rag.Ask.Chunks[0].DocumentId);
        Assert.EndsWith("\n\nQuestion: sails horn sailors\nAnswer:", host.Tokenizer.Decode(rag.Prompt));
    }

    [Fact]
    public async Task AnAnswerLongerThanMaxTokensIsRefused()
    {
        var (state, host) = Setup();
        var e = await Assert.ThrowsAsync<InvalidRequestException>(() => new QueryEngine(state).ScoreAsync(AskMode.NoContext,
            new AskRequest { Collection = "s", Question = "q", MaxTokens = 2 }, Answer(host), ScoreFraming.Question, CancellationToken.None));
        Assert.Contains("max_tokens=2", e.Message);
    }
}
