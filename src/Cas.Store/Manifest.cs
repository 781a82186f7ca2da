using System.Globalization;
using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Cas.Store;

/// <summary>
/// The store's SQLite manifest: the one commit point. A cartridge version exists exactly when its row in
/// <c>cartridges</c> is committed. <c>pending</c> records a write in progress (its blob id is reserved before any chunk
/// is written); <c>garbage</c> lists blobs whose chunks are to be deleted (superseded, deleted, or left by a crash).
/// WAL journal, synchronous=FULL: a committed transaction survives power loss.
/// </summary>
sealed class Manifest : IDisposable
{
    readonly SqliteConnection db;
    readonly object gate = new(); // one connection, used by one thread at a time

    public Manifest(string path)
    {
        db = Sqlite.Open(path);
        db.Exec("""
            CREATE TABLE IF NOT EXISTS cartridges(
              id TEXT PRIMARY KEY, version INTEGER NOT NULL, blob INTEGER NOT NULL UNIQUE,
              fingerprint TEXT NOT NULL, p INTEGER NOT NULL, layers INTEGER NOT NULL, kv_heads INTEGER NOT NULL, head_dim INTEGER NOT NULL,
              dtype TEXT NOT NULL, bytes INTEGER NOT NULL, chunks INTEGER NOT NULL, chunk_bytes INTEGER NOT NULL,
              committed TEXT NOT NULL, labels TEXT NOT NULL, bad TEXT);
            CREATE TABLE IF NOT EXISTS versions(id TEXT PRIMARY KEY, last INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS pending(blob INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, chunks INTEGER NOT NULL, started TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS garbage(blob INTEGER PRIMARY KEY, chunks INTEGER NOT NULL);
            """);
    }

    public sealed record Row(StoredCartridgeInfo Info, long Blob, int ChunkBytes);

    SqliteCommand Cmd(string sql, params (string, object?)[] args) => db.Cmd(sql, args);

    /// <summary>Reserves a blob id for a write of <paramref name="chunks"/> chunks (committed before any chunk is written).</summary>
    public long BeginPending(string id, int chunks)
    {
        lock (gate)
        {
            using var c = Cmd("INSERT INTO pending(id, chunks, started) VALUES($id, $n, $t) RETURNING blob",
                ("$id", id), ("$n", chunks), ("$t", Now()));
            return (long)c.ExecuteScalar()!;
        }
    }

