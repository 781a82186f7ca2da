using System.Text.Json;
using Cas.Engine.Tokenizers;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>NFC/NFD/NFKC/NFKD and toLowerCase against node's String.prototype.normalize/toLowerCase (goldens/unicode.json).</summary>
public class UnicodeNormalizerTests
{
    [Fact]
    public void MatchesNode_OnTheCommittedCorpus()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(TokenizerCorpus.GoldensDir, "unicode.json")));
        var entries = doc.RootElement.GetProperty("entries");
        var lines = TokenizerCorpus.Extra;
        Assert.Equal(lines.Length, entries.GetArrayLength());
        var failures = new List<string>();
        for (int i = 0; i < lines.Length; i++)
        {
            var e = entries[i];
            Assert.Equal(e[0].GetString(), TokenizerCorpus.Hash(lines[i]));
            string[] got =
            {
                UnicodeNormalizer.Normalize(lines[i], NormalForm.NFC), UnicodeNormalizer.Normalize(lines[i], NormalForm.NFD),
                UnicodeNormalizer.Normalize(lines[i], NormalForm.NFKC), UnicodeNormalizer.Normalize(lines[i], NormalForm.NFKD),
                JsText.ToLower(lines[i]),
            };
            for (int f = 0; f < got.Length; f++)
                if (TokenizerCorpus.Hash(got[f]) != e[f + 1].GetString())
                    failures.Add($"{JsonSerializer.Serialize(lines[i])} form {f}: {JsonSerializer.Serialize(got[f])}");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Theory]
    [InlineData("e\u0301", "\u00e9", "e\u0301")]
    [InlineData("\u1100\u1161\u11a8", "\uac01", "\u1100\u1161\u11a8")]
    [InlineData("\uac01", "\uac01", "\u1100\u1161\u11a8")]
    [InlineData("a\u0307\u0323", "\u1ea1\u0307", "a\u0323\u0307")] // canonical reordering, then composition
    [InlineData("\u212b", "\u00c5", "A\u030a")]                    // singleton decomposition never recomposes to U+212B
    [InlineData("\u0958", "\u0915\u093c", "\u0915\u093c")]          // composition exclusion
    public void CanonicalForms(string input, string nfc, string nfd)
    {
        Assert.Equal(nfc, UnicodeNormalizer.Normalize(input, NormalForm.NFC));
        Assert.Equal(nfd, UnicodeNormalizer.Normalize(input, NormalForm.NFD));
    }

    [Fact]
    public void CompatibilityForms()
    {
        Assert.Equal("fi 1 2 kg", UnicodeNormalizer.Normalize("\ufb01 \u2460 \uff12 \u338f", NormalForm.NFKC));
        Assert.Equal("e\u0301", UnicodeNormalizer.Normalize("\u00e9", NormalForm.NFKD));
        Assert.Equal("plain ascii", UnicodeNormalizer.Normalize("plain ascii", NormalForm.NFKC));
    }
}
