using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Cas.Engine.Tokenizers;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>Behaviour of the tokenizer.json pipeline on small hand-made tokenizers.</summary>
public class HfTokenizerTests
{
    static JsonObject Model(string[] vocab, JsonArray merges, Action<JsonObject>? tweak = null)
    {
        var v = new JsonObject();
        for (int i = 0; i < vocab.Length; i++) v[vocab[i]] = i;
        var m = new JsonObject { ["type"] = "BPE", ["vocab"] = v, ["merges"] = merges };
        tweak?.Invoke(m);
        return m;
    }

    static HfTokenizer Build(JsonObject model, JsonNode? pre = null, JsonNode? norm = null, JsonNode? dec = null, JsonArray? added = null) =>
        HfTokenizer.FromJson(new JsonObject
        {
            ["version"] = "1.0", ["model"] = model, ["pre_tokenizer"] = pre, ["normalizer"] = norm, ["decoder"] = dec,
            ["post_processor"] = null, ["added_tokens"] = added ?? new JsonArray(),
        }.ToJsonString());

    static JsonArray Strings(params string[] s) => new(s.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray());
    static JsonArray Pairs(params (string, string)[] s) => new(s.Select(p => (JsonNode?)Strings(p.Item1, p.Item2)).ToArray());

    static JsonObject Added(int id, string content, bool special = true, bool lstrip = false, bool rstrip = false, bool? normalized = null) => new()
    {
        ["id"] = id, ["content"] = content, ["special"] = special, ["lstrip"] = lstrip, ["rstrip"] = rstrip,
        ["single_word"] = false, ["normalized"] = normalized ?? !special,
    };

    [Fact]
    public void Merges_AsStringsOrPairs_AreTheSame()
    {
        string[] vocab = { "a", "b", "c", "ab", "abc" };
        var t1 = Build(Model(vocab, Strings("a b", "ab c")));
        var t2 = Build(Model(vocab, Pairs(("a", "b"), ("ab", "c"))));
        Assert.Equal(new[] { 4 }, t1.Encode("abc"));
        Assert.Equal(new[] { 2, 3 }, t1.Encode("cab"));
        Assert.Equal(t1.Encode("cabcab"), t2.Encode("cabcab"));
        Assert.Equal(new[] { 2, 4, 3 }, t2.Encode("cabcab"));
    }

    [Fact]
    public void Merges_LowestRankFirst_LeftmostOnTies()
    {
        var t = Build(Model(new[] { "a", "b", "c", "ab", "bc", "aa" }, Strings("b c", "a b", "a a")));
        Assert.Equal(new[] { 0, 4 }, t.Encode("abc"));       // "b c" (rank 0) beats "a b" (rank 1)
        Assert.Equal(new[] { 5, 0 }, t.Encode("aaa"));       // leftmost "a a" first
        Assert.Equal(new[] { 5, 5 }, t.Encode("aaaa"));
    }

    [Fact]
    public void IgnoreMerges_EmitsAWholePreTokenFoundInTheVocab()
    {
        string[] vocab = { "a", "b", "c", "abc", "ab" };
        Assert.Equal(new[] { 4, 2 }, Build(Model(vocab, Strings("a b"))).Encode("abc"));
        Assert.Equal(new[] { 3 }, Build(Model(vocab, Strings("a b"), m => m["ignore_merges"] = true)).Encode("abc"));
    }

    [Fact]
    public void EndOfWordSuffix_MarksTheLastSymbolOfEachPreToken()
    {
        var model = Model(new[] { "a", "b", "b</w>", "ab</w>", "a</w>" }, Strings("a b</w>"), m => m["end_of_word_suffix"] = "</w>");
        var t = Build(model, new JsonObject { ["type"] = "WhitespaceSplit" }, dec: new JsonObject { ["type"] = "BPEDecoder", ["suffix"] = "</w>" });
        Assert.Equal(new[] { 3, 0, 4, 2 }, t.Encode("ab aa b"));
        Assert.Equal("ab aa b", t.Decode(t.Encode("ab aa b")));
    }

