using System.Diagnostics;
using Cas.Engine;
using Cas.Engine.Cartridges;

namespace Cas.Store;

/// <summary>Settings of the local store. Defaults suit cartridges of 4–100 MB.</summary>
public sealed record FasterStoreOptions
{
    /// <summary>Payload bytes per chunk. With the FASTER record header a chunk record is just under 1 MiB, so 32 fill a page.</summary>
    public int ChunkBytes { get; init; } = (1 << 20) - 64;
    /// <summary>log2 of FASTER's page size (25 = 32 MiB): pages must be much larger than a chunk record.</summary>
    public int PageBits { get; init; } = 25;
    /// <summary>Memory of FASTER's in-memory log (the tail and recently written pages).</summary>
    public long MemoryBytes { get; init; } = 128L << 20;
    /// <summary>Optional ceiling on the log's size on disk; a write that would pass it fails with <see cref="StoreFullException"/>.</summary>
    public long? CapacityBytes { get; init; }
    /// <summary>
    /// Free disk space a write must leave untouched (SQLite, checkpoints, other programs). Writes are refused up front
    /// rather than meeting ENOSPC inside FASTER: on a full 3 MB tmpfs, FASTER 2.6.5's page flush failed and the writer
    /// hung waiting for it (measured), so the store never lets the disk fill.
    /// </summary>
    public long FreeSpaceReserveBytes { get; init; } = 64L << 20;
}

/// <summary>
/// <see cref="ICartridgeStore"/> on local disk: chunks in a FASTER log, the manifest in SQLite (see README.md for the
/// layout, the commit protocol and recovery). One process owns a store folder at a time (a lock file says so).
/// </summary>
public sealed class FasterCartridgeStore : ICartridgeStore
{
    readonly string folder;
    readonly FasterStoreOptions options;
    readonly FileStream lockFile;
    readonly Manifest manifest;
    readonly ChunkLog log;
    readonly ReaderWriterLockSlim maintenance = new(LockRecursionPolicy.SupportsRecursion); // compaction excludes everything else
    readonly object readGate = new();
    readonly Dictionary<long, int> readers = new(); // blob -> readers in progress (their chunks are not collected)
    bool disposed;

