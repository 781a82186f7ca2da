using System.Text.Json;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Tokenizers;

public class Llama2cTokenizerTests
{
    static Llama2cTokenizer LoadTok512() => Llama2cTokenizer.FromFile(TestPaths.RequireShared("models/stories260K/tok512.bin"));

    [Fact]
    public void Tok512_HeaderAndSpecialIds()
    {
        var tok = LoadTok512();
        Assert.Equal(512, tok.VocabSize);
        Assert.Equal(7, tok.MaxTokenLength);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
        Assert.Equal("<0x41>"u8.ToArray(), tok.PieceBytes(0x41 + 3));
        Assert.Equal(1, tok.SpecialTokenId("<s>"));
        Assert.Null(tok.SpecialTokenId("<|im_end|>"));
    }

    [Fact]
    public void Encode_MatchesThePythonReimplementationOfLlama2c()
    {
        var tok = LoadTok512();
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(TokenizerCorpus.GoldensDir, "llama2c.json")));
        int n = 0;
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            string text = c.GetProperty("text").GetString()!;
            var expected = c.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            Assert.True(expected.SequenceEqual(tok.Encode(text)), $"encoding of {JsonSerializer.Serialize(text)}");
            Assert.Equal(text, tok.Decode(expected));
            n++;
        }
        Assert.True(n >= 20);
    }

    [Fact]
    public void DecodeOfEncode_GivesTheText_ForTheCommittedCorpus()
    {
        var tok = LoadTok512();
        foreach (var line in TokenizerCorpus.Extra)
        {
            if (line.Contains('\0')) continue; // llama2.c's C strings end at NUL
            Assert.Equal(line, tok.Decode(tok.Encode(line)));
        }
    }

    [Fact]
    public void Decode_DropsTheSpaceAfterBos_AndBosEosGiveNoText()
    {
        var tok = LoadTok512();
        var ids = tok.Encode("Once upon a time");
        var withBos = new[] { 1 }.Concat(ids).Append(2).ToArray();
        Assert.Equal("Once upon a time", tok.Decode(withBos));
        // A piece in the middle keeps its space; only the first piece's (the dummy prefix) is dropped.
        var twoWords = tok.Encode("a b");
        Assert.Equal(" b", tok.Decode(new[] { 1 }.Concat(twoWords).ToArray())[1..]);
        Assert.Empty(tok.Encode(""));
        Assert.Throws<InvalidRequestException>(() => tok.Decode(new[] { 512 }));
    }

    [Fact]
    public void UnknownCharacters_BecomeByteTokens()
    {
        var tok = LoadTok512();
        // U+4F60 is not in the 512-token vocabulary: its three UTF-8 bytes become ids byte + 3.
        var ids = tok.Encode("你");
        Assert.Equal(new[] { 0xE4 + 3, 0xBD + 3, 0xA0 + 3 }, ids[^3..]);
        Assert.Equal("你", tok.Decode(ids));
    }

    static byte[] Build(params (float score, byte[] bytes)[] tokens)
    {
        var ms = new MemoryStream();
        var w = new BinaryWriter(ms);
        w.Write(8);
        foreach (var (s, b) in tokens) { w.Write(s); w.Write(b.Length); w.Write(b); }
        return ms.ToArray();
    }

    static (float, byte[])[] MinimalVocab(params (float, string)[] extra)
    {
        var list = new List<(float, byte[])> { (0, "<unk>"u8.ToArray()), (0, "\n<s>\n"u8.ToArray()), (0, "\n</s>\n"u8.ToArray()) };
        for (int b = 0; b < 256; b++) list.Add((0, System.Text.Encoding.ASCII.GetBytes($"<0x{b:X2}>")));
        foreach (var (s, t) in extra) list.Add((s, System.Text.Encoding.UTF8.GetBytes(t)));
        return list.ToArray();
    }

    [Fact]
    public void Merging_PrefersTheBestScore_ThenTheLeftmostPair()
    {
        // "aaa": pairs (a,a) at 0 and 1 tie on score -> the leftmost merges first: [aa, a].
        // "abc": "bc" scores better than "ab" -> [a, bc] even though "ab" is further left.
        var tok = Llama2cTokenizer.FromBytes(Build(MinimalVocab((0, " "), (0, "a"), (0, "b"), (0, "c"), (-1, "aa"), (-5, "ab"), (-2, "bc"))));
        int sp = 259, a = 260, aa = 263, bc = 265; // b = 261, c = 262 never appear unmerged here
        Assert.Equal(new[] { sp, aa, a }, tok.Encode("aaa"));
        Assert.Equal(new[] { sp, a, bc }, tok.Encode("abc"));
        Assert.Equal("aaa", tok.Decode(tok.Encode("aaa")));
    }

    [Fact]
    public void TruncatedOrMalformedFiles_AreModelFormatErrors()
    {
        var good = Build(MinimalVocab((0, " "), (0, "a")));
        Assert.Equal(261, Llama2cTokenizer.FromBytes(good).VocabSize);
        var e1 = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.FromBytes(good.AsSpan(0, good.Length - 1)));
        Assert.Contains("truncated", e1.Message);
        var e2 = Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.FromBytes(good.AsSpan(0, good.Length - 3)));
        Assert.Contains("truncated", e2.Message);
        Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.FromBytes(new byte[] { 1, 2 }));
        var badHeader = (byte[])good.Clone();
        BitConverter.GetBytes(-5).CopyTo(badHeader, 0);
        Assert.Contains("max_token_length", Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.FromBytes(badHeader)).Message);
        var tooFew = Build((0, "<unk>"u8.ToArray()), (0, "x"u8.ToArray()));
        Assert.Contains("259", Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.FromBytes(tooFew)).Message);
        var missing = Path.Combine(Path.GetTempPath(), "no-such-tokenizer-" + Guid.NewGuid() + ".bin");
        Assert.Contains(missing, Assert.Throws<ModelFormatException>(() => Llama2cTokenizer.FromFile(missing)).Message);
    }
}
