using System.Text;
using System.Text.Json;

namespace Cas.Engine.Tokenizers;

/// <summary>Reads the small pieces of tokenizer.json shared by normalizers, pre-tokenizers and decoders.</summary>
internal static class HfJson
{
    public static string Type(JsonElement e, string where)
    {
        if (e.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException($"tokenizer.json {where} must be an object with a \"type\" field (found {e.ValueKind}).");
        if (!e.TryGetProperty("type", out var t) || t.ValueKind != JsonValueKind.String)
            throw new ModelFormatException($"tokenizer.json {where} has no \"type\" string field.");
        return t.GetString()!;
    }

    public static string? Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static bool Bool(JsonElement e, string name, bool fallback) =>
        e.TryGetProperty(name, out var v) ? v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => fallback,
        } : fallback;

    public static int Int(JsonElement e, string name, int fallback) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i) ? i : fallback;

    /// <summary>A {"String": s} or {"Regex": r} pattern, as a matcher.</summary>
    public static HfPattern Pattern(JsonElement e, string where)
    {
        if (!e.TryGetProperty("pattern", out var p) || p.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException($"tokenizer.json {where}.pattern is missing; expected {{\"String\": ...}} or {{\"Regex\": ...}}.");
        if (Str(p, "String") is { } s) return new HfPattern(s, null);
        if (Str(p, "Regex") is { } r) return new HfPattern(null, new CodePointRegex(PatternTranslator.Translate(r)));
        throw new ModelFormatException($"tokenizer.json {where}.pattern must hold \"String\" or \"Regex\".");
    }
}

/// <summary>A literal string or a translated regex, used by Split and Replace components.</summary>
internal sealed class HfPattern
{
    readonly string? _literal;
    readonly CodePointRegex? _regex;
    CodePointRegex? _literalRegex; // a literal pattern with a "$" substitution in its content

    public HfPattern(string? literal, CodePointRegex? regex)
    {
        _literal = literal;
        _regex = regex ?? (literal is { Length: 0 } ? new CodePointRegex("") : null);
    }

    public void Matches(string text, List<(int Start, int Length)> into)
    {
        if (_regex != null) { _regex.Matches(text, into); return; }
        into.Clear();
        string lit = _literal!;
        for (int i = text.IndexOf(lit, StringComparison.Ordinal); i >= 0; i = text.IndexOf(lit, i + lit.Length, StringComparison.Ordinal))
            into.Add((i, lit.Length));
    }

    /// <summary>JavaScript replaceAll(pattern, content), including $&amp; / $$ in content.</summary>
    public string ReplaceAll(string text, string content)
    {
        if (_regex == null && content.IndexOf('$') < 0) return text.Replace(_literal!, content, StringComparison.Ordinal);
        if (_regex != null) return _regex.Replace(text, content);
        _literalRegex ??= new CodePointRegex(PatternTranslator.Literal(_literal!));
        return _literalRegex.Replace(text, content);
    }
}

// ---------------------------------------------------------------- normalizers

internal abstract class HfNormalizer
{
    public abstract string Normalize(string text);

    public static HfNormalizer? Create(JsonElement e, string where)
    {
        if (e.ValueKind == JsonValueKind.Null) return null;
        string type = HfJson.Type(e, where);
        switch (type)
        {
            case "NFC": return new UnicodeNorm(NormalForm.NFC);
            case "NFD": return new UnicodeNorm(NormalForm.NFD);
            case "NFKC": return new UnicodeNorm(NormalForm.NFKC);
            case "NFKD": return new UnicodeNorm(NormalForm.NFKD);
            case "Lowercase": return new Lower();
            case "Prepend": return new Prepend(HfJson.Str(e, "prepend") ?? "");
            case "Replace": return new Replace(HfJson.Pattern(e, where), HfJson.Str(e, "content") ?? "");
            case "Strip": return new Strip(HfJson.Bool(e, "strip_left", false), HfJson.Bool(e, "strip_right", false));
            case "StripAccents": return new StripAccents();
            case "Sequence":
            {
                var list = new List<HfNormalizer>();
                if (e.TryGetProperty("normalizers", out var arr) && arr.ValueKind == JsonValueKind.Array)
                {
                    int k = 0;
                    foreach (var item in arr.EnumerateArray())
                        if (Create(item, $"{where}.normalizers[{k++}]") is { } n) list.Add(n);
                }
                return new Sequence(list);
            }
            default:
                throw new ModelFormatException(
                    $"tokenizer.json {where}.type \"{type}\" is not supported; supported normalizers: " +
                    "NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, StripAccents, Sequence.");
        }
    }