    /// <summary>A failed write: its blob goes to garbage (whatever chunks it wrote are deleted by the collector).</summary>
    public void AbandonPending(long blob)
    {
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            using (var c = Cmd("INSERT OR IGNORE INTO garbage(blob, chunks) SELECT blob, chunks FROM pending WHERE blob=$b", ("$b", blob))) { c.Transaction = tx; c.ExecuteNonQuery(); }
            using (var c = Cmd("DELETE FROM pending WHERE blob=$b", ("$b", blob))) { c.Transaction = tx; c.ExecuteNonQuery(); }
            tx.Commit();
        }
    }

    /// <summary>After a crash: every write still pending never committed; its blob becomes garbage. Returns how many.</summary>
    public int AbandonAllPending()
    {
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            using (var c = Cmd("INSERT OR IGNORE INTO garbage(blob, chunks) SELECT blob, chunks FROM pending")) { c.Transaction = tx; c.ExecuteNonQuery(); }
            int n;
            using (var c = Cmd("DELETE FROM pending")) { c.Transaction = tx; n = c.ExecuteNonQuery(); }
            tx.Commit();
            return n;
        }
    }

    /// <summary>
    /// THE commit point: in one transaction the new version's row replaces the old one (whose blob becomes garbage),
    /// the version counter advances and the pending reservation is cleared.
    /// </summary>
    public StoredCartridgeInfo Commit(long blob, string id, string fingerprint, int p, int layers, int kvHeads, int headDim,
        StoredDType dtype, long bytes, int chunks, int chunkBytes, IReadOnlyDictionary<string, string> labels)
    {
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            SqliteCommand T(SqliteCommand c) { c.Transaction = tx; return c; }
            using (var c = T(Cmd("INSERT OR IGNORE INTO garbage(blob, chunks) SELECT blob, chunks FROM cartridges WHERE id=$id", ("$id", id)))) c.ExecuteNonQuery();
            long version;
            using (var c = T(Cmd("INSERT INTO versions(id, last) VALUES($id, 1) ON CONFLICT(id) DO UPDATE SET last=last+1 RETURNING last", ("$id", id))))
                version = (long)c.ExecuteScalar()!;
            string now = Now();
            using (var c = T(Cmd("""
                INSERT OR REPLACE INTO cartridges(id, version, blob, fingerprint, p, layers, kv_heads, head_dim, dtype, bytes, chunks, chunk_bytes, committed, labels, bad)
                VALUES($id, $v, $b, $fp, $p, $l, $h, $d, $dt, $bytes, $n, $cb, $t, $labels, NULL)
                """, ("$id", id), ("$v", version), ("$b", blob), ("$fp", fingerprint), ("$p", p), ("$l", layers), ("$h", kvHeads), ("$d", headDim),
                ("$dt", dtype.ToString()), ("$bytes", bytes), ("$n", chunks), ("$cb", chunkBytes), ("$t", now), ("$labels", JsonSerializer.Serialize(labels)))))
                c.ExecuteNonQuery();
            using (var c = T(Cmd("DELETE FROM pending WHERE blob=$b", ("$b", blob)))) c.ExecuteNonQuery();
            tx.Commit();
            return new StoredCartridgeInfo(id, version, fingerprint, p, layers, kvHeads, headDim, dtype, bytes, chunks,
                Sqlite.ParseTime(now), labels, null);
        }
    }

    public Row? Find(string id)
    {
        lock (gate)
        {
            using var c = Cmd($"SELECT {Columns} FROM cartridges WHERE id=$id", ("$id", id));
            using var r = c.ExecuteReader();
            return r.Read() ? ReadRow(r) : null;
        }
    }

    public List<Row> List(string? prefix)
    {
        lock (gate)
        {
            using var c = prefix == null
                ? Cmd($"SELECT {Columns} FROM cartridges ORDER BY id")
                : Cmd($"SELECT {Columns} FROM cartridges WHERE substr(id, 1, length($p)) = $p ORDER BY id", ("$p", prefix));
            using var r = c.ExecuteReader();
            var list = new List<Row>();
            while (r.Read()) list.Add(ReadRow(r));
            return list;
        }
    }

    /// <summary>Marks one version bad (only if it is still the current one).</summary>
    public void MarkBad(long blob, string reason)
    {
        lock (gate)
        {
            using var c = Cmd("UPDATE cartridges SET bad=$r WHERE blob=$b", ("$r", reason), ("$b", blob));
            c.ExecuteNonQuery();
        }
    }

    /// <summary>Removes the cartridge; its blob becomes garbage. The version counter is kept so versions never repeat.</summary>
    public bool Delete(string id)
    {
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            using (var c = Cmd("INSERT OR IGNORE INTO garbage(blob, chunks) SELECT blob, chunks FROM cartridges WHERE id=$id", ("$id", id))) { c.Transaction = tx; c.ExecuteNonQuery(); }
            int n;
            using (var c = Cmd("DELETE FROM cartridges WHERE id=$id", ("$id", id))) { c.Transaction = tx; n = c.ExecuteNonQuery(); }
            tx.Commit();
            return n > 0;
        }
    }

    public List<(long Blob, int Chunks)> Garbage()
    {
        lock (gate)
        {
            using var c = Cmd("SELECT blob, chunks FROM garbage ORDER BY blob");
            using var r = c.ExecuteReader();
            var list = new List<(long, int)>();
            while (r.Read()) list.Add((r.GetInt64(0), r.GetInt32(1)));
            return list;
        }
    }

    public void ForgetGarbage(IEnumerable<long> blobs)
    {
        lock (gate)
        {
            using var tx = db.BeginTransaction();
            foreach (var b in blobs)
                using (var c = Cmd("DELETE FROM garbage WHERE blob=$b", ("$b", b))) { c.Transaction = tx; c.ExecuteNonQuery(); }
            tx.Commit();
        }
    }

    /// <summary>Blob ids the manifest knows (committed, pending or garbage): anything else in the log is an orphan.</summary>
    public HashSet<long> KnownBlobs()
    {
        lock (gate)
        {
            using var c = Cmd("SELECT blob FROM cartridges UNION SELECT blob FROM pending UNION SELECT blob FROM garbage");
            using var r = c.ExecuteReader();
            var set = new HashSet<long>();
            while (r.Read()) set.Add(r.GetInt64(0));
            return set;
        }
    }

    const string Columns = "id, version, blob, fingerprint, p, layers, kv_heads, head_dim, dtype, bytes, chunks, chunk_bytes, committed, labels, bad";

    static Row ReadRow(SqliteDataReader r)
    {
        var labels = JsonSerializer.Deserialize<Dictionary<string, string>>(r.GetString(13)) ?? new();
        var info = new StoredCartridgeInfo(r.GetString(0), r.GetInt64(1), r.GetString(3), r.GetInt32(4), r.GetInt32(5), r.GetInt32(6), r.GetInt32(7),
            Enum.Parse<StoredDType>(r.GetString(8)), r.GetInt64(9), r.GetInt32(10),
            Sqlite.ParseTime(r.GetString(12)), labels, r.IsDBNull(14) ? null : r.GetString(14));
        return new Row(info, r.GetInt64(2), r.GetInt32(11));
    }

    static string Now() => Sqlite.Now();

    public void Dispose()
    {
        lock (gate) db.Dispose();
    }
}
