using Cas.Collections;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using static Cas.Store.Tests.StoreTestUtil;

namespace Cas.Store.Tests;

public class CollectionTests
{
    /// <summary>One token per UTF-16 unit: decoding rebuilds the text exactly, so chunk offsets are exact.</summary>
    sealed class CharTokenizer : ITokenizer
    {
        public int VocabSize => 65536;
        public int? BosId => null;
        public int? EosId => null;
        public IReadOnlyList<int> StartTokens => [];
        public int[] Encode(string text) => text.Select(c => (int)c).ToArray();
        public string Decode(ReadOnlySpan<int> ids) { var a = new char[ids.Length]; for (int i = 0; i < ids.Length; i++) a[i] = (char)ids[i]; return new string(a); }
        public int? SpecialTokenId(string content) => null;
    }

    static (Document, string) Doc(string id, string text) => (new Document(id, text, $"docs/{id}", Document.NoMetadata, Document.NoQuestions), "text");

    static CollectionCatalog NewCatalog(out string dir, int chunkTokens = 40)
    {
        dir = TempDir();
        var cat = new CollectionCatalog(dir);
        cat.Create("books", "/models/m", Fingerprint, "/models/m/tokenizer.json", chunkTokens);
        return cat;
    }

    [Fact]
    public void Add_IsIdempotent_AndChunksCoverTheText()
    {
        using var cat = NewCatalog(out _);
        var tok = new CharTokenizer();
        string text = string.Concat(Enumerable.Range(0, 30).Select(i => $"line {i} about whales. "));
        var r1 = cat.AddDocuments("books", [Doc("a.txt", text), Doc("b.txt", "short one")], tok);
        Assert.Equal((2, 0, 0), (r1.Added, r1.Changed, r1.Unchanged));
        var r2 = cat.AddDocuments("books", [Doc("a.txt", text), Doc("b.txt", "short one")], tok);
        Assert.Equal((0, 0, 2, 0L), (r2.Added, r2.Changed, r2.Unchanged, r2.Chunks));
        var a = cat.GetDocument("books", "a.txt");
        Assert.Equal((text.Length + 39) / 40, a.Chunks);
        Assert.Equal(text, cat.DocumentText("books", "a.txt"));
        var info = cat.Get("books");
        Assert.Equal((2, (long)a.Chunks + 1), (info.Documents, info.Chunks));
    }

    [Fact]
    public void Search_FindsChunksByBm25_InThisCollectionOnly()
    {
        using var cat = NewCatalog(out _);
        cat.Create("other", "/models/m", Fingerprint, "/t", 40);
        var tok = new CharTokenizer();
        cat.AddDocuments("books", [Doc("whale.txt", "The white whale swam past the ship. Nothing else happened."), Doc("cat.txt", "A cat sat on the warm mat all day long.")], tok);
        cat.AddDocuments("other", [Doc("whale2.txt", "whale whale whale")], tok);
        var hits = cat.Search("books", "where did the whale (swim)?");
        Assert.NotEmpty(hits);
        Assert.Equal("whale.txt", hits[0].DocumentId);
        Assert.All(hits, h => Assert.NotEqual("whale2.txt", h.DocumentId));
        Assert.Contains("whale", hits[0].Text);
        Assert.Empty(cat.Search("books", "???"));
    }

    [Fact]
    public void Search_RankingOfOneCollection_DoesNotDependOnAnother()
    {
        // BM25's statistics (chunk count, average length, document frequency) come from the collection's own index, so
        // the scores in "books" must stay exactly the same while "other" grows and shrinks.
        using var cat = NewCatalog(out _);
        var tok = new CharTokenizer();
        cat.Create("other", "/models/m", Fingerprint, "/models/m/tokenizer.json", 40);
        cat.AddDocuments("books", [Doc("whale.txt", "The white whale swam past the ship."), Doc("cat.txt", "A cat watched the whale and the ship.")], tok);
        var before = cat.Search("books", "whale ship cat");
        Assert.Equal(2, before.Count);
        cat.AddDocuments("other", Enumerable.Range(0, 50).Select(i => Doc($"o{i}.txt", $"whale whale ship number {i} and more words here")), tok);
        var after = cat.Search("books", "whale ship cat");
        Assert.Equal(before.Select(h => (h.DocumentId, h.Ordinal, h.Score)), after.Select(h => (h.DocumentId, h.Ordinal, h.Score)));
        Assert.True(cat.Delete("other"));
        Assert.Equal(before.Select(h => h.Score), cat.Search("books", "whale ship cat").Select(h => h.Score));
    }

