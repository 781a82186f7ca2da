using System.Globalization;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using Cas.SelfStudy;
using Cas.Store;
using Microsoft.Data.Sqlite;

namespace Cas.Collections;

/// <summary>A collection: documents of one model (by fingerprint), chunked for retrieval, one cartridge per document.</summary>
public sealed record CollectionInfo(string Name, string ModelPath, string ModelFingerprint, string TokenizerPath, int ChunkTokens,
    DateTime CreatedUtc, int Documents, long Chunks, long Characters);

/// <summary>A document as the catalog keeps it (its text is in the catalog too; see <see cref="CollectionCatalog.DocumentText"/>).</summary>
public sealed record DocumentRow(string Collection, string DocumentId, string Kind, string Source, string ContentHash, int Characters, int Tokens,
    int Chunks, DateTime UpdatedUtc)
{
    /// <summary>The id of this document's cartridge in the store: "collection/document" (whitespace, control characters and % escaped).</summary>
    public string CartridgeId => CollectionCatalog.CartridgeId(Collection, DocumentId);
}

/// <summary>Where a document's cartridge stands: none yet, trained on the current text, trained on an older text, or damaged.</summary>
public enum CartridgeState { Missing, Fresh, Stale, Bad }

public sealed record DocumentStatus(DocumentRow Document, CartridgeState State, StoredCartridgeInfo? Cartridge);

/// <summary>What <see cref="CollectionCatalog.AddDocuments"/> did: new documents, documents whose text changed, and repeats.</summary>
public sealed record AddReport(int Added, int Changed, int Unchanged, long Chunks);

/// <summary>
/// A retrieved chunk. <see cref="Score"/>: SQLite's bm25 for <see cref="CollectionCatalog.Search"/> (lower is better),
/// cosine similarity for <see cref="CollectionCatalog.SearchDense"/> (higher is better).
/// </summary>
public sealed record ChunkHit(string DocumentId, int Ordinal, int CharStart, int CharEnd, string Text, double Score);

/// <summary>A chunk's text, where it is, and the content hash of its document's text (what <see cref="CollectionCatalog.PutChunkVectors"/> checks).</summary>
public sealed record ChunkText(string DocumentId, int Ordinal, string Text, string ContentHash);

public enum JobState { Queued, Running, Done, Failed, Cancelled }

/// <summary>A training job over some documents of a collection (rows written by the trainer as it goes).</summary>
public sealed record JobRow(long Id, string Collection, string Kind, JobState State, string Settings, DateTime CreatedUtc, DateTime UpdatedUtc, string? Error);

/// <summary>One document's progress within a job.</summary>
public sealed record JobDocumentRow(long JobId, string DocumentId, JobState State, long StepsDone, long StepsTotal, double? Loss, long? CartridgeVersion);

/// <summary>
/// The collections' metadata in SQLite (DATA_DIR/catalog.db): collections, documents (with their text and content
/// hash), chunks with an FTS5 index per collection for BM25 retrieval and with their dense vectors (float32, one model's, dropped
/// with their document's old text), and training jobs with per-document progress. Cartridges are not here: they live in the <see cref="ICartridgeStore"/> under <see cref="CartridgeId"/>, labelled with the
/// content hash they were trained on, which is how a changed document's cartridge becomes stale (and only that one).
/// Thread-safe (one connection, serialized).
/// </summary>
public sealed class CollectionCatalog : IDisposable
{
    /// <summary>Label keys this catalog puts on cartridges (see <see cref="CartridgeLabels"/>).</summary>
    public const string LabelCollection = "collection", LabelDocument = "document", LabelSource = "source", LabelContentHash = "content_hash";

    readonly SqliteConnection db;
    readonly object gate = new();

