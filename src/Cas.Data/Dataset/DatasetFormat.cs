namespace Cas.Data;

/// <summary>
/// Constants of the self-study dataset file format. The full description is in DATASET_FORMAT.md
/// beside this file; in short (all integers little-endian):
/// <code>
/// header : magic "\x89CASDS\r\n" (8) | u32 version | u32 metadata_length | metadata | u32 crc32(all previous header bytes)
/// frame  : u32 marker "REC\xD5" | u32 payload_length | u32 crc32(payload_length bytes) | payload | u32 crc32(payload)
/// </code>
/// Frames follow the header back to back until the end of the file; each payload is one
/// <see cref="Conversation"/>. Nothing else is ever written, so appending is writing one more frame.
/// </summary>
public static class DatasetFormat
{
    /// <summary>File signature; the 0x89 byte and CR LF catch text-mode transfers like PNG's signature.</summary>
    public static ReadOnlySpan<byte> Magic => [0x89, (byte)'C', (byte)'A', (byte)'S', (byte)'D', (byte)'S', 0x0D, 0x0A];

    /// <summary>True when the path names a dataset: the .casds extension, or a file that starts with <see cref="Magic"/>.</summary>
    public static bool IsDatasetFile(string path)
    {
        if (string.Equals(System.IO.Path.GetExtension(path), Extension, StringComparison.OrdinalIgnoreCase)) return true;
        Span<byte> head = stackalloc byte[8];
        using var f = File.OpenRead(path);
        return f.Read(head) == 8 && head.SequenceEqual(Magic);
    }

    /// <summary>The version this code writes and the newest it reads.</summary>
    public const uint CurrentVersion = 1;

    /// <summary>Start of every record frame: the bytes 'R', 'E', 'C', 0xD5.</summary>
    public const uint RecordMarker = 0xD5434552;

    /// <summary>Bytes before a payload: marker, payload length, CRC of the length.</summary>
    public const int FrameHeaderSize = 12;

    /// <summary>Bytes after a payload: CRC of the payload.</summary>
    public const int FrameTrailerSize = 4;

    /// <summary>Largest payload accepted (1 GiB); a conversation is many orders of magnitude smaller.</summary>
    public const int MaxPayloadLength = 1 << 30;

    /// <summary>Largest metadata block accepted in the header (1 MiB).</summary>
    public const int MaxMetadataLength = 1 << 20;

    /// <summary>File extension used by the CLI by convention.</summary>
    public const string Extension = ".casds";
}
