using Microsoft.Win32.SafeHandles;

namespace Cas.Data;

/// <summary>How a <see cref="DatasetReader"/> treats damage at the end of the file.</summary>
/// <param name="StopAtTornTail">
/// False (default): a torn tail throws <see cref="DatasetTornTailException"/> after the complete
/// records have been yielded. True: enumeration simply ends before it and
/// <see cref="DatasetReader.TornTail"/> reports it. Corruption in the middle always throws.
/// </param>
public sealed record DatasetReadOptions(bool StopAtTornTail = false);

/// <summary>Where one record lies in the file (from <see cref="DatasetReader.Scan"/>).</summary>
/// <param name="Offset">Byte offset of the record's frame; pass it to <see cref="DatasetReader.ReadAt"/>.</param>
/// <param name="Length">Length of the whole frame in bytes.</param>
public readonly record struct DatasetRecordInfo(ulong Id, long Offset, int Length);

/// <summary>
/// Streams the records of a self-study dataset file (format: DATASET_FORMAT.md). Only one record is
/// in memory at a time, so files of any size can be read. The file is opened for reading while
/// allowing a writer to keep appending; a record still being written shows up as a torn tail.
/// Not thread-safe: use one reader per thread.
/// </summary>
public sealed class DatasetReader : IDisposable
{
    readonly SafeFileHandle handle;
    readonly DatasetHeader header;
    readonly DatasetReadOptions options;

    public string Path { get; }
    /// <summary>Format version of the file.</summary>
    public uint Version => header.Version;
    /// <summary>Key/value metadata from the header (e.g. model and tokenizer names).</summary>
    public IReadOnlyDictionary<string, string> Metadata => header.Metadata;
    /// <summary>Byte offset of the first record.</summary>
    public long DataOffset => header.DataOffset;
    /// <summary>File length in bytes at the time of the call.</summary>
    public long FileLength => RandomAccess.GetLength(handle);
    /// <summary>
    /// The torn tail found by the last enumeration that reached the end of the file (null when it
    /// ended cleanly or has not reached the end yet).
    /// </summary>
    public TornTail? TornTail { get; private set; }

    DatasetReader(string path, SafeFileHandle handle, DatasetHeader header, DatasetReadOptions options)
    {
        Path = path; this.handle = handle; this.header = header; this.options = options;
    }

    /// <summary>
    /// Opens <paramref name="path"/> and checks its header. Throws <see cref="DatasetException"/> when the
    /// file is not a dataset, has a damaged header, or is a newer format version.
    /// </summary>
    public static DatasetReader Open(string path, DatasetReadOptions? options = null)
    {
        SafeFileHandle h;
        try { h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete); }
        catch (FileNotFoundException) { throw new DatasetException($"dataset file '{path}' does not exist."); }
        catch (DirectoryNotFoundException) { throw new DatasetException($"dataset file '{path}' does not exist (its folder is missing)."); }
        catch (UnauthorizedAccessException e) { throw new DatasetException($"cannot open dataset file '{path}': {e.Message}", e); }
        try { return new DatasetReader(path, h, FrameScanner.ReadHeader(h, path), options ?? new DatasetReadOptions()); }
        catch { h.Dispose(); throw; }
    }

    /// <summary>Opens, enumerates every record and closes: for one-pass consumers.</summary>
    public static IEnumerable<Conversation> Enumerate(string path, DatasetReadOptions? options = null)
    {
        using var r = Open(path, options);
        foreach (var c in r.ReadAll()) yield return c;
    }

    /// <summary>
    /// Every record from the start of the file, decoded one at a time. Each call starts over.
    /// Verifies each record's checksum; see <see cref="DatasetReadOptions"/> for torn tails.
    /// </summary>
    public IEnumerable<Conversation> ReadAll()
    {
        ObjectDisposedException.ThrowIf(handle.IsClosed, this);
        var scanner = new FrameScanner(handle, Path, header.DataOffset);
        TornTail = null;
        while (scanner.Next()) yield return Decode(scanner);
        Finish(scanner);
    }

    /// <summary>
    /// Id, offset and length of every record, checking checksums but not decoding payloads (cheaper
    /// than <see cref="ReadAll"/>). Keep the result to read records in any order with <see cref="ReadAt"/>.
    /// </summary>
    public IEnumerable<DatasetRecordInfo> Scan()
    {
        ObjectDisposedException.ThrowIf(handle.IsClosed, this);
        var scanner = new FrameScanner(handle, Path, header.DataOffset);
        TornTail = null;
        while (scanner.Next()) yield return Info(scanner);
        Finish(scanner);
    }

    /// <summary>The record whose frame starts at <paramref name="offset"/> (from <see cref="Scan"/>).</summary>
    public Conversation ReadAt(long offset)
    {
        ObjectDisposedException.ThrowIf(handle.IsClosed, this);
        var scanner = new FrameScanner(handle, Path, header.DataOffset);
        scanner.ReadAt(offset);
        return Decode(scanner);
    }

    static Conversation Decode(FrameScanner s)
    {
        try { return RecordCodec.Decode(s.Payload); }
        catch (PayloadFormatException e) { throw s.Undecodable(e.Message); }
    }

    static DatasetRecordInfo Info(FrameScanner s)
    {
        try { return new DatasetRecordInfo(RecordCodec.PeekId(s.Payload), s.FrameOffset, s.FrameLength); }
        catch (PayloadFormatException e) { throw s.Undecodable(e.Message); }
    }

    void Finish(FrameScanner scanner)
    {
        TornTail = scanner.Torn;
        if (scanner.Torn is { } t && !options.StopAtTornTail)
            throw new DatasetTornTailException(
                $"'{Path}' ends in a torn record: {t.Reason}, at byte {t.Offset} ({t.Length} bytes). The writer was probably " +
                "killed mid-write; the records before it are intact. Resume the writer (it truncates the tail) or read with StopAtTornTail.", t);
    }

    public void Dispose() => handle.Dispose();
}
