using System.Text;
using System.Text.Json;

namespace Cas.Engine.Tokenizers;

/// <summary>One entry of tokenizer.json "added_tokens".</summary>
public sealed record AddedToken(int Id, string Content, bool Special, bool LStrip, bool RStrip, bool SingleWord, bool Normalized);

/// <summary>A token's span of the encoded text: UTF-16 indices [Start, End).</summary>
public readonly record struct TokenSpan(int Start, int End)
{
    public int Length => End - Start;
}

/// <summary>
/// A Hugging Face tokenizer.json tokenizer (BPE model), giving the ids of HF's Rust tokenizers library
/// (what the models were trained with; checked at test time, see README.md beside this file):
/// added tokens are split out of the raw text first (longest match), the rest is normalized,
/// pre-tokenized and byte-pair encoded. Encode never adds BOS/EOS; it can also give each token's
/// span of the input. Decode is the decoder chain
/// without clean-up of tokenization spaces, so Decode(Encode(x)) == x for byte-level tokenizers
/// without a normalizer.
/// </summary>
public sealed class HfTokenizer : ITokenizer
{
    readonly HfNormalizer? _normalizer;
    readonly HfPreTokenizer? _preTokenizer;
    readonly HfDecoder? _decoder;
    readonly BpeModel _model;
    readonly Dictionary<string, int> _tokenToId;
    readonly string?[] _idToToken;
    readonly List<AddedToken> _added = new();
    readonly Dictionary<string, int> _addedIdByContent = new(StringComparer.Ordinal);
    readonly AddedTokenSplitter _splitUnnormalized;
    readonly AddedTokenSplitter _splitNormalized;

    public int VocabSize => _idToToken.Length;
    public int? BosId { get; }
    public int? EosId { get; }
    /// <summary>The special tokens the TemplateProcessing post-processor puts before a single sequence (e.g. Llama 3's &lt;|begin_of_text|&gt;).</summary>
    public IReadOnlyList<int> StartTokens { get; }

    /// <summary>The added tokens, in file order.</summary>
    public IReadOnlyList<AddedToken> AddedTokens => _added;

