using Cas.Engine;
using Cas.Resources;

namespace Cas.SelfStudy.Tests;

public class ChunkerTests
{
    static Document Doc(string id, string text) => new(id, text, "test", Document.NoMetadata, Document.NoQuestions);

    static string Words(int n, int seed)
    {
        var rng = new DeterministicRng((ulong)seed);
        var parts = new string[n];
        for (int i = 0; i < n; i++)
            parts[i] = "w" + rng.NextInt(40) + (rng.NextInt(10) == 0 ? ".\n\n" : rng.NextInt(5) == 0 ? ",  " : " ");
        return string.Concat(parts);
    }

    [Fact]
    public void Token_windows_have_sizes_in_range_and_exact_offsets()
    {
        var tok = new WordTokenizer();
        var docs = new[] { Doc("a", Words(1500, 1)), Doc("b", Words(700, 2)), Doc("c", Words(40, 3)) };
        var ch = new Chunker(docs, new ChunkerOptions { MinSize = 50, MaxSize = 300 }, tok);
        Assert.Equal(1500 + 700 + 40, ch.TotalSize);
        for (long i = 0; i < 300; i++)
        {
            var c = ch.SampleAt(seed: 9, i);
            var loc = c.Location;
            var doc = docs.Single(d => d.Id == loc.DocumentId);
            int docIndex = Array.IndexOf(docs, doc);
            int len = loc.TokenEnd - loc.TokenStart;
            if (doc.Id == "c") Assert.Equal((0, 40), (loc.TokenStart, loc.TokenEnd)); // shorter than MinSize: whole document
            else Assert.InRange(len, 50, 300);
            Assert.Equal(ch.TokensOf(docIndex)[loc.TokenStart..loc.TokenEnd].ToArray(), c.Tokens);
            Assert.Equal(doc.Text[loc.CharStart..loc.CharEnd], c.Text);
            Assert.Equal(tok.Decode(ch.TokensOf(docIndex)[..loc.TokenStart]).Length, loc.CharStart);
        }
    }

    [Fact]
    public void Sampling_is_deterministic_in_seed_and_index()
    {
        var docs = new[] { Doc("a", Words(900, 4)), Doc("b", Words(500, 5)) };
        var opts = new ChunkerOptions { MinSize = 20, MaxSize = 200 };
        var c1 = new Chunker(docs, opts, new WordTokenizer());
        var c2 = new Chunker(docs, opts, new WordTokenizer());
        var a = c1.Sample(seed: 3, count: 50).Select(c => c.Location).ToList();
        var b = c2.Sample(seed: 3, count: 50).Select(c => c.Location).ToList();
        Assert.Equal(a, b);
        Assert.Equal(a[37], c2.SampleAt(3, 37).Location); // sample i alone equals sample i of the sequence
        Assert.Equal(a.Skip(10), c1.Sample(3, 40, firstIndex: 10).Select(c => c.Location));
        var other = c1.Sample(seed: 4, count: 50).Select(c => c.Location).ToList();
        Assert.NotEqual(a, other);
        Assert.True(a.Distinct().Count() > 45);
    }

    [Fact]
    public void Documents_are_drawn_in_proportion_to_their_token_count()
    {
        // 100, 300 and 600 tokens; an empty document is never drawn.
        var tok = new CharTokenizer();
        var docs = new[] { Doc("s", new string('a', 100)), Doc("empty", ""), Doc("m", new string('b', 300)), Doc("l", new string('c', 600)) };
        var ch = new Chunker(docs, new ChunkerOptions { MinSize = 10, MaxSize = 20 }, tok);
        var counts = new Dictionary<string, int>();
        const int n = 20000;
        for (int i = 0; i < n; i++) { var id = ch.SampleAt(1, i).Location.DocumentId; counts[id] = counts.GetValueOrDefault(id) + 1; }
        Assert.False(counts.ContainsKey("empty"));
        // Binomial standard deviation at n = 20000 is at most ~70; allow 5 sigma.
        Assert.InRange(counts["s"], 2000 - 350, 2000 + 350);
        Assert.InRange(counts["m"], 6000 - 350, 6000 + 350);
        Assert.InRange(counts["l"], 12000 - 350, 12000 + 350);
    }

    [Fact]
    public void Window_starts_and_sizes_cover_the_allowed_range()
    {
        var ch = new Chunker([Doc("d", new string('x', 1000))], new ChunkerOptions { MinSize = 100, MaxSize = 400 }, new CharTokenizer());
        var rng = new DeterministicRng(5);
        int minLen = int.MaxValue, maxLen = 0, maxEnd = 0, minStart = int.MaxValue;
        for (int i = 0; i < 5000; i++)
        {
            var l = ch.Window(0, rng).Location;
            minLen = Math.Min(minLen, l.TokenEnd - l.TokenStart); maxLen = Math.Max(maxLen, l.TokenEnd - l.TokenStart);
            minStart = Math.Min(minStart, l.TokenStart); maxEnd = Math.Max(maxEnd, l.TokenEnd);
        }
        Assert.Equal((100, 400, 0, 1000), (minLen, maxLen, minStart, maxEnd));
    }

