using Cas.Service.V1;
using Grpc.Core;

namespace Cas.Service.Tests;

/// <summary>
/// AskRequest.retrieval = "dense": chunks ranked by cosine similarity of stories260K's mean-pooled final hidden states,
/// chunk vectors computed lazily (once per chunk text) and kept in the catalog. Every call has a deadline and every
/// other await a timeout, so a stuck call fails its test instead of hanging the run.
/// </summary>
public sealed class DenseRetrievalTests(ServerFixture fx, ITestOutputHelper output) : IClassFixture<ServerFixture>
{
    static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    static DateTime Deadline => DateTime.UtcNow + Limit;

    static readonly (string Id, string Text)[] Docs =
    [
        .. ServerFixture.Docs,
        ("cake", "Mom baked a sweet cake for the party. The cake had pink frosting and six candles. Everyone sang a happy song."),
        ("rain", "It rained all day and the streets were wet. Tim put on his yellow boots and jumped in the puddles."),
    ];

    async Task<AskResult> AskRag(string collection, string question, string retrieval = "dense")
    {
        using var call = fx.Query.AskRag(new AskRequest { Collection = collection, Question = question, MaxTokens = 1, Retrieval = retrieval }, deadline: Deadline);
        return (await ServerFixture.Collect(call).WaitAsync(Limit)).Result;
    }

    async Task Create(string name, int chunkTokens, IEnumerable<(string Id, string Text)> docs)
    {
        await fx.Collections.CreateCollectionAsync(new CreateCollectionRequest { Name = name, ChunkTokens = chunkTokens }, deadline: Deadline);
        await ServerFixture.AddDocs(fx.Collections, name, docs).WaitAsync(Limit);
    }

    long Computed => fx.Server!.State.Dense.ChunkVectorsComputed;

    [Fact]
    public async Task A_verbatim_sentence_of_a_document_ranks_it_first()
    {
        fx.Require();
        await Create("dense-rank", 64, Docs); // 64 tokens: each document is one chunk
        foreach (var (id, text) in Docs)
        {
            string sentence = text.Split(". ")[1].TrimEnd('.') + ".";
            var r = await AskRag("dense-rank", sentence);
            output.WriteLine($"{id}: '{sentence}' → {string.Join(", ", r.Chunks.Select(c => $"{c.DocumentId}={c.Score:F4}"))}");
            Assert.True(r.Chunks.Count == Docs.Length, $"'{sentence}': {r.Chunks.Count} chunks retrieved");
            Assert.True(r.Chunks[0].DocumentId == id, $"'{sentence}' ranked {string.Join(", ", r.Chunks.Select(c => $"{c.DocumentId}={c.Score:F4}"))}");
            Assert.Equal(id, r.Documents[0].DocumentId);
            for (int i = 1; i < r.Chunks.Count; i++) Assert.True(r.Chunks[i - 1].Score >= r.Chunks[i].Score, "best first");
            Assert.InRange(r.Chunks[0].Score, -1.0001, 1.0001); // a cosine
        }
    }

    [Fact]
    public async Task Vectors_are_computed_once_and_again_only_for_a_changed_document()
    {
        fx.Require();
        const string name = "dense-lazy";
        await Create(name, 16, Docs);
        var state = fx.Server!.State;
        long chunks = state.Catalog.Get(name).Chunks;
        Assert.True(chunks > Docs.Length, "16-token chunks: several per document");

        long c0 = Computed;
        await AskRag(name, "the cat and the frog", retrieval: "bm25");
        Assert.Equal(c0, Computed); // BM25 embeds nothing
        await AskRag(name, "the cat and the frog");
        Assert.Equal(chunks, Computed - c0); // every chunk once
        long c1 = Computed;
        await AskRag(name, "a ship with white sails");
        Assert.Equal(c1, Computed); // all stored: none again

        // A changed document: exactly its (new) chunks lack vectors; the others keep theirs.
        var changed = ("ship", "Ben saw a small boat on the lake. The boat was red. Ben rowed the boat to the shore and went home for dinner.");
        var added = await ServerFixture.AddDocs(fx.Collections, name, [changed]).WaitAsync(Limit);
        Assert.Equal(1, added.Changed);
        var ship = state.Catalog.GetDocument(name, "ship");
        var missing = state.Catalog.ChunksWithoutVector(name, state.Model(fx.ModelPath!, fx.TokenizerPath!).Fingerprint);
        Assert.Equal(ship.Chunks, missing.Count);
        Assert.All(missing, m => Assert.Equal("ship", m.DocumentId));
        var r = await AskRag(name, "Ben rowed the boat to the shore.");
        Assert.Equal(ship.Chunks, Computed - c1);
        Assert.Equal("ship", r.Chunks[0].DocumentId);

        // Deleting the collection drops its vectors: the same documents under the same name are embedded anew.
        await fx.Collections.DeleteCollectionAsync(new DeleteCollectionRequest { Name = name }, deadline: Deadline);
        await Create(name, 16, Docs);
        long c2 = Computed;
        await AskRag(name, "the cat and the frog");
        Assert.Equal(state.Catalog.Get(name).Chunks, Computed - c2);
    }

    [Fact]
    public async Task Unknown_retrieval_is_invalid_argument()
    {
        fx.Require();
        var q = new AskRequest { Collection = ServerFixture.Collection, Question = "the cat", MaxTokens = 1, Retrieval = "nonsense" };
        foreach (var call in new Func<AsyncServerStreamingCall<AskResponse>>[]
                 { () => fx.Query.Ask(q, deadline: Deadline), () => fx.Query.AskRag(q, deadline: Deadline), () => fx.Query.AskIcl(q, deadline: Deadline) })
        {
            var e = await Assert.ThrowsAsync<RpcException>(async () => { using var c = call(); await ServerFixture.Collect(c); }).WaitAsync(Limit);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.Contains("nonsense", e.Status.Detail);
        }
    }
}