    public CollectionCatalog(string dataDir)
    {
        Directory.CreateDirectory(dataDir);
        Path = System.IO.Path.Combine(System.IO.Path.GetFullPath(dataDir), "catalog.db");
        db = Sqlite.Open(Path);
        db.Exec("""
            CREATE TABLE IF NOT EXISTS collections(
              name TEXT PRIMARY KEY, model TEXT NOT NULL, fingerprint TEXT NOT NULL, tokenizer TEXT NOT NULL,
              chunk_tokens INTEGER NOT NULL, created TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS documents(
              collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE, doc_id TEXT NOT NULL,
              kind TEXT NOT NULL, source TEXT NOT NULL, content_hash TEXT NOT NULL, text TEXT NOT NULL,
              chars INTEGER NOT NULL, tokens INTEGER NOT NULL, chunks INTEGER NOT NULL, updated TEXT NOT NULL,
              PRIMARY KEY(collection, doc_id));
            CREATE TABLE IF NOT EXISTS chunks(
              id INTEGER PRIMARY KEY, collection TEXT NOT NULL, doc_id TEXT NOT NULL, ord INTEGER NOT NULL,
              char_start INTEGER NOT NULL, char_end INTEGER NOT NULL, token_start INTEGER NOT NULL, token_end INTEGER NOT NULL, text TEXT NOT NULL,
              FOREIGN KEY(collection, doc_id) REFERENCES documents(collection, doc_id) ON DELETE CASCADE);
            CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(collection, doc_id, ord);
            CREATE TABLE IF NOT EXISTS collection_fts(name TEXT PRIMARY KEY, n INTEGER NOT NULL UNIQUE);
            CREATE TABLE IF NOT EXISTS chunk_vectors(
              collection TEXT NOT NULL, doc_id TEXT NOT NULL, ord INTEGER NOT NULL, fingerprint TEXT NOT NULL, vec BLOB NOT NULL,
              PRIMARY KEY(collection, doc_id, ord),
              FOREIGN KEY(collection, doc_id) REFERENCES documents(collection, doc_id) ON DELETE CASCADE);
            CREATE TABLE IF NOT EXISTS jobs(
              id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
              kind TEXT NOT NULL, state TEXT NOT NULL, settings TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, error TEXT);
            CREATE TABLE IF NOT EXISTS job_documents(
              job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, doc_id TEXT NOT NULL, state TEXT NOT NULL,
              steps_done INTEGER NOT NULL, steps_total INTEGER NOT NULL, loss REAL, cartridge_version INTEGER,
              PRIMARY KEY(job_id, doc_id));
            """);
        MigrateSharedFts();
    }

    // ---- BM25 index: one FTS5 table per collection ----
    // FTS5's bm25() takes its statistics (row count, average length, each term's document frequency) from the whole
    // table, so with one table for every collection, adding documents to one collection changed another's ranking.
    // Each collection has its own table, fts_N (N from collection_fts, never reused while the table exists), whose
    // external content is the view fts_N_src over that collection's chunks; the code keeps it in step with the
    // chunks it inserts and deletes (triggers cannot choose a table per row).

    /// <summary>The collection's FTS5 table, created (and filled from its chunks) if it has none. Call under the gate.</summary>
    string Fts(string collection)
    {
        using (var q = Cmd("SELECT n FROM collection_fts WHERE name=$n", ("$n", collection)))
            if (q.ExecuteScalar() is long n) return $"fts_{n}";
        ValidateName(collection); // the name goes into the view's SQL as a literal: letters, digits, '-', '_', '.' only
        using var tx = db.BeginTransaction();
        long next;
        using (var q = Cmd("SELECT coalesce(max(n), 0) + 1 FROM collection_fts")) { q.Transaction = tx; next = (long)q.ExecuteScalar()!; }
        string t = $"fts_{next}";
        foreach (var sql in new[]
        {
            $"CREATE VIEW {t}_src AS SELECT id, text FROM chunks WHERE collection = '{collection}'",
            $"CREATE VIRTUAL TABLE {t} USING fts5(text, content='{t}_src', content_rowid='id')",
            $"INSERT INTO {t}({t}) VALUES('rebuild')",
            $"INSERT INTO collection_fts(name, n) VALUES('{collection}', {next})",
        })
            using (var c = Cmd(sql)) { c.Transaction = tx; c.ExecuteNonQuery(); }
        tx.Commit();
        return t;
    }

    /// <summary>Drops the collection's FTS5 table and its view (nothing if it has none). Call under the gate, inside <paramref name="tx"/>.</summary>
    void DropFts(string collection, SqliteTransaction tx)
    {
        long? n;
        using (var q = Cmd("SELECT n FROM collection_fts WHERE name=$n", ("$n", collection))) { q.Transaction = tx; n = q.ExecuteScalar() as long?; }
        if (n == null) return;
        foreach (var sql in new[] { $"DROP TABLE IF EXISTS fts_{n}", $"DROP VIEW IF EXISTS fts_{n}_src", $"DELETE FROM collection_fts WHERE n={n}" })
            using (var c = Cmd(sql)) { c.Transaction = tx; c.ExecuteNonQuery(); }
    }

