using System.Text;

namespace Cas.Resources.Tests;

public class TextDecodingTests
{
    public static TheoryData<byte[]> InvalidUtf8 => new()
    {
        new byte[] { 0x61, 0xE9, 0x62 },             // Latin-1 byte
        new byte[] { 0xC0, 0x80 },                   // overlong NUL
        new byte[] { 0xE2, 0x82 },                   // truncated at the end
        new byte[] { 0xED, 0xA0, 0x80, 0x41 },       // UTF-16 surrogate encoded in UTF-8
        new byte[] { 0xF4, 0x90, 0x80, 0x80 },       // above U+10FFFF
        new byte[] { 0x80, 0x80, 0xF0, 0x9F, 0x98, 0x80, 0xFF }, // stray continuations, an emoji, 0xFF
    };

    [Theory]
    [MemberData(nameof(InvalidUtf8))]
    public void ReplacementMatchesTheFrameworkDecoder(byte[] bytes)
    {
        var ours = TextDecoding.DecodeWithReplacement(bytes, out int replaced, out int firstBad);
        var reference = Encoding.UTF8.GetString(bytes); // replaces invalid sequences the same (Unicode "maximal subpart") way
        Assert.Equal(reference, ours);
        Assert.Equal(reference.Count(c => c == '\uFFFD'), replaced);
        Assert.False(Encoding.UTF8.GetString(bytes[..firstBad]).Contains('\uFFFD'));
    }

    [Fact]
    public void LineReaderSplitsLongLinesAndKeepsOffsets()
    {
        var longLine = new string('x', 5000);
        var content = $"first\r\n{longLine}\n\nlast-no-newline";
        using var reader = new ByteLineReader(new MemoryStream(Encoding.ASCII.GetBytes(content)), initialSize: 16);
        var lines = new List<(int Number, long Offset, string Text)>();
        while (reader.TryReadLine(out var line)) lines.Add((reader.LineNumber, reader.LineOffset, Encoding.ASCII.GetString(line.Span)));

        Assert.Equal(["first", longLine, "", "last-no-newline"], lines.Select(l => l.Text));
        Assert.Equal([1, 2, 3, 4], lines.Select(l => l.Number));
        Assert.Equal([0L, 7L, 5008L, 5009L], lines.Select(l => l.Offset));
        Assert.Equal(content.Length, reader.NextOffset);
    }

    [Fact]
    public void TidyCollapsesBlankRunsAndTrailingSpaces()
    {
        Assert.Equal("a\n\nb\nc", TextDecoding.Tidy("\n\n  \na  \n\n\n\nb\t\nc\n\n"));
    }

    [Fact]
    public void BinaryDetection()
    {
        Assert.True(TextDecoding.LooksBinary([0x89, 0x50, 0x00]));
        Assert.False(TextDecoding.LooksBinary("plain text"u8));
        Assert.False(TextDecoding.LooksBinary([0xFF, 0xFE, 0x41, 0x00])); // UTF-16 text has NULs but a BOM
    }
}