    /// <summary>Loads tokenizer.json; a tokenizer_config.json beside it (if any) supplies bos_token/eos_token.</summary>
    public static HfTokenizer FromFile(string tokenizerJsonPath)
    {
        if (!File.Exists(tokenizerJsonPath))
            throw new ModelFormatException($"tokenizer.json not found at {tokenizerJsonPath}.");
        byte[] json;
        try { json = File.ReadAllBytes(tokenizerJsonPath); }
        catch (IOException e) { throw new ModelFormatException($"cannot read {tokenizerJsonPath}: {e.Message}", e); }
        string? config = null;
        var configPath = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(tokenizerJsonPath))!, "tokenizer_config.json");
        if (File.Exists(configPath)) config = File.ReadAllText(configPath);
        int bom = json.Length >= 3 && json[0] == 0xEF && json[1] == 0xBB && json[2] == 0xBF ? 3 : 0;
        try { return FromJson(json.AsMemory(bom), config); }
        catch (ModelFormatException e) { throw new ModelFormatException($"{tokenizerJsonPath}: {e.Message}", e); }
    }

    /// <summary>Builds a tokenizer from tokenizer.json text and, optionally, tokenizer_config.json text.</summary>
    public static HfTokenizer FromJson(string tokenizerJson, string? tokenizerConfigJson = null) =>
        FromJson(System.Text.Encoding.UTF8.GetBytes(tokenizerJson), tokenizerConfigJson);

    /// <summary>Builds a tokenizer from tokenizer.json UTF-8 bytes and, optionally, tokenizer_config.json text.</summary>
    public static HfTokenizer FromJson(ReadOnlyMemory<byte> tokenizerJsonUtf8, string? tokenizerConfigJson = null)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(tokenizerJsonUtf8, new JsonDocumentOptions { MaxDepth = 256 }); }
        catch (JsonException e) { throw new ModelFormatException($"tokenizer.json is not valid JSON: {e.Message}", e); }
        JsonDocument? config = null;
        if (tokenizerConfigJson != null)
        {
            try { config = JsonDocument.Parse(tokenizerConfigJson); }
            catch (JsonException e) { throw new ModelFormatException($"tokenizer_config.json is not valid JSON: {e.Message}", e); }
        }
        using (doc)
        using (config)
            return new HfTokenizer(doc.RootElement, config?.RootElement);
    }

    HfTokenizer(JsonElement root, JsonElement? config)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException("tokenizer.json must be a JSON object.");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException("tokenizer.json has no \"model\" object.");
        string modelType = HfJson.Str(model, "type")
            ?? (model.TryGetProperty("merges", out _) ? "BPE" : throw new ModelFormatException("tokenizer.json model has no \"type\"; supported: BPE."));
        if (modelType != "BPE")
            throw new ModelFormatException($"tokenizer.json model.type \"{modelType}\" is not supported; supported: BPE.");
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException("tokenizer.json model.vocab is missing or not an object of token -> id.");

        _tokenToId = new Dictionary<string, int>(StringComparer.Ordinal);
        int maxId = -1;
        foreach (var p in vocab.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                throw new ModelFormatException($"tokenizer.json model.vocab[\"{p.Name}\"] is not a non-negative integer id.");
            _tokenToId[p.Name] = id;
            if (id > maxId) maxId = id;
        }

        if (root.TryGetProperty("added_tokens", out var addedArr) && addedArr.ValueKind == JsonValueKind.Array)
        {
            int k = 0;
            foreach (var a in addedArr.EnumerateArray())
            {
                if (!a.TryGetProperty("id", out var idEl) || !idEl.TryGetInt32(out int id) || id < 0 || HfJson.Str(a, "content") is not { } content)
                    throw new ModelFormatException($"tokenizer.json added_tokens[{k}] needs an integer \"id\" and a string \"content\".");
                bool special = HfJson.Bool(a, "special", false);
                _added.Add(new AddedToken(id, content, special, HfJson.Bool(a, "lstrip", false), HfJson.Bool(a, "rstrip", false),
                    HfJson.Bool(a, "single_word", false), HfJson.Bool(a, "normalized", !special)));
                if (id > maxId) maxId = id;
                k++;
            }
        }

        _idToToken = new string?[maxId + 1];
        foreach (var (tok, id) in _tokenToId) _idToToken[id] = tok;

        _normalizer = root.TryGetProperty("normalizer", out var norm) ? HfNormalizer.Create(norm, "normalizer") : null;
        _preTokenizer = root.TryGetProperty("pre_tokenizer", out var pre) ? HfPreTokenizer.Create(pre, "pre_tokenizer") : null;

        // Tokenizers.js: added tokens join tokens_to_ids and the id -> token table, overriding the vocab.
        var unnormalized = new List<(string, AddedToken)>();
        var normalized = new List<(string, AddedToken)>();
        foreach (var t in _added)
        {
            _tokenToId[t.Content] = t.Id;
            _idToToken[t.Id] = t.Content;
            _addedIdByContent.TryAdd(t.Content, t.Id);
            if (t.Normalized && _normalizer != null)
            {
                string nc = _normalizer.Normalize(t.Content);
                normalized.Add((nc, t));
            }
            else unnormalized.Add((t.Content, t));
        }
        _splitUnnormalized = new AddedTokenSplitter(unnormalized);
        _splitNormalized = new AddedTokenSplitter(normalized);

        _model = new BpeModel(model, _tokenToId);

        var addedContents = new HashSet<string>(_added.Select(a => a.Content), StringComparer.Ordinal);
        _decoder = root.TryGetProperty("decoder", out var dec) ? HfDecoder.Create(dec, "decoder", addedContents) : null;

        // tokenizer_config.json decides when it names the token (null there means "none"); otherwise
        // the post-processor template, then well-known token names.
        BosId = SpecialFromConfig(config, "bos_token", out var bos) ? bos
            : TemplateBos(root) ?? FirstKnown("<|begin_of_text|>", "<s>", "<bos>");
        EosId = SpecialFromConfig(config, "eos_token", out var eos) ? eos
            : FirstKnown("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>");
        StartTokens = TemplateStart(root);
    }

    int? FirstKnown(params string[] contents)
    {
        foreach (var c in contents) if (_tokenToId.TryGetValue(c, out var id)) return id;
        return null;
    }

    bool SpecialFromConfig(JsonElement? config, string name, out int? id)
    {
        id = null;
        if (config is not { ValueKind: JsonValueKind.Object } c || !c.TryGetProperty(name, out var v)) return false;
        string? content = v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object => HfJson.Str(v, "content"),
            _ => null,
        };
        if (content != null && _tokenToId.TryGetValue(content, out var found)) id = found;
        return true;
    }

    // The special tokens before the first sequence in a TemplateProcessing post-processor's "single" template.
    int[] TemplateStart(JsonElement root)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || pp.ValueKind != JsonValueKind.Object) return [];
        if (HfJson.Str(pp, "type") != "TemplateProcessing" || !pp.TryGetProperty("single", out var single)
            || single.ValueKind != JsonValueKind.Array) return [];
        var ids = new List<int>();
        foreach (var item in single.EnumerateArray())
        {
            if (!item.TryGetProperty("SpecialToken", out var st) || HfJson.Str(st, "id") is not { } tok) break;
            if (_tokenToId.TryGetValue(tok, out var id)) ids.Add(id);
        }
        return ids.ToArray();
    }

    // A TemplateProcessing post-processor whose "single" template starts with a special token names the BOS.
    int? TemplateBos(JsonElement root)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || pp.ValueKind != JsonValueKind.Object) return null;
        if (HfJson.Str(pp, "type") != "TemplateProcessing" || !pp.TryGetProperty("single", out var single)
            || single.ValueKind != JsonValueKind.Array || single.GetArrayLength() == 0) return null;
        var first = single[0];
        if (!first.TryGetProperty("SpecialToken", out var st) || HfJson.Str(st, "id") is not { } tok) return null;
        return _tokenToId.TryGetValue(tok, out var id) ? id : null;
    }

    public int? SpecialTokenId(string content) => _addedIdByContent.TryGetValue(content, out var id) ? id : null;

    /// <summary>The vocabulary id of a token string (added tokens included), or null.</summary>
    public int? TokenToId(string token) => _tokenToId.TryGetValue(token, out var id) ? id : null;

    /// <summary>The token string of an id, or null when the id is unused.</summary>
    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        EncodeCore(text, output, null);
        return output.ToArray();
    }

    /// <summary>
    /// Encodes and gives each token's span of <paramref name="text"/> (UTF-16 indices, end exclusive).
    /// Tokens that share a character (the byte tokens of one emoji) each get that character's span;
    /// characters a normalizer inserted (Llama 2's leading "▁") have an empty span where they were inserted;
    /// after NFC/NFKC a token gets the span of the input characters that composed into it.
    /// </summary>
    public int[] Encode(string text, out TokenSpan[] offsets)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        var spans = new List<TokenSpan>(text.Length / 3 + 4);
        EncodeCore(text, output, spans);
        offsets = spans.ToArray();
        return output.ToArray();
    }

    /// <summary>The number of tokens Encode would give (no arrays kept).</summary>
    public int CountTokens(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = t_countBuffer ??= new List<int>();
        output.Clear();
        EncodeCore(text, output, null);
        int n = output.Count;
        if (output.Capacity > 1 << 20) t_countBuffer = null;
        return n;
    }

    [ThreadStatic] static List<int>? t_countBuffer;
    [ThreadStatic] static PreTokenBuffer? t_buffer;
    [ThreadStatic] static List<PreToken>? t_pieces;
    [ThreadStatic] static List<(int Start, int End)>? t_ranges;

    /// <summary>
    /// The whole pipeline: added tokens are cut out of the raw text (longest match), each other section is
    /// normalized, cut again around normalized added tokens, pre-tokenized into pieces of one buffer and
    /// byte-pair encoded piece by piece. With offsets, every step keeps where its characters came from.
    /// </summary>
    void EncodeCore(string text, List<int> output, List<TokenSpan>? offsets)
    {
        text = RustText.ReplaceLoneSurrogates(text); // one character for one: offsets are unchanged
        var sections = _splitUnnormalized.Split(text, 0, text.Length);
        ApplyStrips(text, sections);
        var map = offsets != null ? new List<(int S, int E)>() : null;
        var buf = t_buffer ??= new PreTokenBuffer();
        var pieces = t_pieces ??= new List<PreToken>();
        var ranges = offsets != null ? (t_ranges ??= new()) : null;
        for (int i = 0; i < sections.Count; i++)
        {
            var (secStart, secEnd, secToken) = sections[i];
            if (secEnd <= secStart) continue;
            if (secToken != null)
            {
                output.Add(secToken.Id);
                offsets?.Add(new TokenSpan(secStart, secEnd));
                continue;
            }
            string section = secStart == 0 && secEnd == text.Length ? text : text.Substring(secStart, secEnd - secStart);
            map?.Clear();
            string normalized = _normalizer == null ? section
                : map != null ? _normalizer.Normalize(section, map) : _normalizer.Normalize(section);
            if (normalized.Length == 0) continue;
            var subs = _splitNormalized.Split(normalized, 0, normalized.Length);
            ApplyStrips(normalized, subs);
            foreach (var (subStart, subEnd, subToken) in subs)
            {
                if (subEnd <= subStart) continue;
                if (subToken != null)
                {
                    output.Add(subToken.Id);
                    offsets?.Add(ToOriginal(subStart, subEnd, map, secStart, section.Length));
                    continue;
                }
                buf.Length = 0;
                pieces.Clear();
                var root = buf.Add(normalized.AsSpan(subStart, subEnd - subStart), subStart, subEnd);
                if (_preTokenizer != null) _preTokenizer.Split(buf, root, i, pieces); else pieces.Add(root);
                int start = output.Count;
                foreach (var p in pieces)
                {
                    if (ranges == null) { _model.Encode(buf.Text(p), output, null); continue; }
                    ranges.Clear();
                    _model.Encode(buf.Text(p), output, ranges);
                    var cursor = new Utf8Cursor(p.Kind == PieceKind.Bytes ? buf.Chars.AsSpan(p.Origin, p.End - p.Start) : default);
                    foreach (var (a, b) in ranges)
                    {
                        int ns, ne;
                        switch (p.Kind)
                        {
                            case PieceKind.Chars:
                                ns = p.Start + Math.Max(0, a - p.Lead);
                                ne = p.Start + Math.Max(0, b - p.Lead);
                                break;
                            case PieceKind.Bytes:
                                ns = p.Start + cursor.CharOfByte(a, out _);
                                ne = p.Start + cursor.CharOfByte(b - 1, out int units) + units;
                                break;
                            default:
                                ns = p.Start;
                                ne = p.End;
                                break;
                        }
                        offsets!.Add(ToOriginal(ns, ne, map, secStart, section.Length));
                    }
                }
                if (_model.FuseUnk) FuseUnknowns(output, offsets, start);
            }
        }
        // Keep the per-thread scratch of ordinary texts; let a huge text's go.
        if (buf.Chars.Length > 1 << 20) t_buffer = null;
        if (pieces.Capacity > 1 << 16) t_pieces = null;
        if (ranges is { Capacity: > 1 << 16 }) t_ranges = null;
    }

    /// <summary>A normalized span of a section as a span of the input text.</summary>
    static TokenSpan ToOriginal(int ns, int ne, List<(int S, int E)>? map, int sectionStart, int sectionLength)
    {
        if (map == null || map.Count == 0) return new TokenSpan(sectionStart + ns, sectionStart + ne);
        int s, e;
        if (ne > ns) { s = map[ns].S; e = map[ne - 1].E; }
        else if (ns < map.Count) s = e = map[ns].S;
        else s = e = sectionLength;
        if (e < s) e = s;
        return new TokenSpan(sectionStart + s, sectionStart + e);
    }

    /// <summary>Maps UTF-8 byte offsets of a text to the index of the UTF-16 character holding them, moving forward.</summary>
    ref struct Utf8Cursor(ReadOnlySpan<char> text)
    {
        readonly ReadOnlySpan<char> _text = text;
        int _char, _byte; // _byte = first byte of character _char

        /// <summary>The index of the character holding byte b, and its UTF-16 length.</summary>
        public int CharOfByte(int b, out int units)
        {
            units = 1;
            if (b < _byte) { _char = 0; _byte = 0; }
            while (_char < _text.Length)
            {
                int len = RustText.CodePointAt(_text, _char, out units) switch
                {
                    < 0x80 => 1, < 0x800 => 2, < 0x10000 => 3, _ => 4, // a lone surrogate is written as U+FFFD: 3 bytes
                };
                if (b < _byte + len) return _char;
                _byte += len;
                _char += units;
            }
            return _text.Length == 0 ? 0 : _text.Length - 1;
        }
    }

    /// <summary>The pre-tokens of a text holding no added token: normalizer, then pre-tokenizer (for tests and diagnostics).</summary>
    internal List<string> PreTokenize(string text, int sectionIndex = 0)
    {
        string normalized = _normalizer != null ? _normalizer.Normalize(text) : text;
        var buf = new PreTokenBuffer();
        var pieces = new List<PreToken>();
        var root = buf.Add(normalized, 0, normalized.Length);
        if (_preTokenizer != null) _preTokenizer.Split(buf, root, sectionIndex, pieces); else pieces.Add(root);
        return pieces.Select(p => buf.Text(p).ToString()).ToList();
    }

    // lstrip takes the whitespace before an added token into it, rstrip the whitespace after it
    // (char::is_whitespace, as the Rust crate).
    void ApplyStrips(string text, List<(int Start, int End, AddedToken? Token)> sections)
    {
        for (int i = 0; i < sections.Count; i++)
        {
            if (sections[i].Token is not { } t) continue;
            if (t.LStrip && i > 0 && sections[i - 1].Token == null)
            {
                var (s, e, _) = sections[i - 1];
                int ne = e;
                while (ne > s && RustText.IsWhiteSpace(text[ne - 1])) ne--;
                sections[i - 1] = (s, ne, null);
                sections[i] = (ne, sections[i].End, t);
            }
            if (t.RStrip && i + 1 < sections.Count && sections[i + 1].Token == null)
            {
                var (s, e, _) = sections[i + 1];
                int ns = s;
                while (ns < e && RustText.IsWhiteSpace(text[ns])) ns++;
                sections[i + 1] = (ns, e, null);
                sections[i] = (sections[i].Start, ns, t);
            }
        }
    }

    void FuseUnknowns(List<int> ids, List<TokenSpan>? offsets, int start)
    {
        if (_model.UnkToken == null || !_tokenToId.TryGetValue(_model.UnkToken, out int unk)) return;
        int w = start;
        for (int r = start; r < ids.Count; r++)
        {
            if (ids[r] == unk && w > start && ids[w - 1] == unk)
            {
                if (offsets != null) offsets[w - 1] = new TokenSpan(offsets[w - 1].Start, offsets[r].End);
                continue;
            }
            if (offsets != null) offsets[w] = offsets[r];
            ids[w++] = ids[r];
        }
        ids.RemoveRange(w, ids.Count - w);
        offsets?.RemoveRange(w, offsets.Count - w);
    }

    public string Decode(ReadOnlySpan<int> ids) => Decode(ids, holdTail: false);

    /// <summary>
    /// Decodes ids that may be followed by more (streaming): a character whose UTF-8 bytes are not all
    /// there yet is held back instead of being emitted as U+FFFD, so DecodePrefix(ids[..k]) is a prefix of
    /// Decode(ids) for byte-level and byte-fallback tokenizers.
    /// </summary>
    public string DecodePrefix(ReadOnlySpan<int> ids) => Decode(ids, holdTail: true);

    string Decode(ReadOnlySpan<int> ids, bool holdTail)
    {
        var tokens = new List<string>(ids.Length);
        foreach (int id in ids)
        {
            string? t = id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;
            t ??= _model.UnkToken;
            if (t != null) tokens.Add(t);
        }
        string decoded = _decoder != null ? string.Concat(_decoder.DecodeChain(tokens, holdTail)) : string.Join(' ', tokens);
        if (_decoder != null && _model.EndOfWordSuffix != null) decoded = decoded.Replace(_model.EndOfWordSuffix, " ", StringComparison.Ordinal);
        return decoded;
    }
}

