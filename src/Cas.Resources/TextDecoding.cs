using System.Buffers;
using System.Text;
using System.Text.Unicode;

namespace Cas.Resources;

/// <summary>
/// Reading files as text: UTF-8 decoded strictly first; on invalid bytes the text is decoded with U+FFFD
/// in place of each invalid sequence, and the file, the line of the first bad byte and the number of
/// replacements go to the report. A UTF-8 BOM is dropped; a UTF-16 BOM selects UTF-16.
/// </summary>
internal static class TextDecoding
{
    /// <summary>Whole file as text with "\n" line ends, or null when it cannot be read (counted).</summary>
    public static string? ReadFile(string path, ResourceReport report)
    {
        var bytes = ReadBytes(path, report);
        if (bytes == null) return null;
        return NormalizeNewlines(Decode(bytes, path, 1, report));
    }

    /// <summary>Raw bytes of the file, or null when it cannot be read (counted as unreadable).</summary>
    public static byte[]? ReadBytes(string path, ResourceReport report)
    {
        try
        {
            var bytes = File.ReadAllBytes(path);
            report.FileOpened();
            return bytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Add(ResourceIssueKind.UnreadableFile, path, 0, $"cannot read: {e.Message}; check the path and its permissions");
            return null;
        }
    }

    /// <summary>
    /// Decodes <paramref name="bytes"/> (a whole file, or one line starting at <paramref name="firstLine"/>).
    /// Invalid UTF-8 is replaced, counted and reported with the line of the first bad byte.
    /// </summary>
    public static string Decode(ReadOnlySpan<byte> bytes, string path, int firstLine, ResourceReport report)
    {
        bool reported = false;
        return Decode(bytes, path, firstLine, report, ref reported);
    }

    /// <summary>
    /// As above, for a file decoded piece by piece (JSONL lines): the file is reported once, when
    /// <paramref name="alreadyReported"/> is still false; later pieces only add to the replacement count.
    /// </summary>
    public static string Decode(ReadOnlySpan<byte> bytes, string path, int firstLine, ResourceReport report, ref bool alreadyReported)
    {
        if (bytes.Length >= 2 && bytes[0] == 0xFF && bytes[1] == 0xFE) return Encoding.Unicode.GetString(bytes[2..]);
        if (bytes.Length >= 2 && bytes[0] == 0xFE && bytes[1] == 0xFF) return Encoding.BigEndianUnicode.GetString(bytes[2..]);
        if (bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF) bytes = bytes[3..];
        if (Utf8.IsValid(bytes)) return Encoding.UTF8.GetString(bytes);

        var text = DecodeWithReplacement(bytes, out int replaced, out int firstBad);
        report.AddReplacements(replaced);
        if (!alreadyReported)
        {
            alreadyReported = true;
            int line = firstLine + bytes[..firstBad].Count((byte)'\n');
            report.Add(ResourceIssueKind.DecodedWithReplacement, path, line,
                $"not valid UTF-8 (first bad byte 0x{bytes[firstBad]:X2}); decoded with {replaced} U+FFFD replacement(s). " +
                "Convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) to keep those characters");
        }
        return text;
    }

    /// <summary>UTF-8 decoding that puts one U+FFFD per invalid sequence and counts them.</summary>
    public static string DecodeWithReplacement(ReadOnlySpan<byte> bytes, out int replaced, out int firstBad)
    {
        var sb = new StringBuilder(bytes.Length);
        Span<char> two = stackalloc char[2];
        replaced = 0;
        firstBad = -1;
        int i = 0;
        while (i < bytes.Length)
        {
            var status = Rune.DecodeFromUtf8(bytes[i..], out var rune, out int used);
            if (status == OperationStatus.Done)
            {
                int n = rune.EncodeToUtf16(two);
                sb.Append(two[..n]);
            }
            else
            {
                if (firstBad < 0) firstBad = i;
                sb.Append('\uFFFD');
                replaced++;
                if (used == 0) used = 1;
            }
            i += used;
        }
        if (firstBad < 0) firstBad = 0;
        return sb.ToString();
    }

