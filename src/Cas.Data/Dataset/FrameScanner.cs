using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;

namespace Cas.Data;

/// <summary>The parsed file header.</summary>
sealed record DatasetHeader(uint Version, Dictionary<string, string> Metadata, long DataOffset);

/// <summary>
/// Reads the header and walks record frames with positional reads, deciding for each frame whether
/// it is complete and intact, the clean end of the file, a torn tail, or corruption. The rules (also
/// in DATASET_FORMAT.md), for the frame starting at byte p of a file of length L:
/// <list type="bullet">
/// <item>p == L: clean end.</item>
/// <item>fewer than 12 bytes left, or the frame's declared end lies beyond L: torn tail.</item>
/// <item>bad marker or bad length CRC: torn tail if every byte from p to L is zero (a crash can
///   leave zero-filled blocks), otherwise corruption.</item>
/// <item>bad payload CRC: torn tail if every byte after the frame is zero (including when the frame
///   is the last one), otherwise corruption.</item>
/// <item>a payload that passes its CRC but does not decode: corruption.</item>
/// </list>
/// So a torn tail is only ever declared when nothing after it could be a record: truncating at p
/// never drops data. Only one frame is held in memory at a time.
/// </summary>
sealed class FrameScanner
{
    readonly SafeFileHandle handle;
    readonly string path;
    readonly long dataOffset;
    byte[] buffer = new byte[64 * 1024];
    readonly byte[] frameHeader = new byte[DatasetFormat.FrameHeaderSize];

    public FrameScanner(SafeFileHandle handle, string path, long dataOffset)
    {
        this.handle = handle; this.path = path; this.dataOffset = dataOffset;
        Position = dataOffset;
    }

    /// <summary>Offset of the next frame to read.</summary>
    public long Position { get; private set; }
    /// <summary>Set when <see cref="Next"/> returned false because of a torn tail.</summary>
    public TornTail? Torn { get; private set; }
    /// <summary>Offset and payload length of the frame last returned by <see cref="Next"/>.</summary>
    public long FrameOffset { get; private set; }
    public int PayloadLength { get; private set; }
    public ReadOnlySpan<byte> Payload => buffer.AsSpan(0, PayloadLength);
    public int FrameLength => DatasetFormat.FrameHeaderSize + PayloadLength + DatasetFormat.FrameTrailerSize;

    public static DatasetHeader ReadHeader(SafeFileHandle handle, string path)
    {
        long length = RandomAccess.GetLength(handle);
        Span<byte> fixedPart = stackalloc byte[16];
        int got = ReadFully(handle, fixedPart, 0);
        var magic = DatasetFormat.Magic;
        if (got < magic.Length || !fixedPart[..magic.Length].SequenceEqual(magic))
            throw new DatasetException(
                $"'{path}' is not a CasService self-study dataset: it does not start with the dataset signature " +
                $"(file is {length} bytes). Datasets are written by DatasetWriter / `cas selfstudy`; check the path.");
        if (got < 16)
            throw new DatasetException($"'{path}' has a truncated dataset header ({length} bytes); the file is damaged — regenerate it.");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(fixedPart[8..]);
        if (version > DatasetFormat.CurrentVersion)
            throw new DatasetException(
                $"'{path}' is a version {version} self-study dataset, but this build reads versions up to {DatasetFormat.CurrentVersion}. " +
                "Use a newer CasService to read it.");
        if (version == 0)
            throw new DatasetException($"'{path}' declares dataset format version 0, which does not exist; the header is damaged.");
        uint metaLen = BinaryPrimitives.ReadUInt32LittleEndian(fixedPart[12..]);
        if (metaLen > DatasetFormat.MaxMetadataLength)
            throw new DatasetException($"'{path}': header declares {metaLen} bytes of metadata (limit {DatasetFormat.MaxMetadataLength}); the header is damaged.");
        var rest = new byte[metaLen + 4];
        if (ReadFully(handle, rest, 16) < rest.Length)
            throw new DatasetException($"'{path}' has a truncated dataset header ({length} bytes, header needs {16 + rest.Length}); the file is damaged — regenerate it.");
        uint crc = Crc32.Append(Crc32.Compute(fixedPart), rest.AsSpan(0, (int)metaLen));
        if (crc != BinaryPrimitives.ReadUInt32LittleEndian(rest.AsSpan((int)metaLen)))
            throw new DatasetException($"'{path}': the dataset header fails its checksum; the file is damaged — regenerate it.");
        Dictionary<string, string> meta;
        try { meta = RecordCodec.DecodeMetadata(rest.AsSpan(0, (int)metaLen)); }
        catch (PayloadFormatException e) { throw new DatasetException($"'{path}': the dataset header metadata is malformed ({e.Message})."); }
        return new DatasetHeader(version, meta, 16 + metaLen + 4);
    }

    static int ReadFully(SafeFileHandle h, Span<byte> dst, long offset)
    {
        int total = 0;
        while (total < dst.Length)
        {
            int n = RandomAccess.Read(h, dst[total..], offset + total);
            if (n <= 0) break;
            total += n;
        }
        return total;
    }