    sealed class UnicodeNorm(NormalForm form) : HfNormalizer
    {
        public override string Normalize(string text) => UnicodeNormalizer.Normalize(text, form);
    }

    sealed class Lower : HfNormalizer
    {
        public override string Normalize(string text) => JsText.ToLower(text);
    }

    sealed class Prepend(string prefix) : HfNormalizer
    {
        public override string Normalize(string text) => prefix + text;
    }

    sealed class Replace(HfPattern pattern, string content) : HfNormalizer
    {
        public override string Normalize(string text) => pattern.ReplaceAll(text, content);
    }

    sealed class Strip(bool left, bool right) : HfNormalizer
    {
        public override string Normalize(string text)
        {
            if (left) text = JsText.TrimStart(text);
            if (right) text = JsText.TrimEnd(text);
            return text;
        }
    }

    sealed class StripAccents : HfNormalizer
    {
        public override string Normalize(string text)
        {
            var sb = new StringBuilder(text.Length);
            for (int i = 0; i < text.Length;)
            {
                if (!Rune.TryGetRuneAt(text, i, out var r)) { sb.Append(text[i++]); continue; }
                var cat = Rune.GetUnicodeCategory(r);
                if (cat is not (System.Globalization.UnicodeCategory.NonSpacingMark or System.Globalization.UnicodeCategory.SpacingCombiningMark
                    or System.Globalization.UnicodeCategory.EnclosingMark))
                    sb.Append(text, i, r.Utf16SequenceLength);
                i += r.Utf16SequenceLength;
            }
            return sb.ToString();
        }
    }

    sealed class Sequence(List<HfNormalizer> items) : HfNormalizer
    {
        public override string Normalize(string text)
        {
            foreach (var n in items) text = n.Normalize(text);
            return text;
        }
    }
}

// ---------------------------------------------------------------- pre-tokenizers

internal abstract class HfPreTokenizer
{
    /// <summary>Splits one piece of text, appending the resulting pre-tokens.</summary>
    public abstract void Split(string text, int sectionIndex, List<string> output);

    public static HfPreTokenizer? Create(JsonElement e, string where)
    {
        if (e.ValueKind == JsonValueKind.Null) return null;
        string type = HfJson.Type(e, where);
        switch (type)
        {
            case "Split":
                return new SplitPre(HfJson.Pattern(e, where), ParseBehavior(HfJson.Str(e, "behavior"), where), HfJson.Bool(e, "invert", false));
            case "ByteLevel":
                return new ByteLevelPre(HfJson.Bool(e, "add_prefix_space", false), HfJson.Bool(e, "use_regex", true));
            case "Digits":
                return new DigitsPre(HfJson.Bool(e, "individual_digits", false));
            case "Metaspace":
            {
                string replacement = HfJson.Str(e, "replacement") ?? "\u2581";
                string scheme = HfJson.Str(e, "prepend_scheme")
                    ?? (e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False ? "never" : "always");
                if (scheme is not ("first" or "always" or "never"))
                    throw new ModelFormatException($"tokenizer.json {where}.prepend_scheme \"{scheme}\" is not one of first, always, never.");
                return new MetaspacePre(replacement, scheme, HfJson.Bool(e, "split", true));
            }
            case "Whitespace":
                return new RegexPre(new CodePointRegex("[A-Za-z0-9_]+|[^A-Za-z0-9_" + PatternTranslator.JsWhiteSpaceBody + "]+"));
            case "WhitespaceSplit":
                return new RegexPre(new CodePointRegex("[^" + PatternTranslator.JsWhiteSpaceBody + "]+"));
            case "Replace":
                return new ReplacePre(HfJson.Pattern(e, where), HfJson.Str(e, "content") ?? "");
            case "Sequence":
            {
                var list = new List<HfPreTokenizer>();
                if (e.TryGetProperty("pretokenizers", out var arr) && arr.ValueKind == JsonValueKind.Array)
                {
                    int k = 0;
                    foreach (var item in arr.EnumerateArray())
                        if (Create(item, $"{where}.pretokenizers[{k++}]") is { } p) list.Add(p);
                }
                return new SequencePre(list);
            }
            default:
                throw new ModelFormatException(
                    $"tokenizer.json {where}.type \"{type}\" is not supported; supported pre-tokenizers: " +
                    "Split, ByteLevel, Digits, Metaspace, Whitespace, WhitespaceSplit, Replace, Sequence.");
        }
    }

