using System.Diagnostics;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>
/// Every corpus entry's ids must equal Hugging Face Tokenizers.js's (tests/tokenizers/goldens, made by
/// make-goldens.mjs), Decode of those ids must equal Tokenizers.js's decoding, and for byte-level
/// tokenizers Decode(Encode(x)) must give x back (NFC(x) for Qwen, whose normalizer is NFC).
/// </summary>
public class TokenizerGoldenTests
{
    static readonly JsonSerializerOptions Readable = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Loads the tokenizer a golden file was made from (skipping when its file is absent), with the golden's patch applied.</summary>
    internal static HfTokenizer Load(string name) => TokenizerCorpus.LoadTokenizer(name);
    internal static string SourcePath(JsonElement root) => TokenizerCorpus.SourcePath(root);

    public static TheoryData<string> Main => new() { "smollm2", "llama3", "qwen3", "llama2" };
    public static TheoryData<string> All => new()
    {
        "smollm2", "llama3", "qwen3", "llama2",
        "llama2-metaspace", "qwen3-nfkc-lower", "llama3-nfd-strip-replace", "smollm2-split-removed", "llama3-whitespace",
    };

    static string? RoundTripExpectation(string name, string text) => name switch
    {
        "smollm2" or "llama3" => text,
        "qwen3" => UnicodeNormalizer.Normalize(text, NormalForm.NFC),
        _ => null, // SentencePiece-style and lossy variants: the decoded-text hash comparison covers them
    };

    [Theory]
    [MemberData(nameof(All))]
    public void CommittedCorpus_MatchesTokenizersJs(string name)
    {
        var tok = Load(name);
        using var golden = TokenizerCorpus.ReadGolden(name);
        Compare(name, tok, TokenizerCorpus.Extra, golden.RootElement.GetProperty("extra"), golden.RootElement, "extra", showText: true);
    }

    [Theory]
    [MemberData(nameof(Main))]
    public void DatasetCorpus_MatchesTokenizersJs(string name)
    {
        var tok = Load(name);
        var lines = TokenizerCorpus.TryDataset();
        if (lines == null) Assert.Skip("needs ../shared/datasets beside the repository for the prose part of the corpus; skipped.");
        using var golden = TokenizerCorpus.ReadGolden(name);
        Compare(name, tok, lines, golden.RootElement.GetProperty("dataset"), golden.RootElement, "dataset", showText: false);
    }

    static void Compare(string name, HfTokenizer tok, string[] lines, JsonElement entries, JsonElement root, string part, bool showText)
    {
        Assert.Equal(entries.GetArrayLength(), lines.Length);
        var failures = new List<string>();
        var followed = new Dictionary<string, int>();
        string Show(int i) => showText ? JsonSerializer.Serialize(lines[i], Readable) : $"{part} entry {i}";
        int idCount = 0;
        for (int i = 0; i < lines.Length; i++)
        {
            var e = entries[i];
            if (TokenizerCorpus.Hash(lines[i]) != e.GetProperty("h").GetString())
            {
                failures.Add($"{Show(i)}: corpus text differs from the one the goldens were made from (hash)");
                continue;
            }
            var expected = e.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            idCount += expected.Length;
            var actual = tok.Encode(lines[i]);
            if (!actual.SequenceEqual(expected) && !FollowsRust(name, lines[i], actual, followed))
                failures.Add($"{Show(i)}: ids [{string.Join(",", actual)}] != Tokenizers.js [{string.Join(",", expected)}]");
            string decoded = tok.Decode(expected);
            if (TokenizerCorpus.Hash(decoded) != e.GetProperty("d").GetString())
                failures.Add($"{Show(i)}: Decode gives {JsonSerializer.Serialize(showText ? decoded : decoded[..Math.Min(decoded.Length, 40)], Readable)}, not Tokenizers.js's text");
            if (RoundTripExpectation(name, lines[i]) is { } want && tok.Decode(actual) != want)
                failures.Add($"{Show(i)}: Decode(Encode(x)) != x");
        }
        foreach (var s in root.GetProperty("slices").EnumerateArray())
        {
            if (s[0].GetString() != part) continue;
            int i = s[1].GetInt32(), a = s[2].GetInt32(), b = s[3].GetInt32();
            var ids = entries[i].GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            if (TokenizerCorpus.Hash(tok.Decode(ids.AsSpan(a, b - a))) != s[4].GetString())
                failures.Add($"{Show(i)}: Decode(ids[{a}..{b}]) differs from Tokenizers.js");
        }
        Report(name, followed);
        Assert.True(failures.Count == 0,
            $"{name}/{part}: {failures.Count} mismatches over {lines.Length} entries ({idCount} ids):\n" + string.Join("\n", failures.Take(12)));
        Assert.True(idCount > 0);
    }