    bool AllZero(long from, long to)
    {
        var chunk = buffer.AsSpan(0, (int)Math.Min(buffer.Length, 64 * 1024));
        for (long p = from; p < to;)
        {
            int want = (int)Math.Min(chunk.Length, to - p);
            int n = ReadFully(handle, chunk[..want], p);
            if (n < want) return true; // the file shrank while we looked; nothing non-zero seen
            if (chunk[..want].ContainsAnyExcept((byte)0)) return false;
            p += want;
        }
        return true;
    }

    bool TornAt(long p, long length, string reason)
    {
        Torn = new TornTail(p, length - p, reason);
        return false;
    }

    /// <summary>
    /// Reads the next frame. True: <see cref="Payload"/> holds a payload that passed its CRC.
    /// False: end of file (<see cref="Torn"/> null) or a torn tail (<see cref="Torn"/> set).
    /// Throws <see cref="DatasetCorruptException"/> on damage that is not a torn tail.
    /// </summary>
    public bool Next()
    {
        long p = Position;
        long length = RandomAccess.GetLength(handle);
        long left = length - p;
        if (left <= 0) return false;
        if (left < DatasetFormat.FrameHeaderSize)
            return TornAt(p, length, $"incomplete record header ({left} of {DatasetFormat.FrameHeaderSize} bytes)");
        if (ReadFully(handle, frameHeader, p) < frameHeader.Length)
            return TornAt(p, length, "file shrank while reading a record header");
        uint marker = BinaryPrimitives.ReadUInt32LittleEndian(frameHeader);
        uint payloadLen = BinaryPrimitives.ReadUInt32LittleEndian(frameHeader.AsSpan(4));
        uint lenCrc = BinaryPrimitives.ReadUInt32LittleEndian(frameHeader.AsSpan(8));
        if (marker != DatasetFormat.RecordMarker || lenCrc != Crc32.Compute(frameHeader.AsSpan(4, 4)))
        {
            if (AllZero(p, length)) return TornAt(p, length, "zero bytes where a record should start (blocks allocated but never written before a crash)");
            throw new DatasetCorruptException(
                $"'{path}': no valid record header at byte {p} ({(marker != DatasetFormat.RecordMarker ? "wrong marker" : "length checksum mismatch")}), " +
                $"and {left} bytes follow. The file is damaged in the middle; the records before byte {p} are intact.", p);
        }
        if (payloadLen > DatasetFormat.MaxPayloadLength)
            throw new DatasetCorruptException($"'{path}': record at byte {p} declares {payloadLen} payload bytes (limit {DatasetFormat.MaxPayloadLength}).", p);
        long frameLen = DatasetFormat.FrameHeaderSize + (long)payloadLen + DatasetFormat.FrameTrailerSize;
        if (frameLen > left)
            return TornAt(p, length, $"incomplete record ({left} of {frameLen} bytes)");
        int need = (int)payloadLen + DatasetFormat.FrameTrailerSize;
        if (buffer.Length < need) buffer = new byte[Math.Max(need, (int)Math.Min(int.MaxValue - 64, buffer.Length * 2L))];
        if (ReadFully(handle, buffer.AsSpan(0, need), p + DatasetFormat.FrameHeaderSize) < need)
            return TornAt(p, length, "file shrank while reading a record");
        uint crc = BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan((int)payloadLen));
        if (crc != Crc32.Compute(buffer.AsSpan(0, (int)payloadLen)))
        {
            long end = p + frameLen;
            if (AllZero(end, length))
                return TornAt(p, length, end == length
                    ? "the last record fails its checksum (partly written before a crash)"
                    : "a record failing its checksum followed only by zero bytes");
            throw new DatasetCorruptException(
                $"'{path}': the record at byte {p} ({frameLen} bytes) fails its checksum and {length - end} bytes follow it. " +
                $"The file is damaged in the middle; the records before byte {p} are intact.", p);
        }
        FrameOffset = p;
        PayloadLength = (int)payloadLen;
        Position = p + frameLen;
        return true;
    }

    public DatasetCorruptException Undecodable(string why) =>
        new($"'{path}': the record at byte {FrameOffset} passes its checksum but does not decode ({why}); " +
            "it was written by a faulty writer or a different format version.", FrameOffset);

    /// <summary>Reads the single frame at <paramref name="offset"/>; throws if it is not a complete, intact record.</summary>
    public void ReadAt(long offset)
    {
        if (offset < dataOffset)
            throw new DatasetException($"'{path}': offset {offset} lies inside the header (records start at {dataOffset}).");
        Position = offset;
        Torn = null;
        if (!Next())
            throw Torn is null
                ? new DatasetException($"'{path}': offset {offset} is at or past the end of the file.")
                : new DatasetCorruptException($"'{path}': no complete record at byte {offset}: {Torn.Reason}.", offset);
    }
}