    [Fact]
    public void ByteFallback_Unknown_AndFuseUnk()
    {
        var vocab = new List<string> { "<unk>", "a" };
        for (int b = 0; b < 256; b++) vocab.Add($"<0x{b:X2}>");
        var fallback = Build(Model(vocab.ToArray(), Strings(), m => { m["byte_fallback"] = true; m["unk_token"] = "<unk>"; }));
        Assert.Equal(new[] { 1, 2 + 0xC3, 2 + 0xA9 }, fallback.Encode("aé"));
        var unk = Build(Model(vocab.ToArray(), Strings(), m => m["unk_token"] = "<unk>"));
        Assert.Equal(new[] { 1, 0, 0, 1 }, unk.Encode("aéüa"));
        var fused = Build(Model(vocab.ToArray(), Strings(), m => { m["unk_token"] = "<unk>"; m["fuse_unk"] = true; }));
        Assert.Equal(new[] { 1, 0, 1 }, fused.Encode("aéüa"));
        var noUnk = Build(Model(vocab.ToArray(), Strings()));
        Assert.Equal(new[] { 1, 1 }, noUnk.Encode("aéa")); // no unk token: the piece is dropped, as Tokenizers.js does
        var dec = new JsonObject { ["type"] = "Sequence", ["decoders"] = new JsonArray(new JsonObject { ["type"] = "ByteFallback" }, new JsonObject { ["type"] = "Fuse" }) };
        var withDecoder = Build(Model(vocab.ToArray(), Strings(), m => { m["byte_fallback"] = true; m["unk_token"] = "<unk>"; }), dec: dec);
        Assert.Equal("aé😀a", withDecoder.Decode(withDecoder.Encode("aé😀a")));
        Assert.Equal("a\uFFFD", withDecoder.Decode(new[] { 1, 2 + 0xC3 })); // a lone lead byte decodes to U+FFFD
    }

    [Fact]
    public void AddedTokens_LongestMatch_Strips_AndNormalizedContent()
    {
        string[] vocab = { "a", "b", " ", "<", "x", ">" };
        var added = new JsonArray(Added(10, "<x>"), Added(11, "<x><x>"), Added(12, "<m>", lstrip: true, rstrip: true), Added(13, "<Q>", special: false));
        var t = Build(Model(vocab, Strings()), added: added);
        Assert.Equal(new[] { 11, 10, 0 }, t.Encode("<x><x><x>a"));
        Assert.Equal(new[] { 0, 12, 1 }, t.Encode("a  <m>\t b"));
        Assert.Equal(10, t.SpecialTokenId("<x>"));
        Assert.Null(t.SpecialTokenId("<y>"));
        Assert.Equal(14, t.VocabSize); // ids 0..13

        // A normalized added token is matched after normalization (here Lowercase): "<Q>" becomes "<q>".
        var norm = new JsonObject { ["type"] = "Lowercase" };
        var lower = Build(Model(new[] { "a", "b", "<", "q", ">" }, Strings()), norm: norm, added: new JsonArray(Added(7, "<Q>", special: false, normalized: true)));
        Assert.Equal(new[] { 0, 7, 1 }, lower.Encode("A<Q>B"));
        Assert.Equal(new[] { 0, 7, 1 }, lower.Encode("a<q>b"));
    }