    /// <summary>
    /// Where Tokenizers.js and our ids differ, ours must be the Rust library's and the text must be of a
    /// documented disagreement class (<see cref="JsRustDisagreements"/>).
    /// </summary>
    static bool FollowsRust(string name, string text, int[] actual, Dictionary<string, int> followed)
    {
        var classes = JsRustDisagreements.Classes(text);
        if (classes.Count == 0 || !RustReference.For(name).Encode(text).SequenceEqual(actual)) return false;
        foreach (var c in classes) followed[c] = followed.GetValueOrDefault(c) + 1;
        return true;
    }

    static void Report(string name, Dictionary<string, int> followed)
    {
        foreach (var (c, n) in followed)
            TestContext.Current.TestOutputHelper?.WriteLine($"{name}: {n} texts follow Rust, not Tokenizers.js ({c})");
    }

    [Theory]
    [MemberData(nameof(All))]
    public void RandomFragmentCombinations_MatchTokenizersJs(string name)
    {
        var tok = Load(name);
        using var fuzz = TokenizerCorpus.ReadGolden("fuzz");
        var texts = fuzz.RootElement.GetProperty("texts").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var failures = new List<string>();
        var results = fuzz.RootElement.GetProperty("results").GetProperty(name);
        var followed = new Dictionary<string, int>();
        for (int i = 0; i < texts.Length; i++)
        {
            var expected = results[i].GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            var actual = tok.Encode(texts[i]);
            if (!actual.SequenceEqual(expected) && !FollowsRust(name, texts[i], actual, followed))
                failures.Add($"{JsonSerializer.Serialize(texts[i], Readable)}: [{string.Join(",", actual)}] != [{string.Join(",", expected)}]");
            if (TokenizerCorpus.Hash(tok.Decode(expected)) != results[i].GetProperty("d").GetString())
                failures.Add($"{JsonSerializer.Serialize(texts[i], Readable)}: Decode differs: {JsonSerializer.Serialize(tok.Decode(expected), Readable)}");
        }
        Report(name, followed);
        Assert.True(failures.Count == 0, $"{name}: {failures.Count} mismatches over {texts.Length} texts:\n" + string.Join("\n", failures.Take(12)));
    }

    [Fact]
    public void ConcurrentEncoding_GivesTheSameIds()
    {
        // A fresh instance so that the threads race on an empty BPE cache.
        var tok = HfTokenizer.FromFile(TestPaths.RequireShared("models/smollm2-135m-instruct-tokenizer/tokenizer.json"));
        var lines = TokenizerCorpus.Extra;
        var reference = Load("smollm2");
        var expected = lines.Select(l => reference.Encode(l)).ToArray();
        var actual = new int[lines.Length * 4][];
        Parallel.For(0, actual.Length, new ParallelOptions { MaxDegreeOfParallelism = 8 }, k => actual[k] = tok.Encode(lines[k % lines.Length]));
        for (int k = 0; k < actual.Length; k++)
            Assert.True(expected[k % lines.Length].SequenceEqual(actual[k]), $"entry {k % lines.Length} differs under concurrency");
    }

    [Fact]
    public void EncodingTheWholeCorpus_TakesWellUnderASecond()
    {
        var tok = Load("smollm2");
        var lines = TokenizerCorpus.Extra.Concat(TokenizerCorpus.TryDataset() ?? Array.Empty<string>()).ToArray();
        foreach (var l in lines) tok.Encode(l); // warm-up
        double best = double.MaxValue;
        int total = 0;
        for (int rep = 0; rep < 3; rep++)
        {
            var sw = Stopwatch.StartNew();
            total = 0;
            foreach (var l in lines) total += tok.Encode(l).Length;
            best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"encoded {lines.Length} entries ({total} tokens) in {best:F1} ms");
        Assert.True(best < 1000, $"encoding {lines.Length} entries took {best:F0} ms");
    }
}