    [Fact]
    public void Search_FollowsChangedAndDeletedDocuments()
    {
        using var cat = NewCatalog(out _);
        var tok = new CharTokenizer();
        cat.AddDocuments("books", [Doc("a.txt", "the harpoon was sharp"), Doc("b.txt", "a quiet harbour")], tok);
        Assert.Equal("a.txt", Assert.Single(cat.Search("books", "harpoon")).DocumentId);
        cat.AddDocuments("books", [Doc("a.txt", "the lantern was bright")], tok); // a.txt changed: its old words leave the index
        Assert.Empty(cat.Search("books", "harpoon"));
        Assert.Equal("a.txt", Assert.Single(cat.Search("books", "lantern")).DocumentId);
        Assert.True(cat.Delete("books"));
        Assert.Empty(cat.Search("books", "lantern")); // a deleted collection has nothing to find (and gets no index back)
        using (var db = Sqlite.Open(cat.Path))
        using (var c = db.Cmd("SELECT count(*) FROM sqlite_master WHERE name LIKE 'fts_%'"))
            Assert.Equal(0L, (long)c.ExecuteScalar()!);
        cat.Create("books", "/models/m", Fingerprint, "/models/m/tokenizer.json", 40);
        Assert.Empty(cat.Search("books", "lantern harbour")); // a new collection of the same name starts empty
        cat.AddDocuments("books", [Doc("c.txt", "a lantern in the harbour")], tok);
        Assert.Equal("c.txt", Assert.Single(cat.Search("books", "lantern harbour")).DocumentId);
    }

    [Fact]
    public void OldCatalogWithOneSharedIndex_IsMigratedOnOpen()
    {
        // Catalogs written before per-collection indexes kept one FTS5 table for all collections (chunks_fts, filled by
        // triggers). Rebuild that layout from a current catalog, reopen it, and expect the same hits as before.
        string dir;
        IReadOnlyList<ChunkHit> expected;
        var tok = new CharTokenizer();
        using (var cat = NewCatalog(out dir))
        {
            cat.AddDocuments("books", [Doc("whale.txt", "The white whale swam past the ship."), Doc("cat.txt", "A cat watched the whale.")], tok);
            expected = cat.Search("books", "whale cat");
        }
        using (var db = Sqlite.Open(Path.Combine(dir, "catalog.db")))
        {
            db.Exec("""
                DROP TABLE fts_1; DROP VIEW fts_1_src; DELETE FROM collection_fts;
                CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id');
                INSERT INTO chunks_fts(chunks_fts) VALUES('rebuild');
                CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text); END;
                CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
                """);
        }
        using (var cat = new CollectionCatalog(dir))
        {
            Assert.Equal(expected.Select(h => (h.DocumentId, h.Score)), cat.Search("books", "whale cat").Select(h => (h.DocumentId, h.Score)));
            cat.AddDocuments("books", [Doc("dog.txt", "A dog and a whale.")], tok); // kept in step without the old triggers
            Assert.Contains(cat.Search("books", "dog"), h => h.DocumentId == "dog.txt");
        }
        using (var db = Sqlite.Open(Path.Combine(dir, "catalog.db")))
        using (var c = db.Cmd("SELECT count(*) FROM sqlite_master WHERE name IN ('chunks_fts', 'chunks_ai', 'chunks_ad')"))
            Assert.Equal(0L, (long)c.ExecuteScalar()!);
    }

    [Fact]
    public void ChangingOneDocument_MakesOnlyItsCartridgeStale()
    {
        using var cat = NewCatalog(out var dir);
        using var store = new FasterCartridgeStore(dir, new FasterStoreOptions { ChunkBytes = 4096, PageBits = 16, MemoryBytes = 1 << 20 });
        var tok = new CharTokenizer();
        cat.AddDocuments("books", [Doc("a.txt", "alpha text"), Doc("b.txt", "beta text"), Doc("c d.txt", "gamma text")], tok);
        Assert.Equal(3, cat.NeedingTraining("books", store).Count);
        int seed = 0;
        foreach (var d in cat.Documents("books")) store.Put(d.CartridgeId, Make(seed++), CollectionCatalog.CartridgeLabels(d));
        Assert.Empty(cat.NeedingTraining("books", store));
        Assert.Equal("books/c%20d.txt", cat.GetDocument("books", "c d.txt").CartridgeId);
        var versionsBefore = store.List().ToDictionary(i => i.Id, i => i.Version);

        var r = cat.AddDocuments("books", [Doc("a.txt", "alpha text"), Doc("b.txt", "beta text, revised"), Doc("c d.txt", "gamma text")], tok);
        Assert.Equal((0, 1, 2), (r.Added, r.Changed, r.Unchanged));
        var status = cat.Status("books", store).ToDictionary(s => s.Document.DocumentId, s => s.State);
        Assert.Equal(CartridgeState.Fresh, status["a.txt"]);
        Assert.Equal(CartridgeState.Stale, status["b.txt"]);
        Assert.Equal(CartridgeState.Fresh, status["c d.txt"]);
        Assert.Equal("b.txt", Assert.Single(cat.NeedingTraining("books", store)).DocumentId);
        Assert.Equal(versionsBefore, store.List().ToDictionary(i => i.Id, i => i.Version)); // no cartridge touched
    }

