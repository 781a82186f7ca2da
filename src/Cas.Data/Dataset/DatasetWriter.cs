using Cas.Engine;

namespace Cas.Data;

/// <summary>Durability and creation settings for <see cref="DatasetWriter"/>.</summary>
public sealed record DatasetWriterOptions
{
    /// <summary>
    /// Flush to disk (fsync) after this many appended records; 0 flushes only on <see cref="DatasetWriter.Flush"/>
    /// and at close. Records always reach the operating system when <see cref="DatasetWriter.Append"/> returns,
    /// so a killed process loses nothing; the fsync bounds what a power loss can take (at most this many records).
    /// </summary>
    public int FlushEveryRecords { get; init; } = 64;

    /// <summary>Whether flushing calls fsync (turn off only for scratch files and tests).</summary>
    public bool Fsync { get; init; } = true;

    /// <summary>
    /// Header metadata for a new file (e.g. "model", "tokenizer", "top_k"). When resuming, if given,
    /// it must equal the file's metadata, so a run cannot continue a dataset made with another model.
    /// </summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }

    /// <summary>When not resuming and the file exists: replace it (true) or refuse (false, default).</summary>
    public bool Overwrite { get; init; }
}

/// <summary>
/// Appends conversations to a self-study dataset file (format: DATASET_FORMAT.md).
/// <para>New files are created atomically (header written to a temporary file, synced, renamed), so a
/// file at <see cref="Path"/> always has a complete header. Each <see cref="Append"/> writes one whole
/// frame with a single positional write. With <c>resume: true</c> an existing file is scanned, a torn tail
/// left by a killed writer is truncated, and <see cref="Ids"/> holds every id already present so the
/// caller can skip them; appending an id that is already present throws.</para>
/// <para>Only one writer per file: a sidecar lock file (<c>PATH.lock</c>, an exclusive OS lock released
/// when the process dies) refuses a second writer. Readers may read while a writer appends.</para>
/// Not thread-safe: call from one thread.
/// </summary>
public sealed class DatasetWriter : IDisposable
{
    readonly FileStream file;
    readonly FileStream lockFile;
    readonly string lockPath;
    readonly DatasetWriterOptions options;
    readonly HashSet<ulong> ids;
    readonly ByteBuffer frame = new();
    long end;
    int sinceFlush;
    bool faulted, disposed;

    public string Path { get; }
    /// <summary>Header metadata of the file.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>Ids of all records in the file, those found at open and those appended since.</summary>
    public IReadOnlySet<ulong> Ids => ids;
    /// <summary>Largest id in the file, or null when it is empty.</summary>
    public ulong? MaxId { get; private set; }
    /// <summary>Records in the file now.</summary>
    public long Count => ids.Count;
    /// <summary>Complete records that were already in the file when it was opened.</summary>
    public long ExistingCount { get; }
    /// <summary>The torn tail cut off when resuming (null when the file ended cleanly or was new).</summary>
    public TornTail? RepairedTornTail { get; }
    /// <summary>File length in bytes (all appended records included).</summary>
    public long Length => end;

    DatasetWriter(string path, FileStream file, FileStream lockFile, string lockPath, DatasetWriterOptions options,
        IReadOnlyDictionary<string, string> metadata, HashSet<ulong> ids, ulong? maxId, long end, TornTail? repaired)
    {
        Path = path; this.file = file; this.lockFile = lockFile; this.lockPath = lockPath; this.options = options;
        Metadata = metadata; this.ids = ids; MaxId = maxId; this.end = end; RepairedTornTail = repaired;
        ExistingCount = ids.Count;
    }

    public bool Contains(ulong id) => ids.Contains(id);