    /// <summary>
    /// Catalogs written before per-collection indexes had one FTS5 table (chunks_fts, kept by triggers) for all
    /// collections: drop it and its triggers and index each collection in its own table.
    /// </summary>
    void MigrateSharedFts()
    {
        lock (gate)
        {
            using (var q = Cmd("SELECT count(*) FROM sqlite_master WHERE name='chunks_fts'"))
                if ((long)q.ExecuteScalar()! == 0) return;
            db.Exec("DROP TRIGGER IF EXISTS chunks_ai; DROP TRIGGER IF EXISTS chunks_ad; DROP TABLE IF EXISTS chunks_fts;");
            var names = new List<string>();
            using (var q = Cmd("SELECT name FROM collections"))
            using (var r = q.ExecuteReader())
                while (r.Read()) names.Add(r.GetString(0));
            foreach (var name in names) Fts(name);
        }
    }

    /// <summary>The catalog's database file.</summary>
    public string Path { get; }

    // ---- collections ----

    /// <summary>Creates a collection bound to a model (by fingerprint). Names: letters, digits, '-', '_', '.'.</summary>
    public CollectionInfo Create(string name, string modelPath, string modelFingerprint, string tokenizerPath, int chunkTokens = 512)
    {
        ValidateName(name);
        if (chunkTokens < 16) throw new InvalidRequestException($"chunk size must be at least 16 tokens, got {chunkTokens}.");
        lock (gate)
        {
            if (Find(name) != null) throw new InvalidRequestException($"collection '{name}' already exists; `cas collection status {name}` shows it.");
            using var c = Cmd("INSERT INTO collections(name, model, fingerprint, tokenizer, chunk_tokens, created) VALUES($n, $m, $f, $t, $c, $at)",
                ("$n", name), ("$m", modelPath), ("$f", modelFingerprint), ("$t", tokenizerPath), ("$c", chunkTokens), ("$at", Now()));
            c.ExecuteNonQuery();
            Fts(name);
            return Get(name);
        }
    }

    public CollectionInfo? Find(string name)
    {
        lock (gate)
        {
            using var c = Cmd(CollectionSelect + " WHERE c.name=$n", ("$n", name));
            using var r = c.ExecuteReader();
            return r.Read() ? ReadCollection(r) : null;
        }
    }

    public CollectionInfo Get(string name) => Find(name)
        ?? throw new InvalidRequestException($"no collection '{name}'; create it with `cas collection create {name} --model M` (`cas collection ls` lists them).");

    public IReadOnlyList<CollectionInfo> List()
    {
        lock (gate)
        {
            using var c = Cmd(CollectionSelect + " ORDER BY c.name");
            using var r = c.ExecuteReader();
            var list = new List<CollectionInfo>();
            while (r.Read()) list.Add(ReadCollection(r));
            return list;
        }
    }

    const string CollectionSelect = """
        SELECT c.name, c.model, c.fingerprint, c.tokenizer, c.chunk_tokens, c.created,
          (SELECT count(*) FROM documents d WHERE d.collection=c.name),
          (SELECT coalesce(sum(d.chunks), 0) FROM documents d WHERE d.collection=c.name),
          (SELECT coalesce(sum(d.chars), 0) FROM documents d WHERE d.collection=c.name)
        FROM collections c
        """;

    static CollectionInfo ReadCollection(SqliteDataReader r) => new(r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetInt32(4),
        ParseTime(r.GetString(5)), r.GetInt32(6), r.GetInt64(7), r.GetInt64(8));