    /// <summary>Counts the lookups of a store (and passes everything through).</summary>
    sealed class CountingStore(ICartridgeStore inner) : ICartridgeStore
    {
        public readonly List<string> Found = [];
        public StoredCartridgeInfo Put(string id, Cas.Engine.Cartridges.Cartridge cartridge, IReadOnlyDictionary<string, string>? labels = null, StoredDType dtype = StoredDType.BF16, CancellationToken cancellation = default) => inner.Put(id, cartridge, labels, dtype, cancellation);
        public StoredCartridgeInfo? Find(string id) { Found.Add(id); return inner.Find(id); }
        public IReadOnlyList<StoredCartridgeInfo> List(string? idPrefix = null) => throw new InvalidOperationException("listed the whole store");
        public StoredCartridge Get(string id, CancellationToken cancellation = default) => inner.Get(id, cancellation);
        public StoredFile ReadFile(string id, CancellationToken cancellation = default) => inner.ReadFile(id, cancellation);
        public bool Delete(string id) => inner.Delete(id);
        public VerifyReport Verify(CancellationToken cancellation = default) => inner.Verify(cancellation);
        public CompactReport Compact() => inner.Compact();
        public void Dispose() { }
    }

    /// <summary>
    /// Status of named documents (what a question retrieved) reads only those: one store lookup each, in the order
    /// given, unknown and repeated ids left out — an untrained document that was not named does not show up.
    /// </summary>
    [Fact]
    public void StatusOfNamedDocuments_LooksUpOnlyThose()
    {
        using var cat = NewCatalog(out var dir);
        using var inner = new FasterCartridgeStore(dir, new FasterStoreOptions { ChunkBytes = 4096, PageBits = 16, MemoryBytes = 1 << 20 });
        var tok = new CharTokenizer();
        cat.AddDocuments("books", Enumerable.Range(0, 20).Select(i => Doc($"d{i:00}.txt", $"text number {i}")), tok);
        var docs = cat.Documents("books");
        inner.Put(docs[3].CartridgeId, Make(1), CollectionCatalog.CartridgeLabels(docs[3]));
        inner.Put(docs[7].CartridgeId, Make(2), new Dictionary<string, string> { [CollectionCatalog.LabelContentHash] = "old" });
        var store = new CountingStore(inner);

        var s = cat.Status("books", store, ["d07.txt", "d03.txt", "nope", "d03.txt"]);
        Assert.Equal(["d07.txt", "d03.txt"], s.Select(x => x.Document.DocumentId));
        Assert.Equal([CartridgeState.Stale, CartridgeState.Fresh], s.Select(x => x.State));
        Assert.Equal(["books/d07.txt", "books/d03.txt"], store.Found);
        Assert.Empty(cat.Status("books", store, []));
        // The whole-collection form still looks at every document.
        store.Found.Clear();
        Assert.Equal(20, cat.Status("books", store).Count);
        Assert.Equal(20, store.Found.Count);
    }

    [Fact]
    public void Jobs_RecordProgressPerDocument()
    {
        using var cat = NewCatalog(out _);
        cat.AddDocuments("books", [Doc("a.txt", "alpha"), Doc("b.txt", "beta")], new CharTokenizer());
        long job = cat.CreateJob("books", "train", "{\"p\":64}", ["a.txt", "b.txt"], stepsPerDocument: 100);
        cat.UpdateJobDocument(job, "a.txt", JobState.Running, 40, loss: 1.5);
        cat.UpdateJobDocument(job, "a.txt", JobState.Done, 100, loss: 0.9, cartridgeVersion: 3);
        Assert.Equal(JobState.Running, Assert.Single(cat.Jobs("books")).State);
        var docs = cat.JobDocuments(job);
        Assert.Equal((JobState.Done, 100L, 0.9, 3L), (docs[0].State, docs[0].StepsDone, docs[0].Loss!.Value, docs[0].CartridgeVersion!.Value));
        Assert.Equal((JobState.Queued, 0L), (docs[1].State, docs[1].StepsDone));
        cat.FinishJob(job, JobState.Failed, "disk full");
        Assert.Equal("disk full", cat.Jobs("books")[0].Error);
        Assert.Throws<Cas.Engine.InvalidRequestException>(() => cat.UpdateJobDocument(job, "zzz", JobState.Running, 1));
    }