    /// <summary>
    /// Opens <paramref name="path"/> for appending. <paramref name="resume"/> false: create a new
    /// dataset (an existing non-empty file is an error unless <see cref="DatasetWriterOptions.Overwrite"/>).
    /// <paramref name="resume"/> true: continue an existing dataset after its last complete record
    /// (truncating a torn tail), or create it when absent or empty. Corruption in the middle of the
    /// file is never repaired automatically: it throws <see cref="DatasetCorruptException"/>.
    /// </summary>
    public static DatasetWriter Open(string path, bool resume, DatasetWriterOptions? options = null)
    {
        options ??= new DatasetWriterOptions();
        if (options.FlushEveryRecords < 0)
            throw new InvalidRequestException($"FlushEveryRecords is {options.FlushEveryRecords}; use 0 (flush only at close) or a positive count.");
        path = System.IO.Path.GetFullPath(path);
        var dir = System.IO.Path.GetDirectoryName(path)!;
        if (!Directory.Exists(dir))
            throw new DatasetException($"cannot create dataset '{path}': folder '{dir}' does not exist.");

        string lockPath = path + ".lock";
        FileStream lockFile;
        try { lockFile = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1); }
        catch (IOException e)
        {
            throw new DatasetException($"dataset '{path}' is already open in another writer (lock file '{lockPath}' is held). " +
                "Stop that writer first; two writers would interleave records.", e);
        }
        catch (UnauthorizedAccessException e) { throw new DatasetException($"cannot create lock file '{lockPath}': {e.Message}", e); }