    internal enum Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous }

    static Behavior ParseBehavior(string? s, string where) => s switch
    {
        null or "Isolated" => Behavior.Isolated,
        "Removed" => Behavior.Removed,
        "MergedWithPrevious" => Behavior.MergedWithPrevious,
        "MergedWithNext" => Behavior.MergedWithNext,
        "Contiguous" => Behavior.Contiguous,
        _ => throw new ModelFormatException(
            $"tokenizer.json {where}.behavior \"{s}\" is not supported; supported: Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous."),
    };

    /// <summary>
    /// Split semantics of the Rust tokenizers crate: the text is cut into match / non-match segments
    /// (flags flipped when inverted), then the behaviour decides what is kept and what is merged.
    /// For Isolated and Removed without invert this is exactly what Tokenizers.js does.
    /// </summary>
    sealed class SplitPre(HfPattern pattern, Behavior behavior, bool invert) : HfPreTokenizer
    {
        [ThreadStatic] static List<(int Start, int Length)>? t_matches;
        [ThreadStatic] static List<(int Start, int End, bool Match)>? t_segments;

        public override void Split(string text, int sectionIndex, List<string> output)
        {
            var matches = t_matches ??= new();
            var segs = t_segments ??= new();
            pattern.Matches(text, matches);
            segs.Clear();
            int prev = 0;
            foreach (var (s, l) in matches)
            {
                if (prev < s) segs.Add((prev, s, invert));
                segs.Add((s, s + l, !invert));
                prev = s + l;
            }
            if (prev < text.Length) segs.Add((prev, text.Length, invert));

            switch (behavior)
            {
                case Behavior.Isolated:
                    foreach (var (s, e, _) in segs) Emit(text, s, e, output);
                    break;
                case Behavior.Removed:
                    foreach (var (s, e, m) in segs) if (!m) Emit(text, s, e, output);
                    break;
                case Behavior.MergedWithPrevious:
                {
                    int curS = -1, curE = -1;
                    bool prevMatch = false;
                    foreach (var (s, e, m) in segs)
                    {
                        if (m && !prevMatch && curS >= 0) curE = e;
                        else { if (curS >= 0) Emit(text, curS, curE, output); curS = s; curE = e; }
                        prevMatch = m;
                    }
                    if (curS >= 0) Emit(text, curS, curE, output);
                    break;
                }
                case Behavior.MergedWithNext:
                {
                    var merged = new List<(int S, int E)>();
                    bool prevMatch = false;
                    for (int k = segs.Count - 1; k >= 0; k--)
                    {
                        var (s, e, m) = segs[k];
                        if (m && !prevMatch && merged.Count > 0) merged[^1] = (s, merged[^1].E);
                        else merged.Add((s, e));
                        prevMatch = m;
                    }
                    for (int k = merged.Count - 1; k >= 0; k--) Emit(text, merged[k].S, merged[k].E, output);
                    break;
                }
                case Behavior.Contiguous:
                {
                    int curS = -1, curE = -1;
                    bool prevMatch = false;
                    foreach (var (s, e, m) in segs)
                    {
                        if (m == prevMatch && curS >= 0) curE = e;
                        else { if (curS >= 0) Emit(text, curS, curE, output); curS = s; curE = e; }
                        prevMatch = m;
                    }
                    if (curS >= 0) Emit(text, curS, curE, output);
                    break;
                }
            }
        }

        static void Emit(string text, int s, int e, List<string> output)
        {
            if (e > s) output.Add(s == 0 && e == text.Length ? text : text.Substring(s, e - s));
        }
    }

    /// <summary>ByteLevel: optional prefix space, GPT-2 split (JavaScript \s semantics, as Tokenizers.js), UTF-8 bytes as characters.</summary>
    sealed class ByteLevelPre(bool addPrefixSpace, bool useRegex) : HfPreTokenizer
    {
        const string Ws = PatternTranslator.JsWhiteSpaceBody;
        static readonly CodePointRegex Gpt2 = new(
            @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^" + Ws + @"\p{L}\p{N}]+|[" + Ws + "]+(?![^" + Ws + "])|[" + Ws + "]+");
        [ThreadStatic] static List<(int Start, int Length)>? t_matches;

        public override void Split(string text, int sectionIndex, List<string> output)
        {
            if (addPrefixSpace && !text.StartsWith(' ')) text = " " + text;
            if (!useRegex) { output.Add(ByteLevelAlphabet.Encode(text)); return; }
            var matches = t_matches ??= new();
            Gpt2.Matches(text, matches);
            foreach (var (s, l) in matches)
                if (l > 0) output.Add(ByteLevelAlphabet.Encode(text.AsSpan(s, l)));
        }
    }

    /// <summary>Digits: runs of non-digits, and ASCII digits one by one or as runs.</summary>
    sealed class DigitsPre(bool individual) : HfPreTokenizer
    {
        public override void Split(string text, int sectionIndex, List<string> output)
        {
            int i = 0;
            while (i < text.Length)
            {
                int s = i;
                if (char.IsAsciiDigit(text[i]))
                {
                    i++;
                    if (!individual) while (i < text.Length && char.IsAsciiDigit(text[i])) i++;
                }
                else while (i < text.Length && !char.IsAsciiDigit(text[i])) i++;
                output.Add(s == 0 && i == text.Length ? text : text.Substring(s, i - s));
            }
        }
    }

    /// <summary>
    /// Metaspace: spaces become the replacement character, which is prepended per prepend_scheme
    /// ("first" = only in the first section, as Tokenizers.js). With split (the Rust default) the text
    /// is cut before every replacement character, as the Rust crate does; Tokenizers.js never splits.
    /// </summary>
    sealed class MetaspacePre(string replacement, string scheme, bool split) : HfPreTokenizer
    {
        public override void Split(string text, int sectionIndex, List<string> output)
        {
            string t = text.Replace(" ", replacement, StringComparison.Ordinal);
            if (!t.StartsWith(replacement, StringComparison.Ordinal) && (scheme == "always" || scheme == "first" && sectionIndex == 0))
                t = replacement + t;
            if (!split || replacement.Length == 0) { output.Add(t); return; }
            int start = 0;
            for (int i = t.IndexOf(replacement, 1, StringComparison.Ordinal); i > 0; i = t.IndexOf(replacement, i + replacement.Length, StringComparison.Ordinal))
            {
                if (i > start) output.Add(t.Substring(start, i - start));
                start = i;
            }
            if (start < t.Length) output.Add(t[start..]);
        }
    }

    /// <summary>Keeps the matches of a regex (Whitespace, WhitespaceSplit).</summary>
    sealed class RegexPre(CodePointRegex regex) : HfPreTokenizer
    {
        [ThreadStatic] static List<(int Start, int Length)>? t_matches;

        public override void Split(string text, int sectionIndex, List<string> output)
        {
            var matches = t_matches ??= new();
            regex.Matches(text, matches);
            foreach (var (s, l) in matches) if (l > 0) output.Add(text.Substring(s, l));
        }
    }

    sealed class ReplacePre(HfPattern pattern, string content) : HfPreTokenizer
    {
        public override void Split(string text, int sectionIndex, List<string> output) => output.Add(pattern.ReplaceAll(text, content));
    }

    sealed class SequencePre(List<HfPreTokenizer> items) : HfPreTokenizer
    {
        public override void Split(string text, int sectionIndex, List<string> output)
        {
            var current = new List<string> { text };
            var next = new List<string>();
            foreach (var p in items)
            {
                next.Clear();
                foreach (var piece in current) p.Split(piece, sectionIndex, next);
                (current, next) = (next, current);
            }
            output.AddRange(current);
        }
    }
}