    static List<string> SplitWith(string behavior, string text, bool invert = false)
    {
        var pre = new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["String"] = "-" }, ["behavior"] = behavior, ["invert"] = invert };
        return Build(Model(new[] { "a" }, Strings()), pre).PreTokenize(text);
    }

    [Fact]
    public void Split_Behaviours_FollowTheRustCrate()
    {
        const string text = "the-final--countdown";
        Assert.Equal(new[] { "the", "-", "final", "-", "-", "countdown" }, SplitWith("Isolated", text));
        Assert.Equal(new[] { "the", "final", "countdown" }, SplitWith("Removed", text));
        Assert.Equal(new[] { "the-", "final-", "-", "countdown" }, SplitWith("MergedWithPrevious", text));
        Assert.Equal(new[] { "the", "-final", "-", "-countdown" }, SplitWith("MergedWithNext", text));
        Assert.Equal(new[] { "the", "-", "final", "--", "countdown" }, SplitWith("Contiguous", text));
        Assert.Equal(new[] { "-", "-", "-" }, SplitWith("Removed", text, invert: true));
    }

    [Fact]
    public void Metaspace_PrependScheme_AndSplit()
    {
        List<string> Pre(string scheme, bool split, string text, int section = 0) =>
            Build(Model(new[] { "a" }, Strings()), new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = scheme, ["split"] = split })
                .PreTokenize(text, section);
        Assert.Equal(new[] { "▁Hey", "▁friend!" }, Pre("always", true, "Hey friend!"));
        Assert.Equal(new[] { "▁Hey", "▁", "▁you" }, Pre("always", true, "Hey  you"));
        Assert.Equal(new[] { "▁Hey▁friend!" }, Pre("always", false, "Hey friend!"));
        Assert.Equal(new[] { "Hey▁friend!" }, Pre("never", false, "Hey friend!"));
        Assert.Equal(new[] { "▁Hey" }, Pre("first", false, "Hey", section: 0));
        Assert.Equal(new[] { "Hey" }, Pre("first", false, "Hey", section: 1));
    }

    const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    [Fact]
    public void SplitRegex_TreatsAstralCharactersAsSingleCodePoints()
    {
        var pre = new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = Llama3Pattern }, ["behavior"] = "Isolated", ["invert"] = false };
        var t = Build(Model(new[] { "a" }, Strings()), pre);
        // 𝟏..𝟒 are astral \p{Nd}: {1,3} counts code points, not UTF-16 units. 𝐀𝐁 are astral \p{L}.
        Assert.Equal(new[] { "𝟏𝟐𝟑", "𝟒", " x𝐀𝐁", "'s", " 😀👍🏽", "  ", " 𠀀b" }, t.PreTokenize("𝟏𝟐𝟑𝟒 x𝐀𝐁's 😀👍🏽   𠀀b"));
        Assert.Equal(new[] { "𝐀", "'S", "\n\n" }, t.PreTokenize("𝐀'S\n\n"));
    }

    [Fact]
    public void PatternTranslation_FollowsTokenizersJs()
    {
        Regex R(string p) => new(PatternTranslator.Translate(p));
        Assert.Matches(R("^(?i:'s)$"), "'S");
        Assert.DoesNotMatch(R("^(?i:'s)$"), "'\u017F");     // ASCII-only case folding (no long s)
        Assert.Matches(R(@"^\s$"), "\u0085");               // \s is Unicode White_Space
        Assert.DoesNotMatch(R(@"^\s$"), "\uFEFF");
        Assert.Matches(R("^a++b$"), "aab");                  // possessive accepted as greedy
        Assert.Matches(R("^(?>ab)c$"), "abc");
        Assert.Matches(R("^.$"), "\r");
        Assert.DoesNotMatch(R("^.$"), "\n");
        Assert.Matches(R(@"^[\w-]+$"), "a-b_1é");
        Assert.Matches(R(@"^(?i:[a-c])$"), "B");
        Assert.Matches(R(@"^[^\s\p{L}]+$"), "1!");
        Assert.Matches(R(@"^[\p{L}&&[^a-z]]+$"), "ABé");
        Assert.DoesNotMatch(R(@"^[\p{L}&&[^a-z]]$"), "q");
        Assert.Matches(R(@"^\x{41}\u0042[\x43-\x44]$"), "ABD");
        var e = Assert.Throws<ModelFormatException>(() => PatternTranslator.Translate(@"\p{Han}+"));
        Assert.Contains("Han", e.Message);
        Assert.Contains("supported", e.Message);
    }

    static ModelFormatException Bad(string json) => Assert.Throws<ModelFormatException>(() => HfTokenizer.FromJson(json));

    [Fact]
    public void BadInput_IsAModelFormatErrorNamingTheField()
    {
        Assert.Contains("not valid JSON", Bad("{\"model\": {").Message);
        Assert.Contains("\"model\"", Bad("{\"version\": \"1.0\"}").Message);
        Assert.Contains("model.vocab", Bad("{\"model\": {\"type\": \"BPE\", \"merges\": []}}").Message);
        var wp = Bad("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
        Assert.Contains("model.type \"WordPiece\"", wp.Message);
        Assert.Contains("BPE", wp.Message);
        Assert.Contains("model.merges", Bad("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}").Message);
        Assert.Contains("model.merges[0]", Bad("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [5]}}").Message);
        Assert.Contains("model.vocab[\"a\"]", Bad("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}").Message);

        string With(string key, string value) => "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"" + key + "\": " + value + "}";
        var pre = Bad(With("pre_tokenizer", "{\"type\": \"BertPreTokenizer\"}"));
        Assert.Contains("pre_tokenizer.type \"BertPreTokenizer\"", pre.Message);
        Assert.Contains("ByteLevel", pre.Message);
        Assert.Contains("pre_tokenizer.pretokenizers[1].type \"Foo\"",
            Bad(With("pre_tokenizer", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\"}, {\"type\": \"Foo\"}]}")).Message);
        Assert.Contains("normalizer.type \"Precompiled\"", Bad(With("normalizer", "{\"type\": \"Precompiled\"}")).Message);
        Assert.Contains("decoder.type \"CTC\"", Bad(With("decoder", "{\"type\": \"CTC\"}")).Message);
        Assert.Contains("behavior \"Weird\"", Bad(With("pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"String\": \"x\"}, \"behavior\": \"Weird\"}")).Message);
        Assert.Contains("\\p{Han}", Bad(With("pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p{Han}+\"}, \"behavior\": \"Isolated\"}")).Message);
        Assert.Contains("added_tokens[0]", Bad(With("added_tokens", "[{\"content\": \"x\"}]")).Message);
        Assert.Contains("continuing_subword_prefix",
            Bad("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"continuing_subword_prefix\": \"##\"}}").Message);
    }

    [Fact]
    public void Decode_UnknownIds_UseTheUnkTokenOrNothing()
    {
        var t = Build(Model(new[] { "<unk>", "a", "b" }, Strings(), m => m["unk_token"] = "<unk>"), dec: new JsonObject { ["type"] = "Fuse" });
        Assert.Equal("a<unk>b", t.Decode(new[] { 1, 99, 2 }));
        var noUnk = Build(Model(new[] { "a", "b" }, Strings()), dec: new JsonObject { ["type"] = "Fuse" });
        Assert.Equal("ab", noUnk.Decode(new[] { 0, -1, 1 }));
        Assert.Equal("", noUnk.Decode(ReadOnlySpan<int>.Empty));
    }
}