    /// <summary>Opens (creating if needed) the store under <paramref name="dataDir"/>/store, recovering from any crash.</summary>
    public FasterCartridgeStore(string dataDir, FasterStoreOptions? options = null)
    {
        this.options = options ?? new FasterStoreOptions();
        if (this.options.ChunkBytes < 4096 || ChunkLog.HeaderBytes + this.options.ChunkBytes + 256 > 1L << this.options.PageBits)
            throw new InvalidRequestException($"chunk size {this.options.ChunkBytes} must be at least 4096 and well below the page size ({1L << this.options.PageBits} bytes).");
        folder = Path.Combine(Path.GetFullPath(dataDir), "store");
        Directory.CreateDirectory(folder);
        try { lockFile = new FileStream(Path.Combine(folder, "LOCK"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
        catch (IOException)
        {
            throw new StoreLockedException($"the store in {folder} is open in another process (a cas command or the service); wait for it to finish or stop it.");
        }
        try
        {
            manifest = new Manifest(Path.Combine(folder, "manifest.db"));
            log = new ChunkLog(Path.Combine(folder, "faster"), this.options.PageBits, this.options.MemoryBytes);
            // Recovery: FASTER is back at its last checkpoint; every write that had not committed is garbage now.
            RecoveredPending = manifest.AbandonAllPending();
            CollectGarbage();
        }
        catch
        {
            log?.Dispose(); manifest?.Dispose(); lockFile.Dispose();
            throw;
        }
    }

    /// <summary>Writes found uncommitted when the store was opened (a crash interrupted them); their chunks were collected.</summary>
    public int RecoveredPending { get; }

    /// <summary>Where puts spent their time so far (for `cas bench store`).</summary>
    public PutTimings Timings { get; } = new();

    /// <summary>The store's folder (DATA_DIR/store).</summary>
    public string Folder => folder;

    /// <summary>Bytes of the chunk log between its begin and tail.</summary>
    public long LogBytes => log.LogBytes;

    public StoredCartridgeInfo Put(string id, Cartridge cartridge, IReadOnlyDictionary<string, string>? labels = null,
        StoredDType dtype = StoredDType.BF16, CancellationToken cancellation = default)
    {
        ValidateId(id);
        ArgumentNullException.ThrowIfNull(cartridge);
        long t0 = Stopwatch.GetTimestamp();
        var bytes = CartridgeCodec.Encode(cartridge, dtype);
        Timings.Add(0, t0);
        return PutEncoded(id, bytes, cartridge, labels ?? new Dictionary<string, string>(), dtype, cancellation);
    }

    StoredCartridgeInfo PutEncoded(string id, byte[] bytes, Cartridge c, IReadOnlyDictionary<string, string> labels, StoredDType dtype, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        int cb = options.ChunkBytes;
        int chunks = (int)((bytes.LongLength + cb - 1) / cb);
        maintenance.EnterReadLock();
        try
        {
            EnsureSpace((long)chunks * (cb + 128));
            long t1 = Stopwatch.GetTimestamp();
            long blob = manifest.BeginPending(id, chunks);
            try
            {
                var scratch = new byte[ChunkLog.HeaderBytes + cb];
                for (int i = 0; i < chunks; i++)
                {
                    ct.ThrowIfCancellationRequested();
                    int off = i * cb, len = (int)Math.Min(cb, bytes.LongLength - off);
                    log.Put(blob, i, bytes.AsSpan(off, len), scratch);
                }
                Timings.Add(1, t1);
                long t2 = Stopwatch.GetTimestamp();
                log.Checkpoint(); // chunks durable before the manifest row commits
                Timings.Add(2, t2);
            }
            catch (Exception e)
            {
                manifest.AbandonPending(blob);
                if (e is IOException io && IsDiskFull(io))
                    throw new StoreFullException($"the disk under {folder} is full; cartridge '{id}' was not stored (nothing of it is visible). Free space, or run `cas store compact`.", io);
                throw;
            }
            var p = c.Prefix;
            long t3 = Stopwatch.GetTimestamp();
            var info = manifest.Commit(blob, id, c.ModelFingerprint, p.Length, p.Layers, p.KvHeads, p.HeadDim, dtype, bytes.LongLength, chunks, cb, labels);
            CollectGarbage();
            Timings.Add(3, t3);
            return info;
        }
        finally { maintenance.ExitReadLock(); }
    }

    void EnsureSpace(long need)
    {
        if (options.CapacityBytes is long cap && log.LogBytes + need > cap)
            throw new StoreFullException($"the store in {folder} is full: it holds {log.LogBytes:N0} bytes of its capacity {cap:N0} and this cartridge needs {need:N0}. Delete cartridges and run `cas store compact`, or raise the capacity.");
        long free = new DriveInfo(folder).AvailableFreeSpace;
        if (free - need < options.FreeSpaceReserveBytes)
            throw new StoreFullException($"not enough disk space under {folder}: {free:N0} bytes free, the cartridge needs {need:N0} plus a reserve of {options.FreeSpaceReserveBytes:N0}. Free space or run `cas store compact`.");
    }

    static bool IsDiskFull(IOException e) => (e.HResult & 0xFFFF) is 28 or 112 || e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);

    public StoredCartridgeInfo? Find(string id)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        return manifest.Find(id)?.Info;
    }

    public IReadOnlyList<StoredCartridgeInfo> List(string? idPrefix = null)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        return manifest.List(idPrefix).Select(r => r.Info).ToList();
    }

    public StoredCartridge Get(string id, CancellationToken cancellation = default)
    {
        var file = ReadFile(id, cancellation);
        var (prefix, meta) = CartridgeCodec.Decode(file.Bytes, $"stored cartridge '{id}' v{file.Info.Version}");
        return new StoredCartridge(file.Info, prefix, meta);
    }

    public StoredFile ReadFile(string id, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        maintenance.EnterReadLock();
        Manifest.Row? found;
        lock (readGate)
        {
            found = manifest.Find(id);
            if (found != null) readers[found.Blob] = readers.GetValueOrDefault(found.Blob) + 1;
        }
        if (found == null) { maintenance.ExitReadLock(); throw NotFound(id); }
        var row = found;
        try
        {
            if (row.Info.Bad != null)
                throw new CartridgeCorruptException(id, row.Info.Version, $"cartridge '{id}' v{row.Info.Version} is marked bad ({row.Info.Bad}); train or import it again.");
            var bytes = GC.AllocateUninitializedArray<byte>(checked((int)row.Info.Bytes));
            for (int i = 0; i < row.Info.Chunks; i++)
            {
                ct.ThrowIfCancellationRequested();
                int off = i * row.ChunkBytes, len = (int)Math.Min(row.ChunkBytes, row.Info.Bytes - off);
                if (log.Get(row.Blob, i, bytes, off, len) is string problem)
                {
                    string reason = $"chunk {i} of {row.Info.Chunks}: {problem}";
                    manifest.MarkBad(row.Blob, reason);
                    throw new CartridgeCorruptException(id, row.Info.Version, $"cartridge '{id}' v{row.Info.Version} is damaged ({reason}); it is marked bad and will not be served. Train or import it again; other cartridges are unaffected.");
                }
            }
            return new StoredFile(row.Info, bytes);
        }
        finally
        {
            lock (readGate) { if (--readers[row.Blob] == 0) readers.Remove(row.Blob); }
            maintenance.ExitReadLock();
        }
    }