// ---------------------------------------------------------------- decoders

internal abstract class HfDecoder
{
    public abstract List<string> DecodeChain(List<string> tokens);

    public static HfDecoder? Create(JsonElement e, string where, HashSet<string> addedTokenContents)
    {
        if (e.ValueKind == JsonValueKind.Null) return null;
        string type = HfJson.Type(e, where);
        switch (type)
        {
            case "ByteLevel": return new ByteLevelDec(addedTokenContents);
            case "Metaspace":
                return new MetaspaceDec(HfJson.Str(e, "replacement") ?? "\u2581", HfJson.Str(e, "prepend_scheme") != "never"
                    && !(e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False));
            case "Replace": return new ReplaceDec(HfJson.Pattern(e, where), HfJson.Str(e, "content") ?? "");
            case "ByteFallback": return new ByteFallbackDec();
            case "Fuse": return new FuseDec();
            case "Strip": return new StripDec(HfJson.Str(e, "content") ?? "", HfJson.Int(e, "start", 0), HfJson.Int(e, "stop", 0));
            case "BPEDecoder": return new BpeDec(HfJson.Str(e, "suffix") ?? "</w>");
            case "Sequence":
            {
                var list = new List<HfDecoder>();
                if (e.TryGetProperty("decoders", out var arr) && arr.ValueKind == JsonValueKind.Array)
                {
                    int k = 0;
                    foreach (var item in arr.EnumerateArray())
                        if (Create(item, $"{where}.decoders[{k++}]", addedTokenContents) is { } d) list.Add(d);
                }
                return new SequenceDec(list);
            }
            default:
                throw new ModelFormatException(
                    $"tokenizer.json {where}.type \"{type}\" is not supported; supported decoders: " +
                    "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, BPEDecoder, Sequence.");
        }
    }

