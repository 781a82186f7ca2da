using Cas.Engine;
using Cas.Service.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Service.Tests;

/// <summary>
/// The Score RPC against <see cref="QueryEngine.ScoreAsync"/> in the same server process (the RPC is a thin caller: the
/// same NLL per token to 1e-9, the same prompt, documents and accounting), its refusals, AskNoContext, GetDocumentText
/// and GetBudget. stories260K (skipped without ../shared).
/// </summary>
public sealed class ScoreTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    static async Task<T> Bounded<T>(string what, Task<T> task)
    {
        try { return await task.WaitAsync(TimeSpan.FromSeconds(60)); }
        catch (TimeoutException) { throw new TimeoutException($"{what} did not complete within 60 s"); }
    }

    static async Task<RpcException> Refused<T>(string what, Func<Task<T>> call) =>
        await Bounded(what, Assert.ThrowsAsync<RpcException>(async () => await call()));

    int[] Answer(string text) => Prompting.EncodeContinuation(fx.Tokenizer!, text);

    static ScoreRequest Score(AskRequest request, int[] answer, QueryMode mode, AnswerFraming framing)
    {
        var r = new ScoreRequest { Request = request, Mode = mode, Framing = framing };
        r.Answer.Add(answer);
        return r;
    }

    public static TheoryData<QueryMode, AnswerFraming, string, string?> Cases => new()
    {
        { QueryMode.Cartridges, AnswerFraming.Continuation, "the cat and the red ball and the ship", null },
        { QueryMode.Unspecified, AnswerFraming.Unspecified, "What did the cat find?", null },   // defaults: cartridges, question framing
        { QueryMode.Rag, AnswerFraming.Question, "sails horn sailors", null },
        { QueryMode.Icl, AnswerFraming.Continuation, "The cat", "ship" },
        { QueryMode.NoContext, AnswerFraming.Continuation, "Once upon a time", null },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Score_over_gRPC_is_QueryEngine_ScoreAsync(QueryMode mode, AnswerFraming framing, string question, string? document)
    {
        fx.Require();
        var request = new AskRequest { Collection = ServerFixture.Collection, Question = question, MaxTokens = 48, MaxCartridges = 2, RetrieveChunks = 8 };
        if (document != null) request.DocumentIds.Add(document);
        int[] answer = Answer(" the cat ran to the big ship and saw the moon.");

        var remote = await Bounded("Score", fx.Query.ScoreAsync(Score(request, answer, mode, framing)).ResponseAsync);
        var local = await Bounded("ScoreAsync", new QueryEngine(fx.Server!.State).ScoreAsync(QueryServiceImpl.Mode(mode), request, answer,
            QueryServiceImpl.Framing(framing), CancellationToken.None));

        Assert.Equal(answer.Length, remote.TokenNll.Count);
        for (int i = 0; i < answer.Length; i++)
            Assert.True(Math.Abs(remote.TokenNll[i] - local.TokenNll[i]) <= 1e-9, $"token {i}: {remote.TokenNll[i]} over gRPC, {local.TokenNll[i]} in process");
        Assert.True(Math.Abs(remote.Nll - local.Nll) <= 1e-9 * answer.Length);
        Assert.All(remote.TokenNll, x => Assert.True(x > 0 && double.IsFinite(x)));
        Assert.Equal(local.Prompt, remote.Prompt);
        Assert.Equal(local.Ask.Documents, remote.Result.Documents);        // ids, scores, cartridge ids, versions, slots
        Assert.Equal(local.Ask.Chunks, remote.Result.Chunks);
        Assert.Equal(local.Ask.Skipped, remote.Result.Skipped);
        Assert.Equal(local.Ask.Tokens, remote.Result.Tokens);              // prompt tokens, cartridge slots, the answer as completion, KV bytes
        Assert.Equal(answer.Length, remote.Result.Tokens.CompletionTokens);
        Assert.Equal(remote.Prompt.Count, remote.Result.Tokens.PromptTokens);
        Assert.True(remote.Result.Latency.PrefillMs > 0 && remote.Result.Latency.TotalMs >= remote.Result.Latency.PrefillMs);
        Assert.Equal(0, remote.Result.Latency.DecodeMs);
        Assert.Equal("", remote.Result.Answer);
        switch (QueryServiceImpl.Mode(mode))
        {
            case AskMode.Cartridges: Assert.NotEmpty(remote.Result.Documents); Assert.All(remote.Result.Documents, d => Assert.NotEmpty(d.CartridgeId)); Assert.True(remote.Result.Tokens.CartridgeSlots > 0); break;
            case AskMode.Rag: Assert.NotEmpty(remote.Result.Chunks); Assert.Equal(0, remote.Result.Tokens.CartridgeSlots); break;
            case AskMode.Icl: Assert.Equal(["ship"], remote.Result.Documents.Select(d => d.DocumentId)); break;
            case AskMode.NoContext: Assert.Empty(remote.Result.Documents); Assert.Empty(remote.Result.Chunks); break;
        }
        await fx.WaitIdle();
    }

    [Fact]
    public async Task The_context_and_the_framing_change_the_score()
    {
        fx.Require();
        int[] answer = Answer(" the cat ran to the big ship and saw the moon.");
        var q = new AskRequest { Collection = ServerFixture.Collection, Question = "the cat and the red ball", MaxTokens = 48 };
        var cas = await Bounded("Score cas", fx.Query.ScoreAsync(Score(q, answer, QueryMode.Cartridges, AnswerFraming.Continuation)).ResponseAsync);
        var none = await Bounded("Score none", fx.Query.ScoreAsync(Score(q, answer, QueryMode.NoContext, AnswerFraming.Continuation)).ResponseAsync);
        var framed = await Bounded("Score framed", fx.Query.ScoreAsync(Score(q, answer, QueryMode.NoContext, AnswerFraming.Question)).ResponseAsync);
        Assert.NotEqual(cas.Nll, none.Nll, 3);
        Assert.NotEqual(none.Nll, framed.Nll, 3);
        Assert.Equal(Prompting.Encode(fx.Tokenizer!, "the cat and the red ball", addStart: true), none.Prompt);
        Assert.EndsWith("Question: the cat and the red ball\nAnswer:", fx.Tokenizer!.Decode([.. framed.Prompt]));
    }

    [Fact]
    public async Task Bad_score_requests_get_their_status_codes()
    {
        fx.Require();
        var q = new AskRequest { Collection = ServerFixture.Collection, Question = "the cat", MaxTokens = 48 };
        int[] answer = Answer(" the cat sat.");
        async Task<RpcException> Bad(string what, ScoreRequest r) => await Refused(what, () => fx.Query.ScoreAsync(r).ResponseAsync);

        var unknown = await Bad("unknown collection", Score(new AskRequest(q) { Collection = "no-such-collection" }, answer, QueryMode.Cartridges, AnswerFraming.Question));
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("no-such-collection", unknown.Status.Detail);
        var empty = await Bad("empty answer", Score(q, [], QueryMode.Cartridges, AnswerFraming.Question));
        Assert.Equal(StatusCode.InvalidArgument, empty.StatusCode);
        Assert.Contains("empty", empty.Status.Detail);
        // An answer longer than the model's context (stories260K: 512): with max_tokens 0 (the answer's length) it cannot fit.
        int context = fx.Model!.Config.MaxSeqLen;
        int[] huge = [.. Enumerable.Range(0, context + 8).Select(i => answer[i % answer.Length])];
        var tooLong = await Bad("answer too long", Score(new AskRequest(q) { MaxTokens = 0 }, huge, QueryMode.NoContext, AnswerFraming.Continuation));
        Assert.Equal(StatusCode.InvalidArgument, tooLong.StatusCode);
        Assert.Contains($"context of {context}", tooLong.Status.Detail);
        // Fits max_tokens' reservation but not with the cartridges and prompt in front: still INVALID_ARGUMENT, naming the context.
        int[] almost = [.. Enumerable.Range(0, context - 4).Select(i => answer[i % answer.Length])];
        var noRoom = await Bad("answer too long after the context", Score(new AskRequest(q) { MaxTokens = 0 }, almost, QueryMode.NoContext, AnswerFraming.Question));
        Assert.Equal(StatusCode.InvalidArgument, noRoom.StatusCode);
        var shortMax = await Bad("max_tokens below the answer", Score(new AskRequest(q) { MaxTokens = 2 }, answer, QueryMode.Rag, AnswerFraming.Question));
        Assert.Equal(StatusCode.InvalidArgument, shortMax.StatusCode);
        Assert.Contains("max_tokens=2", shortMax.Status.Detail);
        var outOfVocab = await Bad("token outside the vocabulary", Score(q, [1, fx.Model.Config.VocabSize], QueryMode.NoContext, AnswerFraming.Question));
        Assert.Equal(StatusCode.InvalidArgument, outOfVocab.StatusCode);
        Assert.Contains("vocabulary", outOfVocab.Status.Detail);
        var noRequest = new ScoreRequest(); noRequest.Answer.Add(answer);
        Assert.Equal(StatusCode.InvalidArgument, (await Bad("no request", noRequest)).StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, (await Bad("unknown mode", Score(q, answer, (QueryMode)42, AnswerFraming.Question))).StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, (await Bad("empty question", Score(new AskRequest(q) { Question = " " }, answer, QueryMode.NoContext, AnswerFraming.Question))).StatusCode);
        // The named document has no cartridge: as Ask, FAILED_PRECONDITION.
        var untrained = new AskRequest(q); untrained.DocumentIds.Add("moon");
        var pre = await Bad("untrained document", Score(untrained, answer, QueryMode.Cartridges, AnswerFraming.Question));
        Assert.Equal(StatusCode.FailedPrecondition, pre.StatusCode);
        Assert.Contains("moon", pre.Status.Detail);

        // Still serving, nothing pinned.
        var ok = await Bounded("Score after the refusals", fx.Query.ScoreAsync(Score(q, answer, QueryMode.Cartridges, AnswerFraming.Question)).ResponseAsync);
        Assert.NotEmpty(ok.Result.Documents);
        await fx.WaitIdle();
    }

    [Fact]
    public async Task AskNoContext_answers_with_nothing_retrieved_as_the_engine_does()
    {
        fx.Require();
        var q = new AskRequest { Collection = ServerFixture.Collection, Question = "What did the cat find?", MaxTokens = 12 };
        var (streamed, remote) = await Bounded("AskNoContext", ServerFixture.Collect(fx.Query.AskNoContext(q)));
        var local = await Bounded("AskAsync", new QueryEngine(fx.Server!.State).AskAsync(AskMode.NoContext, q, _ => Task.CompletedTask, CancellationToken.None));
        Assert.Equal(remote.Answer, streamed);
        Assert.Equal(local.Answer, remote.Answer);
        Assert.Equal(local.Tokens, remote.Tokens);
        Assert.Empty(remote.Documents);
        Assert.Empty(remote.Chunks);
        Assert.Equal(0, remote.Tokens.CartridgeSlots);
        Assert.True(remote.Tokens.CompletionTokens > 0);
    }

    [Fact]
    public async Task GetDocumentText_and_GetBudget()
    {
        fx.Require();
        foreach (var (id, text) in ServerFixture.Docs)
        {
            var pieces = await Bounded("GetDocumentText", ReadAll(fx.Collections.GetDocumentText(new GetDocumentTextRequest { Collection = ServerFixture.Collection, DocumentId = id })));
            Assert.Equal(text, string.Concat(pieces));
            Assert.Single(pieces);
        }
        var missing = await Refused("unknown document", () => ReadAll(fx.Collections.GetDocumentText(new GetDocumentTextRequest { Collection = ServerFixture.Collection, DocumentId = "dragon" })));
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Refused("unknown collection", () => ReadAll(fx.Collections.GetDocumentText(new GetDocumentTextRequest { Collection = "nope", DocumentId = "cat" })))).StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, (await Refused("no document id", () => ReadAll(fx.Collections.GetDocumentText(new GetDocumentTextRequest { Collection = ServerFixture.Collection })))).StatusCode);

        await Bounded("Ask", ServerFixture.Collect(fx.Query.Ask(new AskRequest { Collection = ServerFixture.Collection, Question = "the cat", MaxTokens = 2 })));
        await fx.WaitIdle();
        var budget = await Bounded("GetBudget", fx.Cartridges.GetBudgetAsync(new GetBudgetRequest()).ResponseAsync);
        var m = fx.Server!.State.Budget.Metrics();
        Assert.Equal(m.ResidentBudget, budget.ResidentBudget);
        Assert.Equal(64L << 20, budget.ResidentBudget);
        Assert.Equal(m.PeakResidentBytes, budget.PeakResidentBytes);
        Assert.True(budget.PeakResidentBytes > 0);                         // a cartridge was made resident
        Assert.True(budget.PeakResidentBytes <= budget.ResidentBudget);
        Assert.Equal(0, budget.Pinned);
    }

    [Fact]
    public async Task A_long_document_comes_in_pieces_under_the_message_limit_without_splitting_a_character()
    {
        var dir = Directory.CreateTempSubdirectory("cas-service-text-").FullName;
        try
        {
            // An 8 KiB limit: pieces of 1024 chars. A surrogate pair straddles the first boundary.
            await using var server = await ServerFixture.StartScratch(dir, o => o with { MaxMessageBytes = 8192 });
            using var channel = GrpcChannel.ForAddress(server.Address);
            var collections = new CollectionService.CollectionServiceClient(channel);
            await Bounded("create", collections.CreateCollectionAsync(new CreateCollectionRequest { Name = "t", ChunkTokens = 64 }).ResponseAsync);
            string text = string.Concat(Enumerable.Repeat("The cat sat. ", 78)) + "abcdefghi😀 and then é the end. " + string.Concat(Enumerable.Repeat("Ben saw a ship. ", 80));
            Assert.True(char.IsHighSurrogate(text[1023]));
            await Bounded("add", ServerFixture.AddDocs(collections, "t", [("long", text)]));
            var pieces = await Bounded("GetDocumentText", ReadAll(collections.GetDocumentText(new GetDocumentTextRequest { Collection = "t", DocumentId = "long" })));
            Assert.Equal(text, string.Concat(pieces));
            Assert.True(pieces.Count >= 3, $"{pieces.Count} pieces");
            Assert.All(pieces, p => Assert.True(p.Length <= 1024 && System.Text.Encoding.UTF8.GetByteCount(p) < 8192));
            Assert.Equal(1023, pieces[0].Length);                            // the pair went to the next piece whole
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    static async Task<List<string>> ReadAll(AsyncServerStreamingCall<DocumentText> call)
    {
        using (call)
        {
            var pieces = new List<string>();
            await foreach (var m in call.ResponseStream.ReadAllAsync()) pieces.Add(m.Text);
            return pieces;
        }
    }
}