    [Fact]
    public void Checkpointed_offsets_equal_the_prefix_decode_definition_across_blocks()
    {
        // Char tokenizer with multi-block documents (checkpoints every 256 tokens) including astral characters.
        var text = string.Concat(Enumerable.Range(0, 400).Select(i => i % 7 == 0 ? "𝄞" : "ab "));
        var tok = new CharTokenizer();
        var ch = new Chunker([Doc("d", text)], new ChunkerOptions { MinSize = 1, MaxSize = 700 }, tok);
        foreach (var (s, e) in new[] { (0, 0), (0, 256), (255, 513), (256, 512), (300, 301), (1, ch.TokensOf(0).Length) })
        {
            var c = ch.Slice(0, s, e);
            Assert.Equal(s, c.Location.CharStart); // one token per UTF-16 unit
            Assert.Equal(e, c.Location.CharEnd);
            Assert.Equal(text[s..e], c.Text);
        }
    }

    [Fact]
    public void Lossy_tokenizer_falls_back_to_decoded_prefix_lengths()
    {
        var tok = new LossyTokenizer();
        var text = "Alpha   BETA gamma\n\nDelta " + Words(600, 8);
        var ch = new Chunker([Doc("d", text)], new ChunkerOptions { MinSize = 5, MaxSize = 50 }, tok);
        var toks = ch.TokensOf(0);
        for (long i = 0; i < 40; i++)
        {
            var c = ch.SampleAt(2, i);
            var l = c.Location;
            Assert.Equal(tok.Decode(toks[..l.TokenStart]).Length, l.CharStart);
            Assert.Equal(tok.Decode(toks[..l.TokenEnd]).Length, l.CharEnd);
            Assert.Equal(tok.Decode(toks[l.TokenStart..l.TokenEnd]), c.Text);
        }
    }

    [Fact]
    public void Character_chunks_keep_surrogate_pairs_whole()
    {
        var text = string.Concat(Enumerable.Repeat("😀x", 300)); // 900 UTF-16 units
        var ch = new Chunker([Doc("e", text)], new ChunkerOptions { Unit = ChunkUnit.Characters, MinSize = 10, MaxSize = 40 });
        Assert.Equal(900, ch.TotalSize);
        for (long i = 0; i < 500; i++)
        {
            var c = ch.SampleAt(6, i);
            Assert.Null(c.Tokens);
            Assert.False(c.Location.HasTokenOffsets);
            Assert.Equal(text[c.Location.CharStart..c.Location.CharEnd], c.Text);
            Assert.False(char.IsLowSurrogate(c.Text[0]));
            Assert.False(char.IsHighSurrogate(c.Text[^1]));
            Assert.InRange(c.Text.Length, 10, 41);
        }
        var slice = ch.Slice(0, 1, 4); // starts inside the first pair, ends inside the second
        Assert.Equal((0, 5), (slice.Location.CharStart, slice.Location.CharEnd));
        Assert.Equal("😀x😀", slice.Text);
    }

    [Fact]
    public void Tiles_cover_a_document_exactly()
    {
        var tok = new WordTokenizer();
        var text = Words(1000, 12);
        var ch = new Chunker([Doc("t", text)], new ChunkerOptions { MinSize = 1, MaxSize = 128 }, tok);
        var tiles = ch.Tiles(0).ToList();
        Assert.Equal(8, tiles.Count); // 7 x 128 + 104
        Assert.Equal(text, string.Concat(tiles.Select(t => t.Text)));
        Assert.Equal(ch.TokensOf(0).ToArray(), tiles.SelectMany(t => t.Tokens!).ToArray());
    }

    [Fact]
    public void Bad_settings_give_clear_errors()
    {
        var docs = new[] { Doc("a", "x y z") };
        Assert.Contains("min", Assert.Throws<InvalidRequestException>(() => new Chunker(docs, new ChunkerOptions { MinSize = 10, MaxSize = 5 }, new CharTokenizer())).Message);
        Assert.Throws<InvalidRequestException>(() => new Chunker(docs, new ChunkerOptions { MinSize = 0 }, new CharTokenizer()));
        Assert.Contains("tokenizer", Assert.Throws<InvalidRequestException>(() => new Chunker(docs, new ChunkerOptions())).Message);
        var empty = new Chunker([Doc("e", "")], new ChunkerOptions { Unit = ChunkUnit.Characters });
        Assert.Contains("empty", Assert.Throws<InvalidRequestException>(() => empty.SampleAt(1, 0)).Message);
        var none = new Chunker([], new ChunkerOptions { Unit = ChunkUnit.Characters });
        Assert.Contains("no documents", Assert.Throws<InvalidRequestException>(() => none.SampleAt(1, 0)).Message);
    }
}