        try { return OpenLocked(path, resume, options, lockFile, lockPath); }
        catch
        {
            lockFile.Dispose();
            TryDelete(lockPath);
            throw;
        }
    }

    static DatasetWriter OpenLocked(string path, bool resume, DatasetWriterOptions options, FileStream lockFile, string lockPath)
    {
        var existing = new FileInfo(path);
        bool hasData = existing.Exists && existing.Length > 0;
        if (hasData && !resume && !options.Overwrite)
            throw new DatasetException($"dataset '{path}' already exists ({existing.Length} bytes). Resume it to add to it, " +
                "choose overwrite to replace it, or pick another path.");

        if (!hasData || !resume)
        {
            var meta = new Dictionary<string, string>(options.Metadata ?? new Dictionary<string, string>(), StringComparer.Ordinal);
            CreateAtomically(path, meta, options.Fsync);
            var fs = OpenForAppend(path);
            return new DatasetWriter(path, fs, lockFile, lockPath, options, meta, [], null, fs.Length, null);
        }

        var f = OpenForAppend(path);
        try
        {
            var header = FrameScanner.ReadHeader(f.SafeFileHandle, path);
            if (options.Metadata is { } want) CheckSameMetadata(path, header.Metadata, want);
            var scanner = new FrameScanner(f.SafeFileHandle, path, header.DataOffset);
            var ids = new HashSet<ulong>();
            ulong? maxId = null;
            while (scanner.Next())
            {
                ulong id;
                try { id = RecordCodec.PeekId(scanner.Payload); }
                catch (PayloadFormatException e) { throw scanner.Undecodable(e.Message); }
                if (!ids.Add(id))
                    throw new DatasetCorruptException($"'{path}': id {id:x16} appears twice (second copy at byte {scanner.FrameOffset}); " +
                        "this file was not produced by a single DatasetWriter.", scanner.FrameOffset);
                if (maxId is null || id > maxId) maxId = id;
            }
            long endOffset = scanner.Position;
            if (scanner.Torn is { } torn)
            {
                f.SetLength(torn.Offset);
                f.Flush(flushToDisk: true);
                endOffset = torn.Offset;
            }
            return new DatasetWriter(path, f, lockFile, lockPath, options, header.Metadata, ids, maxId, endOffset, scanner.Torn);
        }
        catch
        {
            f.Dispose();
            throw;
        }
    }

    static FileStream OpenForAppend(string path) =>
        new(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read | FileShare.Delete, bufferSize: 0);

    static void CheckSameMetadata(string path, IReadOnlyDictionary<string, string> have, IReadOnlyDictionary<string, string> want)
    {
        foreach (var (k, v) in want)
            if (!have.TryGetValue(k, out var h) || h != v)
                throw new DatasetException($"cannot resume '{path}': its metadata has {k} = {(h is null ? "(absent)" : $"'{h}'")} " +
                    $"but this run has {k} = '{v}'. Resume with the same settings or write a new dataset.");
        foreach (var k in have.Keys)
            if (!want.ContainsKey(k))
                throw new DatasetException($"cannot resume '{path}': its metadata has {k} = '{have[k]}' which this run does not set. " +
                    "Resume with the same settings or write a new dataset.");
    }

    static void CreateAtomically(string path, Dictionary<string, string> meta, bool fsync)
    {
        var b = new ByteBuffer();
        b.Bytes(DatasetFormat.Magic);
        b.U32(DatasetFormat.CurrentVersion);
        b.U32(0);
        RecordCodec.EncodeMetadata(meta, b);
        int metaLen = b.Length - 16;
        if (metaLen > DatasetFormat.MaxMetadataLength)
            throw new InvalidRequestException($"dataset metadata is {metaLen} bytes; the limit is {DatasetFormat.MaxMetadataLength}.");
        b.PatchU32(12, (uint)metaLen);
        b.U32(Crc32.Compute(b.Span));

        string tmp = $"{path}.tmp-{Environment.ProcessId}";
        try
        {
            using (var t = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1))
            {
                t.Write(b.Span);
                t.Flush(flushToDisk: fsync);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(tmp);
            throw new DatasetException($"cannot create dataset '{path}': {e.Message}", e);
        }
    }

    static void TryDelete(string p)
    {
        try { File.Delete(p); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>
    /// Appends one conversation. Throws <see cref="InvalidRequestException"/> when it is malformed
    /// (nothing is written) and <see cref="DatasetException"/> when its id is already in the file.
    /// </summary>
    public void Append(Conversation conversation)
    {
        if (!TryAppend(conversation))
            throw new DatasetException($"conversation id {conversation.Id:x16} is already in '{Path}'; each id may appear once. " +
                "When resuming, skip ids in Ids (or use TryAppend).");
    }

    /// <summary>Appends unless the id is already in the file (then returns false and writes nothing).</summary>
    public bool TryAppend(Conversation conversation)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (faulted)
            throw new DatasetException($"writer for '{Path}' failed earlier and cannot continue; reopen it with resume.");
        RecordCodec.Validate(conversation);
        if (ids.Contains(conversation.Id)) return false;

        frame.Clear();
        frame.U32(DatasetFormat.RecordMarker);
        frame.U32(0);
        frame.U32(0);
        RecordCodec.Encode(conversation, frame);
        int payloadLen = frame.Length - DatasetFormat.FrameHeaderSize;
        if (payloadLen > DatasetFormat.MaxPayloadLength)
            throw new InvalidRequestException($"conversation {conversation.Id:x16} encodes to {payloadLen} bytes; the limit is {DatasetFormat.MaxPayloadLength}.");
        frame.PatchU32(4, (uint)payloadLen);
        frame.PatchU32(8, Crc32.Compute(frame.Span.Slice(4, 4)));
        frame.U32(Crc32.Compute(frame.Span.Slice(DatasetFormat.FrameHeaderSize, payloadLen)));

        try
        {
            RandomAccess.Write(file.SafeFileHandle, frame.Span, end);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            faulted = true;
            try { file.SetLength(end); } catch (IOException) { }
            throw new DatasetException($"writing to '{Path}' failed ({e.Message}); the file keeps its {ids.Count} complete records.", e);
        }
        end += frame.Length;
        ids.Add(conversation.Id);
        if (MaxId is null || conversation.Id > MaxId) MaxId = conversation.Id;
        if (options.FlushEveryRecords > 0 && ++sinceFlush >= options.FlushEveryRecords) Flush();
        return true;
    }

    /// <summary>Forces appended records to disk (fsync unless <see cref="DatasetWriterOptions.Fsync"/> is off).</summary>
    public void Flush()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (options.Fsync) file.Flush(flushToDisk: true);
        sinceFlush = 0;
    }

    /// <summary>Flushes (fsync), closes the file and releases the lock.</summary>
    public void Dispose()
    {
        if (disposed) return;
        try
        {
            if (!faulted && options.Fsync) file.Flush(flushToDisk: true);
        }
        finally
        {
            disposed = true;
            file.Dispose();
            TryDelete(lockPath);
            lockFile.Dispose();
        }
    }
}