    /// <summary>"\r\n" and lone "\r" become "\n".</summary>
    public static string NormalizeNewlines(string s) =>
        s.Contains('\r') ? s.Replace("\r\n", "\n").Replace('\r', '\n') : s;

    /// <summary>True when the first 8 KiB hold a NUL byte (and no UTF-16 BOM): a binary file.</summary>
    public static bool LooksBinary(ReadOnlySpan<byte> head)
    {
        if (head.Length >= 2 && ((head[0] == 0xFF && head[1] == 0xFE) || (head[0] == 0xFE && head[1] == 0xFF))) return false;
        return head[..Math.Min(head.Length, 8192)].Contains((byte)0);
    }

    /// <summary>Collapses runs of blank lines to one, trims trailing spaces of lines and the whole text.</summary>
    public static string Tidy(string s)
    {
        var sb = new StringBuilder(s.Length);
        int blank = 0;
        foreach (var raw in s.Split('\n'))
        {
            var line = raw.TrimEnd();
            if (line.Length == 0) { blank++; continue; }
            if (sb.Length > 0) sb.Append(blank > 0 ? "\n\n" : "\n");
            blank = 0;
            sb.Append(line);
        }
        return sb.ToString();
    }
}

/// <summary>
/// Reads a file line by line as raw bytes (split on '\n', a trailing '\r' removed), with the byte offset
/// and 1-based number of each line. The returned memory is valid until the next call.
/// </summary>
internal sealed class ByteLineReader : IDisposable
{
    readonly Stream _stream;
    byte[] _buf;
    int _start, _end;
    bool _eof;
    long _bufferOffset; // file offset of _buf[0]

    public ByteLineReader(Stream stream, int initialSize = 64 * 1024)
    {
        _stream = stream;
        _buf = ArrayPool<byte>.Shared.Rent(initialSize);
    }

    /// <summary>1-based number of the line last returned.</summary>
    public int LineNumber { get; private set; }

    /// <summary>File offset of the first byte of the line last returned.</summary>
    public long LineOffset { get; private set; }

    /// <summary>File offset just after the line last returned (after its '\n').</summary>
    public long NextOffset => _bufferOffset + _start;

    public bool TryReadLine(out ReadOnlyMemory<byte> line)
    {
        while (true)
        {
            int nl = _buf.AsSpan(_start, _end - _start).IndexOf((byte)'\n');
            if (nl >= 0)
            {
                line = Take(nl, nl + 1);
                return true;
            }
            if (_eof)
            {
                if (_start == _end) { line = default; return false; }
                line = Take(_end - _start, _end - _start);
                return true;
            }
            Fill();
        }
    }

    ReadOnlyMemory<byte> Take(int length, int advance)
    {
        int len = length;
        if (len > 0 && _buf[_start + len - 1] == (byte)'\r') len--;
        var mem = new ReadOnlyMemory<byte>(_buf, _start, len);
        LineOffset = _bufferOffset + _start;
        LineNumber++;
        _start += advance;
        return mem;
    }

    void Fill()
    {
        if (_start > 0)
        {
            Buffer.BlockCopy(_buf, _start, _buf, 0, _end - _start);
            _bufferOffset += _start;
            _end -= _start;
            _start = 0;
        }
        if (_end == _buf.Length)
        {
            var bigger = ArrayPool<byte>.Shared.Rent(_buf.Length * 2);
            Buffer.BlockCopy(_buf, 0, bigger, 0, _end);
            ArrayPool<byte>.Shared.Return(_buf);
            _buf = bigger;
        }
        int n = _stream.Read(_buf, _end, _buf.Length - _end);
        if (n == 0) _eof = true;
        _end += n;
    }

    public void Dispose()
    {
        _stream.Dispose();
        if (_buf.Length > 0) ArrayPool<byte>.Shared.Return(_buf);
        _buf = [];
    }
}
