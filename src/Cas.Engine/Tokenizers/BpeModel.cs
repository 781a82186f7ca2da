using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;

namespace Cas.Engine.Tokenizers;

/// <summary>
/// Byte-pair encoding over one pre-token, merges applied lowest rank first (leftmost on ties), as
/// Tokenizers.js and the Rust crate do. Symbols are interned strings; merges map a pair of symbols
/// to (rank, merged symbol). Results are cached per pre-token in a bounded cache.
/// </summary>
internal sealed class BpeModel
{
    readonly Dictionary<string, int> _symbolIds;
    readonly List<string> _symbols;
    readonly Dictionary<long, (int Rank, int Merged)> _merges;
    readonly Dictionary<string, int> _tokenToId;           // tokens_to_ids (added tokens included)
    readonly int[] _byteTokenIds = new int[256];            // <0xNN> ids when byte_fallback, else -1
    readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    // Look-ups by span, so that no string is made for a pre-token that is cached or in the vocabulary.
    readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheLookup;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _tokenLookup;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _symbolLookup;
    readonly char? _splitBefore;
    const int CacheCapacity = 50_000;
    const int MaxCachedLength = 256;
    const int ScratchLimit = 4096;

    public readonly string? UnkToken;
    public readonly bool ByteFallback;
    public readonly bool IgnoreMerges;
    public readonly bool FuseUnk;
    public readonly string? EndOfWordSuffix;

    /// <summary>Symbol index -> token id (or -1 when the symbol is not a vocabulary entry).</summary>
    int[] _symbolTokenId = Array.Empty<int>();

    /// <summary>Symbol index of every single UTF-16 character that is a symbol (-1 otherwise): avoids a lookup per character.</summary>
    readonly int[] _charSymbol = new int[65536];