    /// <summary>UTF-8 decoding with U+FFFD for ill-formed sequences (as TextDecoder with fatal=false).</summary>
    static readonly UTF8Encoding Utf8 = new(false, false);

    /// <summary>ByteLevel: characters back to bytes, UTF-8 decoded; added tokens pass through verbatim.</summary>
    sealed class ByteLevelDec(HashSet<string> added) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens)
        {
            var result = new List<string>();
            var bytes = new List<byte>();
            foreach (var tok in tokens)
            {
                if (added.Contains(tok))
                {
                    Flush(bytes, result);
                    result.Add(tok);
                    continue;
                }
                foreach (char c in tok)
                {
                    int b = c < 512 ? ByteLevelAlphabet.CharToByte[c] : -1;
                    bytes.Add(b < 0 ? (byte)0 : (byte)b); // Tokenizers.js: an unmapped character becomes byte 0
                }
            }
            Flush(bytes, result);
            return result;
        }

        static void Flush(List<byte> bytes, List<string> into)
        {
            if (bytes.Count == 0) return;
            into.Add(Utf8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes)));
            bytes.Clear();
        }
    }

    sealed class MetaspaceDec(string replacement, bool stripFirst) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens)
        {
            var r = new List<string>(tokens.Count);
            for (int i = 0; i < tokens.Count; i++)
            {
                string t = replacement.Length == 0 ? tokens[i] : tokens[i].Replace(replacement, " ", StringComparison.Ordinal);
                if (i == 0 && stripFirst && t.StartsWith(' ')) t = t[1..];
                r.Add(t);
            }
            return r;
        }
    }

    sealed class ReplaceDec(HfPattern pattern, string content) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens)
        {
            var r = new List<string>(tokens.Count);
            foreach (var t in tokens) r.Add(pattern.ReplaceAll(t, content));
            return r;
        }
    }

    /// <summary>ByteFallback: runs of &lt;0xNN&gt; tokens become UTF-8 text (TextDecoder: U+FFFD on errors, leading BOM dropped).</summary>
    sealed class ByteFallbackDec : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens)
        {
            var r = new List<string>(tokens.Count);
            var bytes = new List<byte>();
            foreach (var t in tokens)
            {
                if (TryByte(t, out byte b)) { bytes.Add(b); continue; }
                Flush(bytes, r);
                r.Add(t);
            }
            Flush(bytes, r);
            return r;
        }

        static void Flush(List<byte> bytes, List<string> into)
        {
            if (bytes.Count == 0) return;
            var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes);
            if (span.Length >= 3 && span[0] == 0xEF && span[1] == 0xBB && span[2] == 0xBF) span = span[3..];
            into.Add(Utf8.GetString(span));
            bytes.Clear();
        }

        // parseInt(token.slice(3, 5), 16) on a 6-character "<0x..>" token: a leading hex prefix is enough.
        static bool TryByte(string t, out byte b)
        {
            b = 0;
            if (t.Length != 6 || !t.StartsWith("<0x", StringComparison.Ordinal) || t[5] != '>') return false;
            int v = 0, n = 0;
            for (int k = 3; k < 5 && char.IsAsciiHexDigit(t[k]); k++, n++) v = v * 16 + Convert.ToInt32(t[k].ToString(), 16);
            if (n == 0) return false;
            b = (byte)v;
            return true;
        }
    }

    sealed class FuseDec : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens) => new() { string.Concat(tokens) };
    }

    sealed class StripDec(string content, int start, int stop) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens)
        {
            var r = new List<string>(tokens.Count);
            foreach (var t in tokens)
            {
                int s = 0;
                for (int i = 0; i < start && i < t.Length; i++)
                {
                    if (content.Length == 1 && t[i] == content[0]) s = i + 1; else break;
                }
                int e = t.Length;
                for (int i = 0; i < stop; i++)
                {
                    int idx = t.Length - i - 1;
                    if (idx >= 0 && content.Length == 1 && t[idx] == content[0]) e = idx; else break;
                }
                r.Add(e > s ? t[s..e] : "");
            }
            return r;
        }
    }

    sealed class BpeDec(string suffix) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens)
        {
            var r = new List<string>(tokens.Count);
            for (int i = 0; i < tokens.Count; i++)
                r.Add(suffix.Length == 0 ? tokens[i] : tokens[i].Replace(suffix, i == tokens.Count - 1 ? "" : " ", StringComparison.Ordinal));
            return r;
        }
    }

    sealed class SequenceDec(List<HfDecoder> items) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens)
        {
            foreach (var d in items) tokens = d.DecodeChain(tokens);
            return tokens;
        }
    }
}