    static CartridgeNotFoundException NotFound(string id) => new($"no cartridge '{id}' in the store; `cas store ls` lists what is there.");

    public bool Delete(string id)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        maintenance.EnterReadLock();
        try
        {
            bool removed = manifest.Delete(id);
            if (removed) CollectGarbage();
            return removed;
        }
        finally { maintenance.ExitReadLock(); }
    }

    public VerifyReport Verify(CancellationToken cancellation = default)
    {
        var bad = new List<(string, long, string)>();
        var rows = List();
        foreach (var info in rows)
        {
            try { Get(info.Id, cancellation); }
            catch (CartridgeCorruptException e) { bad.Add((info.Id, info.Version, e.Message)); }
            catch (CartridgeFormatException e) { bad.Add((info.Id, info.Version, e.Message)); }
            catch (CartridgeNotFoundException) { } // deleted meanwhile
        }
        return new VerifyReport(rows.Count, bad);
    }

    /// <summary>
    /// Blobs present in the log that the manifest does not know (should always be empty: a write reserves its blob
    /// before writing a chunk). A full scan of the log.
    /// </summary>
    public IReadOnlyCollection<long> OrphanBlobs()
    {
        maintenance.EnterWriteLock();
        try
        {
            var known = manifest.KnownBlobs();
            return log.LiveBlobs().Keys.Where(b => !known.Contains(b)).ToList();
        }
        finally { maintenance.ExitWriteLock(); }
    }

    /// <summary>Live chunk records per blob (a full scan; for tests and `store verify`).</summary>
    public IReadOnlyDictionary<long, int> LiveChunkRecords()
    {
        maintenance.EnterWriteLock();
        try { return log.LiveBlobs(); }
        finally { maintenance.ExitWriteLock(); }
    }

    public CompactReport Compact()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        maintenance.EnterWriteLock();
        try
        {
            long before = log.LogBytes;
            int collected = CollectGarbage();
            log.Compact();
            return new CompactReport(before, log.LogBytes, collected);
        }
        finally { maintenance.ExitWriteLock(); }
    }

    /// <summary>
    /// Deletes the chunks of garbage blobs nobody is reading, makes the deletions durable, then forgets them.
    /// A crash in between only repeats the deletions on the next open.
    /// </summary>
    int CollectGarbage()
    {
        List<(long Blob, int Chunks)> victims;
        lock (readGate) victims = manifest.Garbage().Where(g => !readers.ContainsKey(g.Blob)).ToList();
        if (victims.Count == 0) return 0;
        foreach (var (blob, chunks) in victims)
            for (int i = 0; i < chunks; i++) log.Delete(blob, i);
        log.Checkpoint();
        manifest.ForgetGarbage(victims.Select(v => v.Blob));
        return victims.Count;
    }

    /// <summary>Ids are printable, without whitespace, at most 256 characters (e.g. "collection/document").</summary>
    public static void ValidateId(string id)
    {
        if (string.IsNullOrEmpty(id) || id.Length > 256 || id.Any(ch => char.IsWhiteSpace(ch) || char.IsControl(ch)))
            throw new InvalidRequestException($"invalid cartridge id '{id}': use 1–256 printable characters without spaces, e.g. mycollection/doc-17.");
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        maintenance.EnterWriteLock();
        try { log.Dispose(); manifest.Dispose(); lockFile.Dispose(); }
        finally { maintenance.ExitWriteLock(); }
    }
}

/// <summary>Seconds spent in each phase of <see cref="FasterCartridgeStore.Put"/>, summed over all puts.</summary>
public sealed class PutTimings
{
    readonly long[] ticks = new long[4];
    internal void Add(int phase, long start) => Interlocked.Add(ref ticks[phase], Stopwatch.GetTimestamp() - start);
    double S(int i) => (double)Interlocked.Read(ref ticks[i]) / Stopwatch.Frequency;
    /// <summary>BF16/F32 encoding of the cartridge file.</summary>
    public double EncodeSeconds => S(0);
    /// <summary>Reserving the blob and upserting the chunks into FASTER.</summary>
    public double ChunkSeconds => S(1);
    /// <summary>The checkpoint that makes the chunks durable.</summary>
    public double CheckpointSeconds => S(2);
    /// <summary>The manifest commit and garbage collection.</summary>
    public double CommitSeconds => S(3);
}