/// <summary>Splits text around added-token contents, longest match first, scanning left to right (Tokenizers.js DictionarySplitter).</summary>
internal sealed class AddedTokenSplitter
{
    sealed class Node
    {
        public Dictionary<char, Node>? Children;
        public string? End;
        public AddedToken? Token;
    }

    readonly Node _root = new();
    readonly bool _empty;
    readonly System.Buffers.SearchValues<char> _firsts;

    public AddedTokenSplitter(IEnumerable<(string Text, AddedToken Token)> words)
    {
        _empty = true;
        foreach (var (w, token) in words)
        {
            if (w.Length == 0) continue;
            var node = _root;
            foreach (char c in w)
            {
                node.Children ??= new Dictionary<char, Node>();
                if (!node.Children.TryGetValue(c, out var next)) node.Children[c] = next = new Node();
                node = next;
            }
            node.End = w;
            node.Token = token;
            _empty = false;
        }
        _firsts = System.Buffers.SearchValues.Create(_root.Children?.Keys.ToArray() ?? []);
    }

    /// <summary>Cuts text[start..end) into (start, end, token) sections; token is null for text between added tokens.</summary>
    public List<(int Start, int End, AddedToken? Token)> Split(string text, int from, int to)
    {
        var result = new List<(int, int, AddedToken?)>();
        if (_empty) { result.Add((from, to, null)); return result; }
        int start = from, i = from;
        var rootChildren = _root.Children!;
        while (i < to)
        {
            // Jump to the next character that starts some added token (vectorized): most text holds none.
            int skip = text.AsSpan(i, to - i).IndexOfAny(_firsts);
            if (skip < 0) break;
            i += skip;
            Node? match = null;
            int matchEnd = 0;
            if (rootChildren.TryGetValue(text[i], out var node))
            {
                int j = i;
                while (true)
                {
                    if (node.End != null) { match = node; matchEnd = j + 1; }
                    j++;
                    if (j >= to || node.Children == null || !node.Children.TryGetValue(text[j], out node)) break;
                }
            }
            if (match != null)
            {
                if (i > start) result.Add((start, i, null));
                result.Add((i, matchEnd, match.Token));
                i = matchEnd;
                start = i;
            }
            else i++;
        }
        if (start < to) result.Add((start, to, null));
        return result;
    }
}