    /// <summary>Removes a collection with its documents, chunks and jobs (its cartridges stay in the store); false if absent.</summary>
    public bool Delete(string name)
    {
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            DropFts(name, tx);
            foreach (var sql in new[]
            {
                "DELETE FROM chunks WHERE collection=$n",
                "DELETE FROM chunk_vectors WHERE collection=$n",
                "DELETE FROM job_documents WHERE job_id IN (SELECT id FROM jobs WHERE collection=$n)",
                "DELETE FROM jobs WHERE collection=$n",
                "DELETE FROM documents WHERE collection=$n",
            })
                using (var c = Cmd(sql, ("$n", name))) { c.Transaction = tx; c.ExecuteNonQuery(); }
            int removed;
            using (var c = Cmd("DELETE FROM collections WHERE name=$n", ("$n", name))) { c.Transaction = tx; removed = c.ExecuteNonQuery(); }
            tx.Commit();
            return removed == 1;
        }
    }

    // ---- documents ----

    /// <summary>
    /// Adds documents (idempotent: a document id already present with the same content hash is left alone; with a
    /// different hash its text and chunks are replaced, which makes its cartridge — and only its — stale).
    /// <paramref name="tokenizer"/> cuts chunks of the collection's chunk size in tokens.
    /// </summary>
    public AddReport AddDocuments(string collection, IEnumerable<(Document Document, string Kind)> documents, ITokenizer tokenizer,
        Action<int>? progress = null, CancellationToken cancellation = default)
    {
        var info = Get(collection);
        string fts;
        lock (gate) fts = Fts(collection);
        int added = 0, changed = 0, unchanged = 0, seen = 0;
        long chunkCount = 0;
        foreach (var (doc, kind) in documents)
        {
            cancellation.ThrowIfCancellationRequested();
            string hash = ContentHash(doc.Text);
            string? old;
            lock (gate)
            {
                using var q = Cmd("SELECT content_hash FROM documents WHERE collection=$c AND doc_id=$d", ("$c", collection), ("$d", doc.Id));
                old = q.ExecuteScalar() as string;
            }
            if (old == hash) { unchanged++; progress?.Invoke(++seen); continue; }
            var chunker = new Chunker([doc], new ChunkerOptions { Unit = ChunkUnit.Tokens, MinSize = 1, MaxSize = info.ChunkTokens }, tokenizer);
            var chunks = doc.Text.Length == 0 ? [] : chunker.Tiles(0).ToList();
            lock (gate)
            {
                using var tx = db.BeginTransaction();
                SqliteCommand T(SqliteCommand c) { c.Transaction = tx; return c; }
                using (var c = T(Cmd($"INSERT INTO {fts}({fts}, rowid, text) SELECT 'delete', id, text FROM chunks WHERE collection=$c AND doc_id=$d",
                    ("$c", collection), ("$d", doc.Id)))) c.ExecuteNonQuery();
                using (var c = T(Cmd("DELETE FROM chunks WHERE collection=$c AND doc_id=$d", ("$c", collection), ("$d", doc.Id)))) c.ExecuteNonQuery();
                using (var c = T(Cmd("DELETE FROM chunk_vectors WHERE collection=$c AND doc_id=$d", ("$c", collection), ("$d", doc.Id)))) c.ExecuteNonQuery();
                using (var c = T(Cmd("""
                    INSERT OR REPLACE INTO documents(collection, doc_id, kind, source, content_hash, text, chars, tokens, chunks, updated)
                    VALUES($c, $d, $k, $s, $h, $t, $n, $tok, $ch, $u)
                    """, ("$c", collection), ("$d", doc.Id), ("$k", kind), ("$s", doc.Source), ("$h", hash), ("$t", doc.Text), ("$n", doc.Text.Length),
                    ("$tok", (int)chunker.TotalSize), ("$ch", chunks.Count), ("$u", Now()))))
                    c.ExecuteNonQuery();
                using (var c = T(Cmd($"""
                    INSERT INTO chunks(collection, doc_id, ord, char_start, char_end, token_start, token_end, text)
                    VALUES($c, $d, $o, $cs, $ce, $ts, $te, $t);
                    INSERT INTO {fts}(rowid, text) VALUES(last_insert_rowid(), $t);
                    """)))
                {
                    var pc = c.Parameters.AddWithValue("$c", collection); var pd = c.Parameters.AddWithValue("$d", doc.Id);
                    var po = c.Parameters.Add("$o", SqliteType.Integer); var pcs = c.Parameters.Add("$cs", SqliteType.Integer);
                    var pce = c.Parameters.Add("$ce", SqliteType.Integer); var pts = c.Parameters.Add("$ts", SqliteType.Integer);
                    var pte = c.Parameters.Add("$te", SqliteType.Integer); var pt = c.Parameters.Add("$t", SqliteType.Text);
                    for (int i = 0; i < chunks.Count; i++)
                    {
                        var loc = chunks[i].Location;
                        po.Value = i; pcs.Value = loc.CharStart; pce.Value = loc.CharEnd; pts.Value = loc.TokenStart; pte.Value = loc.TokenEnd; pt.Value = chunks[i].Text;
                        c.ExecuteNonQuery();
                    }
                }
                tx.Commit();
            }
            chunkCount += chunks.Count;
            if (old == null) added++; else changed++;
            progress?.Invoke(++seen);
        }
        return new AddReport(added, changed, unchanged, chunkCount);
    }

    public IReadOnlyList<DocumentRow> Documents(string collection)
    {
        Get(collection);
        lock (gate)
        {
            using var c = Cmd("SELECT collection, doc_id, kind, source, content_hash, chars, tokens, chunks, updated FROM documents WHERE collection=$c ORDER BY doc_id", ("$c", collection));
            using var r = c.ExecuteReader();
            var list = new List<DocumentRow>();
            while (r.Read())
                list.Add(new DocumentRow(r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetInt32(5), r.GetInt32(6), r.GetInt32(7), ParseTime(r.GetString(8))));
            return list;
        }
    }

    public DocumentRow GetDocument(string collection, string documentId) =>
        Documents(collection).FirstOrDefault(d => d.DocumentId == documentId)
        ?? throw new InvalidRequestException($"collection '{collection}' has no document '{documentId}'; `cas collection status {collection}` lists its documents.");

    /// <summary>The document's text as added (what its cartridge is trained on).</summary>
    public string DocumentText(string collection, string documentId)
    {
        lock (gate)
        {
            using var c = Cmd("SELECT text FROM documents WHERE collection=$c AND doc_id=$d", ("$c", collection), ("$d", documentId));
            return c.ExecuteScalar() as string ?? throw new InvalidRequestException($"collection '{collection}' has no document '{documentId}'.");
        }
    }

    /// <summary>The labels a cartridge of <paramref name="doc"/> carries in the store (the content hash decides freshness).</summary>
    public static IReadOnlyDictionary<string, string> CartridgeLabels(DocumentRow doc) => new Dictionary<string, string>
    {
        [LabelCollection] = doc.Collection, [LabelDocument] = doc.DocumentId, [LabelSource] = doc.Source, [LabelContentHash] = doc.ContentHash,
    };

    /// <summary>Every document with the state of its cartridge in <paramref name="store"/>.</summary>
    public IReadOnlyList<DocumentStatus> Status(string collection, ICartridgeStore store)
    {
        var result = new List<DocumentStatus>();
        foreach (var d in Documents(collection)) result.Add(StatusOf(d, store));
        return result;
    }

    /// <summary>
    /// The state of only the named documents' cartridges, in the order given (each id once; ids the collection does not
    /// hold are left out): one row read and one store lookup per named document, whatever the collection's size — what
    /// a question needs for the documents it retrieved.
    /// </summary>
    public IReadOnlyList<DocumentStatus> Status(string collection, ICartridgeStore store, IEnumerable<string> documentIds)
    {
        ArgumentNullException.ThrowIfNull(documentIds);
        Get(collection);
        var result = new List<DocumentStatus>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var id in documentIds)
        {
            if (!seen.Add(id)) continue;
            DocumentRow? d = null;
            lock (gate)
            {
                using var c = Cmd("SELECT collection, doc_id, kind, source, content_hash, chars, tokens, chunks, updated FROM documents WHERE collection=$c AND doc_id=$d", ("$c", collection), ("$d", id));
                using var r = c.ExecuteReader();
                if (r.Read()) d = new DocumentRow(r.GetString(0), r.GetString(1), r.GetString(2), r.GetString(3), r.GetString(4), r.GetInt32(5), r.GetInt32(6), r.GetInt32(7), ParseTime(r.GetString(8)));
            }
            if (d != null) result.Add(StatusOf(d, store));
        }
        return result;
    }

    static DocumentStatus StatusOf(DocumentRow d, ICartridgeStore store)
    {
        var info = store.Find(d.CartridgeId);
        var state = info == null ? CartridgeState.Missing
            : info.Bad != null ? CartridgeState.Bad
            : info.Labels.TryGetValue(LabelContentHash, out var h) && h == d.ContentHash ? CartridgeState.Fresh
            : CartridgeState.Stale;
        return new DocumentStatus(d, state, info);
    }

    /// <summary>The documents a training run must (re)train: no cartridge, a stale one, or a bad one.</summary>
    public IReadOnlyList<DocumentRow> NeedingTraining(string collection, ICartridgeStore store) =>
        Status(collection, store).Where(s => s.State != CartridgeState.Fresh).Select(s => s.Document).ToList();

    /// <summary>
    /// BM25 search over the collection's chunks (SQLite FTS5, one index per collection: its ranking depends on its own
    /// chunks only). The query's words are matched with OR; FTS syntax in the query is not interpreted.
    /// </summary>
    public IReadOnlyList<ChunkHit> Search(string collection, string query, int k = 10)
    {
        var words = new List<string>();
        var sb = new StringBuilder();
        foreach (char ch in query + " ")
            if (char.IsLetterOrDigit(ch)) sb.Append(ch);
            else if (sb.Length > 0) { words.Add("\"" + sb + "\""); sb.Clear(); }
        if (words.Count == 0) return [];
        lock (gate)
        {
            if (Find(collection) == null) return []; // nothing to search (and no index to create for a collection that does not exist)
            string fts = Fts(collection);
            using var c = Cmd($"""
                SELECT c.doc_id, c.ord, c.char_start, c.char_end, c.text, bm25({fts}) AS score
                FROM {fts} JOIN chunks c ON c.id = {fts}.rowid
                WHERE {fts} MATCH $q ORDER BY score LIMIT $k
                """, ("$q", string.Join(" OR ", words)), ("$k", k));
            using var r = c.ExecuteReader();
            var hits = new List<ChunkHit>();
            while (r.Read()) hits.Add(new ChunkHit(r.GetString(0), r.GetInt32(1), r.GetInt32(2), r.GetInt32(3), r.GetString(4), r.GetDouble(5)));
            return hits;
        }
    }

    // ---- dense vectors of chunks ----

    /// <summary>
    /// The collection's chunks that have no vector of the model <paramref name="fingerprint"/> (new or changed
    /// documents, or vectors of another model), in document and chunk order, with their document's content hash (pass
    /// it back to <see cref="PutChunkVectors"/>).
    /// </summary>
    public IReadOnlyList<ChunkText> ChunksWithoutVector(string collection, string fingerprint)
    {
        Get(collection);
        lock (gate)
        {
            using var c = Cmd("""
                SELECT c.doc_id, c.ord, c.text, d.content_hash FROM chunks c
                JOIN documents d ON d.collection = c.collection AND d.doc_id = c.doc_id
                LEFT JOIN chunk_vectors v ON v.collection = c.collection AND v.doc_id = c.doc_id AND v.ord = c.ord AND v.fingerprint = $f
                WHERE c.collection = $c AND v.ord IS NULL ORDER BY c.doc_id, c.ord
                """, ("$c", collection), ("$f", fingerprint));
            using var r = c.ExecuteReader();
            var list = new List<ChunkText>();
            while (r.Read()) list.Add(new ChunkText(r.GetString(0), r.GetInt32(1), r.GetString(2), r.GetString(3)));
            return list;
        }
    }

    /// <summary>
    /// Stores chunk vectors (float32) of the model <paramref name="fingerprint"/>, replacing older ones. A vector whose
    /// document no longer has the content hash it was computed from (the text changed meanwhile) is dropped; returns
    /// how many were stored.
    /// </summary>
    public int PutChunkVectors(string collection, string fingerprint, IEnumerable<(ChunkText Chunk, float[] Vector)> vectors)
    {
        ArgumentNullException.ThrowIfNull(vectors);
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            using var c = Cmd("""
                INSERT OR REPLACE INTO chunk_vectors(collection, doc_id, ord, fingerprint, vec)
                SELECT $c, $d, $o, $f, $v WHERE EXISTS (SELECT 1 FROM documents WHERE collection=$c AND doc_id=$d AND content_hash=$h)
                """);
            c.Transaction = tx;
            c.Parameters.AddWithValue("$c", collection); c.Parameters.AddWithValue("$f", fingerprint);
            var pd = c.Parameters.Add("$d", SqliteType.Text); var po = c.Parameters.Add("$o", SqliteType.Integer);
            var ph = c.Parameters.Add("$h", SqliteType.Text); var pv = c.Parameters.Add("$v", SqliteType.Blob);
            int stored = 0;
            foreach (var (chunk, vector) in vectors)
            {
                pd.Value = chunk.DocumentId; po.Value = chunk.Ordinal; ph.Value = chunk.ContentHash;
                pv.Value = MemoryMarshal.AsBytes(vector.AsSpan()).ToArray();
                stored += c.ExecuteNonQuery();
            }
            tx.Commit();
            return stored;
        }
    }

    /// <summary>
    /// Dense search: the <paramref name="k"/> chunks whose vectors (of the model <paramref name="fingerprint"/>) are
    /// most cosine-similar to <paramref name="query"/>, best first (ties: document id, then chunk order);
    /// <see cref="ChunkHit.Score"/> is the cosine similarity (higher is better). Chunks without a vector of that model
    /// are not searched (see <see cref="ChunksWithoutVector"/>). An exhaustive scan: one dot product per chunk.
    /// </summary>
    public IReadOnlyList<ChunkHit> SearchDense(string collection, string fingerprint, ReadOnlySpan<float> query, int k = 10)
    {
        if (k <= 0) return [];
        float qn = TensorPrimitives.Norm(query);
        if (!float.IsFinite(qn) || qn == 0) throw new InvalidRequestException("the dense query vector is zero or not finite; nothing can be similar to it.");
        var best = new List<(double Score, string Doc, int Ord)>(k + 1);
        var vec = new float[query.Length];
        lock (gate)
        {
            using var c = Cmd("SELECT doc_id, ord, vec FROM chunk_vectors WHERE collection=$c AND fingerprint=$f ORDER BY doc_id, ord", ("$c", collection), ("$f", fingerprint));
            using var r = c.ExecuteReader();
            while (r.Read())
            {
                var blob = (byte[])r.GetValue(2);
                if (blob.Length != query.Length * sizeof(float))
                    throw new InvalidRequestException($"the stored vectors of collection '{collection}' have {blob.Length / sizeof(float)} dimensions, the query {query.Length}.");
                MemoryMarshal.Cast<byte, float>(blob).CopyTo(vec);
                float vn = TensorPrimitives.Norm(vec);
                double score = vn > 0 ? TensorPrimitives.Dot(query, vec) / ((double)qn * vn) : 0;
                if (best.Count == k && score <= best[^1].Score) continue; // rows come in (doc, ord) order: an equal score later loses the tie
                int at = best.FindIndex(b => score > b.Score);
                best.Insert(at < 0 ? best.Count : at, (score, r.GetString(0), r.GetInt32(1)));
                if (best.Count > k) best.RemoveAt(k);
            }
            var hits = new List<ChunkHit>(best.Count);
            foreach (var (score, doc, ord) in best)
            {
                using var t = Cmd("SELECT char_start, char_end, text FROM chunks WHERE collection=$c AND doc_id=$d AND ord=$o", ("$c", collection), ("$d", doc), ("$o", ord));
                using var tr = t.ExecuteReader();
                if (tr.Read()) hits.Add(new ChunkHit(doc, ord, tr.GetInt32(0), tr.GetInt32(1), tr.GetString(2), score));
            }
            return hits;
        }
    }

    // ---- jobs ----

    /// <summary>Records a job over <paramref name="documentIds"/> (each starts queued with 0 of <paramref name="stepsPerDocument"/> steps).</summary>
    public long CreateJob(string collection, string kind, string settingsJson, IEnumerable<string> documentIds, long stepsPerDocument)
    {
        Get(collection);
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            long id;
            using (var c = Cmd("INSERT INTO jobs(collection, kind, state, settings, created, updated) VALUES($c, $k, 'Queued', $s, $t, $t) RETURNING id",
                ("$c", collection), ("$k", kind), ("$s", settingsJson), ("$t", Now()))) { c.Transaction = tx; id = (long)c.ExecuteScalar()!; }
            foreach (var d in documentIds)
                using (var c = Cmd("INSERT INTO job_documents(job_id, doc_id, state, steps_done, steps_total) VALUES($j, $d, 'Queued', 0, $n)",
                    ("$j", id), ("$d", d), ("$n", stepsPerDocument))) { c.Transaction = tx; c.ExecuteNonQuery(); }
            tx.Commit();
            return id;
        }
    }

    /// <summary>A document's progress (the job becomes Running); a trainer calls this as it goes.</summary>
    public void UpdateJobDocument(long jobId, string documentId, JobState state, long stepsDone, double? loss = null, long? cartridgeVersion = null)
    {
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            using (var c = Cmd("UPDATE job_documents SET state=$s, steps_done=$n, loss=coalesce($l, loss), cartridge_version=coalesce($v, cartridge_version) WHERE job_id=$j AND doc_id=$d",
                ("$s", state.ToString()), ("$n", stepsDone), ("$l", loss), ("$v", cartridgeVersion), ("$j", jobId), ("$d", documentId)))
            {
                c.Transaction = tx;
                if (c.ExecuteNonQuery() != 1) throw new InvalidRequestException($"job {jobId} has no document '{documentId}'.");
            }
            using (var c = Cmd("UPDATE jobs SET state=CASE WHEN state='Queued' THEN 'Running' ELSE state END, updated=$t WHERE id=$j", ("$t", Now()), ("$j", jobId))) { c.Transaction = tx; c.ExecuteNonQuery(); }
            tx.Commit();
        }
    }

    /// <summary>Ends a job: Done, Failed (with the error) or Cancelled.</summary>
    public void FinishJob(long jobId, JobState state, string? error = null)
    {
        lock (gate)
        {
            using var c = Cmd("UPDATE jobs SET state=$s, error=$e, updated=$t WHERE id=$j", ("$s", state.ToString()), ("$e", error), ("$t", Now()), ("$j", jobId));
            if (c.ExecuteNonQuery() != 1) throw new InvalidRequestException($"no job {jobId}.");
        }
    }

    /// <summary>A job by id, or null.</summary>
    public JobRow? FindJob(long jobId)
    {
        lock (gate)
        {
            using var c = Cmd("SELECT id, collection, kind, state, settings, created, updated, error FROM jobs WHERE id=$j", ("$j", jobId));
            using var r = c.ExecuteReader();
            return r.Read() ? ReadJob(r) : null;
        }
    }

    public IReadOnlyList<JobRow> Jobs(string collection)
    {
        lock (gate)
        {
            using var c = Cmd("SELECT id, collection, kind, state, settings, created, updated, error FROM jobs WHERE collection=$c ORDER BY id", ("$c", collection));
            using var r = c.ExecuteReader();
            var list = new List<JobRow>();
            while (r.Read())
                list.Add(ReadJob(r));
            return list;
        }
    }

    static JobRow ReadJob(SqliteDataReader r) => new(r.GetInt64(0), r.GetString(1), r.GetString(2), Enum.Parse<JobState>(r.GetString(3)), r.GetString(4),
        ParseTime(r.GetString(5)), ParseTime(r.GetString(6)), r.IsDBNull(7) ? null : r.GetString(7));

    public IReadOnlyList<JobDocumentRow> JobDocuments(long jobId)
    {
        lock (gate)
        {
            using var c = Cmd("SELECT job_id, doc_id, state, steps_done, steps_total, loss, cartridge_version FROM job_documents WHERE job_id=$j ORDER BY doc_id", ("$j", jobId));
            using var r = c.ExecuteReader();
            var list = new List<JobDocumentRow>();
            while (r.Read())
                list.Add(new JobDocumentRow(r.GetInt64(0), r.GetString(1), Enum.Parse<JobState>(r.GetString(2)), r.GetInt64(3), r.GetInt64(4),
                    r.IsDBNull(5) ? null : r.GetDouble(5), r.IsDBNull(6) ? null : r.GetInt64(6)));
            return list;
        }
    }

    // ---- helpers ----

    /// <summary>Cartridge id of a document: "collection/document", with whitespace, control characters and '%' as %XX.</summary>
    public static string CartridgeId(string collection, string documentId)
    {
        var sb = new StringBuilder(collection).Append('/');
        foreach (char ch in documentId)
            if (char.IsWhiteSpace(ch) || char.IsControl(ch) || ch == '%') sb.Append('%').Append(((int)ch).ToString("X2", CultureInfo.InvariantCulture));
            else sb.Append(ch);
        return sb.ToString();
    }

    /// <summary>Lowercase hex SHA-256 of the UTF-8 text.</summary>
    public static string ContentHash(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));

    static void ValidateName(string name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > 64 || !name.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.') || name[0] == '.')
            throw new InvalidRequestException($"invalid collection name '{name}': use 1–64 letters, digits, '-', '_' or '.' (not starting with '.').");
    }

    SqliteCommand Cmd(string sql, params (string, object?)[] args) => db.Cmd(sql, args);
    static string Now() => Sqlite.Now();
    static DateTime ParseTime(string s) => Sqlite.ParseTime(s);

    public void Dispose()
    {
        lock (gate) db.Dispose();
    }
}