    [Fact]
    public void BadNames_AndDuplicates_AreRefused()
    {
        using var cat = NewCatalog(out _);
        Assert.Throws<Cas.Engine.InvalidRequestException>(() => cat.Create("books", "/m", Fingerprint, "/t"));
        Assert.Throws<Cas.Engine.InvalidRequestException>(() => cat.Create("has space", "/m", Fingerprint, "/t"));
        var e = Assert.Throws<Cas.Engine.InvalidRequestException>(() => cat.Get("nope"));
        Assert.Contains("cas collection create", e.Message);
    }
    /// <summary>
    /// Chunk vectors by construction: a=(1,0,0), b=(0,1,0), c=(1,1,0) against q=(1,0.2,0) have cosines 1/√1.04,
    /// 0.2/√1.04 and 1.2/(√2·√1.04), so SearchDense must give a, c, b with exactly those scores (1e-6: float32 inputs,
    /// double sums). Vectors are per model, go with a changed document's old text, and a stale one is not stored.
    /// </summary>
    [Fact]
    public void ChunkVectors_SearchDenseByCosine_PerModel_DroppedWithOldText()
    {
        using var cat = NewCatalog(out _);
        cat.Create("other", "/models/m", Fingerprint, "/t", 40);
        var tok = new CharTokenizer();
        cat.AddDocuments("books", [Doc("a", "alpha text"), Doc("b", "beta text"), Doc("c", "gamma text")], tok);
        cat.AddDocuments("other", [Doc("z", "zeta text")], tok);
        var missing = cat.ChunksWithoutVector("books", "m1");
        Assert.Equal(["a", "b", "c"], missing.Select(m => m.DocumentId));
        float[] V(string doc) => doc switch { "a" => [1, 0, 0], "b" => [0, 1, 0], "c" => [1, 1, 0], _ => [1, 0.2f, 0] };
        Assert.Equal(3, cat.PutChunkVectors("books", "m1", missing.Select(m => (m, V(m.DocumentId)))));
        Assert.Equal(1, cat.PutChunkVectors("other", "m1", cat.ChunksWithoutVector("other", "m1").Select(m => (m, V("q")))));
        Assert.Empty(cat.ChunksWithoutVector("books", "m1"));
        Assert.Equal(3, cat.ChunksWithoutVector("books", "m2").Count); // another model's vectors are not these

        float[] q = [1, 0.2f, 0];
        var hits = cat.SearchDense("books", "m1", q, k: 3);
        Assert.Equal(["a", "c", "b"], hits.Select(h => h.DocumentId)); // not "z" of the other collection, though it equals q
        double n = Math.Sqrt(1.04);
        Assert.Equal(1 / n, hits[0].Score, 1e-6); Assert.Equal(1.2 / (Math.Sqrt(2) * n), hits[1].Score, 1e-6); Assert.Equal(0.2 / n, hits[2].Score, 1e-6);
        Assert.Equal(("beta text", 0, 0, 9), (hits[2].Text, hits[2].Ordinal, hits[2].CharStart, hits[2].CharEnd));
        Assert.Equal(["a", "c"], cat.SearchDense("books", "m1", q, k: 2).Select(h => h.DocumentId));
        Assert.Empty(cat.SearchDense("books", "m2", q));

        // A changed document: its vector goes with its old chunks; one computed from the old text is refused.
        var oldB = missing.Single(m => m.DocumentId == "b");
        cat.AddDocuments("books", [Doc("b", "beta, rewritten")], tok);
        Assert.Equal(["b"], cat.ChunksWithoutVector("books", "m1").Select(m => m.DocumentId));
        Assert.Equal(["a", "c"], cat.SearchDense("books", "m1", q).Select(h => h.DocumentId));
        Assert.Equal(0, cat.PutChunkVectors("books", "m1", [(oldB, V("b"))]));
        Assert.Single(cat.ChunksWithoutVector("books", "m1"));

        Assert.Throws<Cas.Engine.InvalidRequestException>(() => cat.SearchDense("books", "m1", new float[3]));      // zero query
        Assert.Throws<Cas.Engine.InvalidRequestException>(() => cat.SearchDense("books", "m1", new float[] { 1, 0 })); // wrong dimension

        // A deleted collection's vectors go with it.
        Assert.True(cat.Delete("books"));
        cat.Create("books", "/models/m", Fingerprint, "/t", 40);
        cat.AddDocuments("books", [Doc("a", "alpha text")], tok);
        Assert.Single(cat.ChunksWithoutVector("books", "m1"));
        Assert.Single(cat.ChunksWithoutVector("other", "m2"));
        Assert.Empty(cat.ChunksWithoutVector("other", "m1"));
    }
}