    public BpeModel(JsonElement model, Dictionary<string, int> tokenToId)
    {
        _tokenToId = tokenToId;
        UnkToken = HfJson.Str(model, "unk_token");
        ByteFallback = HfJson.Bool(model, "byte_fallback", false);
        IgnoreMerges = HfJson.Bool(model, "ignore_merges", false);
        FuseUnk = HfJson.Bool(model, "fuse_unk", false);
        EndOfWordSuffix = HfJson.Str(model, "end_of_word_suffix");
        if (EndOfWordSuffix is { Length: 0 }) EndOfWordSuffix = null;
        if (HfJson.Str(model, "continuing_subword_prefix") is { Length: > 0 } csp)
            throw new ModelFormatException($"tokenizer.json model.continuing_subword_prefix \"{csp}\" is not supported (only an empty or null prefix is).");
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw new ModelFormatException("tokenizer.json model.dropout > 0 (BPE dropout) is not supported for inference; set it to null.");

        if (!model.TryGetProperty("merges", out var merges) || merges.ValueKind != JsonValueKind.Array)
            throw new ModelFormatException("tokenizer.json model.merges is missing or not an array; a BPE model needs its merges list.");
        int mergeCount = merges.GetArrayLength();
        _symbolIds = new Dictionary<string, int>(tokenToId.Count + mergeCount / 4, StringComparer.Ordinal);
        _symbols = new List<string>(tokenToId.Count + mergeCount / 4);
        _merges = new Dictionary<long, (int Rank, int Merged)>(mergeCount);
        foreach (var tok in tokenToId.Keys) Intern(tok);

        int rank = 0;
        foreach (var m in merges.EnumerateArray())
        {
            string a, b;
            if (m.ValueKind == JsonValueKind.String)
            {
                var s = m.GetString()!;
                int sp = s.IndexOf(' ');
                if (sp < 0) throw new ModelFormatException($"tokenizer.json model.merges[{rank}] \"{s}\" is not of the form \"a b\".");
                a = s[..sp];
                int sp2 = s.IndexOf(' ', sp + 1);
                b = sp2 < 0 ? s[(sp + 1)..] : s[(sp + 1)..sp2]; // JS split(" ", 2) keeps two parts
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                     && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
            {
                a = m[0].GetString()!;
                b = m[1].GetString()!;
            }
            else throw new ModelFormatException($"tokenizer.json model.merges[{rank}] must be \"a b\" or [\"a\", \"b\"].");
            int ia = Intern(a), ib = Intern(b), iab = Intern(a + b);
            _merges[Key(ia, ib)] = (rank, iab); // a later duplicate wins, as in Tokenizers.js's Map
            rank++;
        }

        _cacheLookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        _tokenLookup = _tokenToId.GetAlternateLookup<ReadOnlySpan<char>>();
        _symbolLookup = _symbolIds.GetAlternateLookup<ReadOnlySpan<char>>();
        _splitBefore = SafeSplitChar(merges);

        Array.Fill(_charSymbol, -1);
        for (int i = 0; i < _symbols.Count; i++)
            if (_symbols[i].Length == 1) _charSymbol[_symbols[i][0]] = i;
        RefreshTokenIds();
    }

    /// <summary>
    /// U+2581 when words may be cut before every U+2581 that follows another character without changing the
    /// result: no merge (a, b) has a ending in another character and b starting with U+2581. True of
    /// SentencePiece-style vocabularies (Llama 2), whose normalizer leaves one long word per section.
    /// </summary>
    char? SafeSplitChar(JsonElement merges)
    {
        const char x = '\u2581';
        if (IgnoreMerges || EndOfWordSuffix != null || !_tokenToId.ContainsKey(x.ToString())) return null;
        foreach (var m in merges.EnumerateArray())
        {
            string a, b;
            if (m.ValueKind == JsonValueKind.String)
            {
                var s = m.GetString()!;
                int sp = s.IndexOf(' ');
                a = s[..sp];
                int sp2 = s.IndexOf(' ', sp + 1);
                b = sp2 < 0 ? s[(sp + 1)..] : s[(sp + 1)..sp2];
            }
            else { a = m[0].GetString()!; b = m[1].GetString()!; }
            if (a.Length > 0 && b.Length > 0 && a[^1] != x && b[0] == x) return null;
        }
        return x;
    }

    /// <summary>Recomputes symbol -> id after the tokens_to_ids map changed (added tokens).</summary>
    public void RefreshTokenIds()
    {
        _symbolTokenId = new int[_symbols.Count];
        for (int i = 0; i < _symbols.Count; i++)
            _symbolTokenId[i] = _tokenToId.TryGetValue(_symbols[i], out var id) ? id : -1;
        for (int b = 0; b < 256; b++)
            _byteTokenIds[b] = ByteFallback && _tokenToId.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1;
        _cache.Clear();
    }

    int Intern(string s)
    {
        if (_symbolIds.TryGetValue(s, out var id)) return id;
        id = _symbols.Count;
        _symbols.Add(s);
        _symbolIds.Add(s, id);
        return id;
    }

    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    int UnkId => UnkToken != null && _tokenToId.TryGetValue(UnkToken, out var u) ? u : -1;

    /// <summary>
    /// Appends the ids of one pre-token and, when <paramref name="ranges"/> is given, each token's span in it
    /// (UTF-16 indices; the byte tokens of one byte-fallback character all get that character's span).
    /// Cost: O(n log n) for a word of n characters (a heap of candidate merges over a linked list of symbols).
    /// </summary>
    public void Encode(ReadOnlySpan<char> word, List<int> ids, List<(int Start, int End)>? ranges)
    {
        if (word.Length == 0) return;
        if (_splitBefore is char x)
        {
            // No merge joins a symbol ending in a non-x character with one starting with x (checked at load),
            // so cutting before each such x gives the same tokens, and the pieces are short and cacheable.
            int s = 0;
            for (int i = 1; i < word.Length; i++)
            {
                if (word[i] != x || word[i - 1] == x) continue;
                EncodeCached(word[s..i], s, ids, ranges);
                s = i;
            }
            EncodeCached(word[s..], s, ids, ranges);
            return;
        }
        EncodeCached(word, 0, ids, ranges);
    }

    void EncodeCached(ReadOnlySpan<char> word, int offset, List<int> ids, List<(int Start, int End)>? ranges)
    {
        if (!_cacheLookup.TryGetValue(word, out var entry))
        {
            // ignore_merges: a word that is a vocabulary entry is that one token (looked up after the cache,
            // which is small and hot, where the vocabulary is large).
            entry = IgnoreMerges && _tokenLookup.TryGetValue(word, out var whole) ? [whole, 0, word.Length] : EncodeUncached(word);
            if (word.Length <= MaxCachedLength)
            {
                if (_cache.Count >= CacheCapacity) _cache.Clear();
                _cache[word.ToString()] = entry;
            }
        }
        int n = entry.Length / 3;
        ids.AddRange(entry.AsSpan(0, n));
        if (ranges != null)
            for (int k = 0; k < n; k++) ranges.Add((offset + entry[n + k], offset + entry[2 * n + k]));
    }

    // One symbol of the word being merged.
    struct Sym
    {
        public int Symbol;   // interned symbol index, or -1 for a character outside every table
        public int Start;    // UTF-16 offset of its first character in the pre-token
        public int End;      // offset past its last character
        public int Prev, Next;
        public bool Alive;
    }

    [ThreadStatic] static Sym[]? t_syms;
    [ThreadStatic] static PriorityQueue<(int Pos, int Left, int Right, int Merged), long>? t_heap;
    [ThreadStatic] static List<int>? t_result;

    /// <summary>The tokens of a word as one array: ids, then start offsets, then end offsets.</summary>
    int[] EncodeUncached(ReadOnlySpan<char> word)
    {
        // Split into code points (a lone surrogate is its own character).
        // Scratch is kept per thread for ordinary words; a huge word gets its own, freed afterwards.
        bool huge = word.Length > ScratchLimit;
        var arr = huge ? new Sym[word.Length] : t_syms ??= new Sym[ScratchLimit];
        int n = 0;
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            arr[n++] = new Sym { Start = i, End = i + len, Alive = true };
            i += len;
        }
        for (int k = 0; k < n; k++)
        {
            if (arr[k].End - arr[k].Start == 1 && (k < n - 1 || EndOfWordSuffix == null))
                arr[k].Symbol = _charSymbol[word[arr[k].Start]];
            else
            {
                var piece = word[arr[k].Start..arr[k].End];
                int sid;
                if (k == n - 1 && EndOfWordSuffix != null)
                    sid = _symbolIds.TryGetValue(string.Concat(piece, EndOfWordSuffix), out var s1) ? s1 : -1;
                else sid = _symbolLookup.TryGetValue(piece, out var s2) ? s2 : -1;
                arr[k].Symbol = sid;
            }
            arr[k].Prev = k - 1;
            arr[k].Next = k + 1 < n ? k + 1 : -1;
        }

        if (n > 1)
        {
            // Min-heap on (rank, position of the left symbol): lowest rank first, leftmost on ties.
            var heap = huge ? new() : t_heap ??= new();
            heap.Clear();
            for (int k = 0; k + 1 < n; k++) Push(heap, arr, k);
            while (heap.TryDequeue(out var top, out _))
            {
                ref var left = ref arr[top.Pos];
                if (!left.Alive || left.Symbol != top.Left || left.Next < 0) continue;
                ref var right = ref arr[left.Next];
                if (right.Symbol != top.Right) continue;
                left.Symbol = top.Merged;
                left.End = right.End;
                right.Alive = false;
                left.Next = right.Next;
                if (left.Next >= 0) arr[left.Next].Prev = top.Pos;
                if (left.Prev >= 0) Push(heap, arr, left.Prev);
                if (left.Next >= 0) Push(heap, arr, top.Pos);
            }
        }

        var result = huge ? new() : t_result ??= new();
        result.Clear(); // triples (id, start, end)
        int unk = UnkId;
        for (int k = 0; k >= 0 && k < n; k = arr[k].Next)
        {
            int sym = arr[k].Symbol, st = arr[k].Start, en = arr[k].End;
            int id = sym >= 0 ? _symbolTokenId[sym] : -1;
            if (id >= 0) { result.Add(id); result.Add(st); result.Add(en); continue; }
            string piece = sym >= 0 ? _symbols[sym] : string.Concat(word[st..en], arr[k].Next < 0 && EndOfWordSuffix != null ? EndOfWordSuffix : "");
            if (ByteFallback)
            {
                var bytes = Encoding.UTF8.GetBytes(piece);
                bool all = true;
                foreach (var b in bytes) if (_byteTokenIds[b] < 0) { all = false; break; }
                if (all)
                {
                    foreach (var b in bytes) { result.Add(_byteTokenIds[b]); result.Add(st); result.Add(en); }
                    continue;
                }
            }
            if (unk >= 0) { result.Add(unk); result.Add(st); result.Add(en); }
        }
        int count = result.Count / 3;
        var entry = new int[count * 3];
        for (int t = 0; t < count; t++)
        {
            entry[t] = result[3 * t];
            entry[count + t] = result[3 * t + 1];
            entry[2 * count + t] = result[3 * t + 2];
        }
        return entry;
    }

    void Push(PriorityQueue<(int Pos, int Left, int Right, int Merged), long> heap, Sym[] arr, int pos)
    {
        int l = arr[pos].Symbol, r = arr[arr[pos].Next].Symbol;
        if (l < 0 || r < 0) return;
        if (_merges.TryGetValue(Key(l, r), out var m))
            heap.Enqueue((pos, l, r, m.Merged), ((long)m.Rank << 32) | (uint)pos);
    }
}
