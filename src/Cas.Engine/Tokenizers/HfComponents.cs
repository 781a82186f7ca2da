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

    public void Matches(ReadOnlySpan<char> text, List<(int Start, int Length)> into)
    {
        if (_regex != null) { _regex.Matches(text, into); return; }
        into.Clear();
        string lit = _literal!;
        for (int i = text.IndexOf(lit, StringComparison.Ordinal), from = 0; i >= 0; )
        {
            into.Add((from + i, lit.Length));
            from += i + lit.Length;
            i = text[from..].IndexOf(lit, StringComparison.Ordinal);
        }
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

    /// <summary>
    /// Normalizes and appends, for every output character, the span [S, E) of input characters it came from
    /// (inserted characters get an empty span). Used only when offsets are asked for.
    /// </summary>
    public abstract string Normalize(string text, List<(int S, int E)> map);

    static void Identity(int length, List<(int S, int E)> map)
    {
        for (int i = 0; i < length; i++) map.Add((i, i + 1));
    }

    /// <summary>Per code point rewriting: every output character maps to the code point it came from.</summary>
    static string PerCodePoint(string text, List<(int S, int E)>? map, Func<Rune, string?> rewrite)
    {
        var sb = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length;)
        {
            int len = Rune.TryGetRuneAt(text, i, out var r) ? r.Utf16SequenceLength : 1;
            string? o = len == 1 && char.IsSurrogate(text[i]) ? null : rewrite(r);
            if (o == null) sb.Append(text, i, len); else sb.Append(o);
            int added = o?.Length ?? len;
            if (map != null) for (int k = 0; k < added; k++) map.Add((i, i + len));
            i += len;
        }
        return sb.ToString();
    }

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
        public override string Normalize(string text, List<(int S, int E)> map) => UnicodeNormalizer.Normalize(text, form, map);
    }

    /// <summary>
    /// Lowercase as the Rust crate: each code point by its full lowercase mapping (U+0130 becomes "i̇"),
    /// with no context rule (Σ always becomes σ; JavaScript's toLowerCase uses ς at the end of a word).
    /// </summary>
    sealed class Lower : HfNormalizer
    {
        public override string Normalize(string text)
        {
            foreach (char c in text) if (c >= 0x80) return PerCodePoint(text, null, LowerRune);
            return text.ToLowerInvariant();
        }

        public override string Normalize(string text, List<(int S, int E)> map) => PerCodePoint(text, map, LowerRune);

        static string? LowerRune(Rune r) => r.Value == 0x130 ? "i\u0307" : Rune.ToLowerInvariant(r) is var l && l != r ? l.ToString() : null;
    }

    sealed class Prepend(string prefix) : HfNormalizer
    {
        public override string Normalize(string text) => text.Length == 0 ? text : prefix + text;

        public override string Normalize(string text, List<(int S, int E)> map)
        {
            if (text.Length == 0) return text;
            for (int i = 0; i < prefix.Length; i++) map.Add((0, 0));
            for (int i = 0; i < text.Length; i++) map.Add((i, i + 1));
            return prefix + text;
        }
    }

    sealed class Replace(HfPattern pattern, string content) : HfNormalizer
    {
        [ThreadStatic] static List<(int Start, int Length)>? t_matches;

        public override string Normalize(string text) => pattern.ReplaceAll(text, content);

        public override string Normalize(string text, List<(int S, int E)> map)
        {
            string result = pattern.ReplaceAll(text, content);
            var matches = t_matches ??= new();
            pattern.Matches(text, matches);
            if (content.IndexOf('$') >= 0 || result.Length != text.Length - matches.Sum(m => m.Length) + matches.Count * content.Length)
            {
                // A substitution in the content: only the whole text is known.
                for (int i = 0; i < result.Length; i++) map.Add((0, text.Length));
                return result;
            }
            int prev = 0;
            foreach (var (s, l) in matches)
            {
                for (int i = prev; i < s; i++) map.Add((i, i + 1));
                for (int k = 0; k < content.Length; k++) map.Add((s, s + l));
                prev = s + l;
            }
            for (int i = prev; i < text.Length; i++) map.Add((i, i + 1));
            return result;
        }
    }

    /// <summary>Strip: leading / trailing whitespace (char::is_whitespace, as the Rust crate).</summary>
    sealed class Strip(bool left, bool right) : HfNormalizer
    {
        public override string Normalize(string text)
        {
            if (left) text = RustText.TrimStart(text);
            if (right) text = RustText.TrimEnd(text);
            return text;
        }

        public override string Normalize(string text, List<(int S, int E)> map)
        {
            string l = left ? RustText.TrimStart(text) : text;
            int skip = text.Length - l.Length;
            string r = right ? RustText.TrimEnd(l) : l;
            for (int i = 0; i < r.Length; i++) map.Add((skip + i, skip + i + 1));
            return r;
        }
    }

    sealed class StripAccents : HfNormalizer
    {
        public override string Normalize(string text) => Normalize(text, null);

        public override string Normalize(string text, List<(int S, int E)>? map)
        {
            var sb = new StringBuilder(text.Length);
            for (int i = 0; i < text.Length;)
            {
                if (!Rune.TryGetRuneAt(text, i, out var r)) { sb.Append(text[i]); map?.Add((i, i + 1)); i++; continue; }
                var cat = Rune.GetUnicodeCategory(r);
                if (cat is not (System.Globalization.UnicodeCategory.NonSpacingMark or System.Globalization.UnicodeCategory.SpacingCombiningMark
                    or System.Globalization.UnicodeCategory.EnclosingMark))
                {
                    sb.Append(text, i, r.Utf16SequenceLength);
                    if (map != null) for (int k = 0; k < r.Utf16SequenceLength; k++) map.Add((i, i + r.Utf16SequenceLength));
                }
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

        public override string Normalize(string text, List<(int S, int E)> map)
        {
            int start = map.Count;
            Identity(text.Length, map);
            var step = new List<(int S, int E)>();
            foreach (var n in items)
            {
                step.Clear();
                int before = text.Length;
                text = n.Normalize(text, step);
                // Compose: output char i came from step[i] of the previous text, which came from map[start + ...].
                var composed = new (int S, int E)[step.Count];
                for (int i = 0; i < step.Count; i++)
                {
                    var (s, e) = step[i];
                    composed[i] = e > s
                        ? (map[start + s].S, map[start + e - 1].E)
                        : s < before ? (map[start + s].S, map[start + s].S)
                        : before > 0 ? (map[start + before - 1].E, map[start + before - 1].E) : (0, 0);
                }
                map.RemoveRange(start, map.Count - start);
                map.AddRange(composed);
            }
            return text;
        }
    }
}

// ---------------------------------------------------------------- pre-tokenizers

/// <summary>How the characters of a pre-token relate to the normalized text they came from (for offsets).</summary>
internal enum PieceKind : byte
{
    /// <summary>Character i (after <see cref="PreToken.Lead"/> inserted ones) stands for normalized character Start + i - Lead.</summary>
    Chars,
    /// <summary>Character i stands for UTF-8 byte i of the text at <see cref="PreToken.Origin"/> (ByteLevel), itself Chars-aligned at Start.</summary>
    Bytes,
    /// <summary>Only the whole span [Start, End) is known.</summary>
    Opaque,
}

/// <summary>
/// A pre-token: TextLength characters at TextStart of a <see cref="PreTokenBuffer"/>, standing for
/// normalized characters [Start, End). Splitting a piece makes children that point into the same
/// buffer, so no string is made per pre-token.
/// </summary>
internal struct PreToken
{
    public int TextStart, TextLength;
    public int Start, End;
    public int Lead;        // Chars: inserted characters at the front (Metaspace's prepended replacement)
    public int Origin;      // Bytes: buffer index of the Chars text that was byte-encoded (TextLength of it = End - Start)
    public PieceKind Kind;

    /// <summary>The child covering characters [a, b) of this piece.</summary>
    public readonly PreToken Slice(int a, int b)
    {
        var c = this;
        c.TextStart = TextStart + a;
        c.TextLength = b - a;
        if (Kind == PieceKind.Chars)
        {
            c.Start = Start + Math.Max(0, a - Lead);
            c.End = Start + Math.Max(0, b - Lead);
            c.Lead = Math.Clamp(Lead - a, 0, b - a);
        }
        else c.Kind = PieceKind.Opaque; // a split of byte-level text: keep the parent's span
        return c;
    }
}

/// <summary>The characters of the pre-tokens of one encode call (reused per thread).</summary>
internal sealed class PreTokenBuffer
{
    public char[] Chars = new char[1024];
    public int Length;

    public ReadOnlySpan<char> Text(in PreToken p) => Chars.AsSpan(p.TextStart, p.TextLength);

    /// <summary>Makes room for n more characters (Chars may be replaced: take spans after calling this).</summary>
    public void Reserve(int n)
    {
        if (Length + n <= Chars.Length) return;
        var bigger = new char[Math.Max(Chars.Length * 2, Length + n)];
        Chars.AsSpan(0, Length).CopyTo(bigger);
        Chars = bigger;
    }

    public PreToken Add(ReadOnlySpan<char> text, int start, int end)
    {
        Reserve(text.Length);
        text.CopyTo(Chars.AsSpan(Length));
        var p = new PreToken { TextStart = Length, TextLength = text.Length, Start = start, End = end, Kind = PieceKind.Chars };
        Length += text.Length;
        return p;
    }
}

internal abstract class HfPreTokenizer
{
    /// <summary>Splits one piece, appending the resulting pre-tokens (which may point into the same buffer).</summary>
    public abstract void Split(PreTokenBuffer buf, in PreToken piece, int sectionIndex, List<PreToken> output);

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
                return new RegexPre(new CodePointRegex(PatternTranslator.Translate(@"\w+|[^\w\s]+"))); // the Rust crate's pattern
            case "WhitespaceSplit":
                return new RegexPre(new CodePointRegex("[^" + PatternTranslator.WhiteSpaceBody + "]+")); // split on char::is_whitespace
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

    static void Emit(in PreToken piece, int s, int e, List<PreToken> output)
    {
        if (e > s) output.Add(s == 0 && e == piece.TextLength ? piece : piece.Slice(s, e));
    }

    /// <summary>
    /// Split semantics of the Rust tokenizers crate: the text is cut into match / non-match segments
    /// (flags flipped when inverted), then the behaviour decides what is kept and what is merged.
    /// </summary>
    sealed class SplitPre(HfPattern pattern, Behavior behavior, bool invert) : HfPreTokenizer
    {
        [ThreadStatic] static List<(int Start, int Length)>? t_matches;
        [ThreadStatic] static List<(int Start, int End, bool Match)>? t_segments;

        public override void Split(PreTokenBuffer buf, in PreToken piece, int sectionIndex, List<PreToken> output)
        {
            var matches = t_matches ??= new();
            var segs = t_segments ??= new();
            pattern.Matches(buf.Text(piece), matches);
            if (behavior == Behavior.Isolated && !invert)
            {
                // The common case (Llama 3, Qwen): every match and every gap between matches is a piece.
                int at = 0;
                foreach (var (s, l) in matches)
                {
                    Emit(piece, at, s, output);
                    Emit(piece, s, s + l, output);
                    at = s + l;
                }
                Emit(piece, at, piece.TextLength, output);
                if (matches.Capacity > 1 << 16) t_matches = null; // let a huge text's scratch go
                return;
            }
            segs.Clear();
            int prev = 0, n = piece.TextLength;
            foreach (var (s, l) in matches)
            {
                if (prev < s) segs.Add((prev, s, invert));
                segs.Add((s, s + l, !invert));
                prev = s + l;
            }
            if (prev < n) segs.Add((prev, n, invert));

            switch (behavior)
            {
                case Behavior.Isolated:
                    foreach (var (s, e, _) in segs) Emit(piece, s, e, output);
                    break;
                case Behavior.Removed:
                    foreach (var (s, e, m) in segs) if (!m) Emit(piece, s, e, output);
                    break;
                case Behavior.MergedWithPrevious:
                {
                    int curS = -1, curE = -1;
                    bool prevMatch = false;
                    foreach (var (s, e, m) in segs)
                    {
                        if (m && !prevMatch && curS >= 0) curE = e;
                        else { if (curS >= 0) Emit(piece, curS, curE, output); curS = s; curE = e; }
                        prevMatch = m;
                    }
                    if (curS >= 0) Emit(piece, curS, curE, output);
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
                    for (int k = merged.Count - 1; k >= 0; k--) Emit(piece, merged[k].S, merged[k].E, output);
                    break;
                }
                case Behavior.Contiguous:
                {
                    int curS = -1, curE = -1;
                    bool prevMatch = false;
                    foreach (var (s, e, m) in segs)
                    {
                        if (m == prevMatch && curS >= 0) curE = e;
                        else { if (curS >= 0) Emit(piece, curS, curE, output); curS = s; curE = e; }
                        prevMatch = m;
                    }
                    if (curS >= 0) Emit(piece, curS, curE, output);
                    break;
                }
            }
        }
    }

    /// <summary>ByteLevel: optional prefix space, GPT-2 split (\s = Unicode White_Space, as the Rust crate), UTF-8 bytes as characters.</summary>
    sealed class ByteLevelPre(bool addPrefixSpace, bool useRegex) : HfPreTokenizer
    {
        const string Ws = PatternTranslator.WhiteSpaceBody; // Oniguruma's \s in the Rust crate: U+0085 in, U+FEFF out
        static readonly CodePointRegex Gpt2 = new(
            @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^" + Ws + @"\p{L}\p{N}]+|[" + Ws + "]+(?![^" + Ws + "])|[" + Ws + "]+");
        [ThreadStatic] static List<(int Start, int Length)>? t_matches;

        public override void Split(PreTokenBuffer buf, in PreToken input, int sectionIndex, List<PreToken> output)
        {
            var piece = input;
            if (addPrefixSpace && (piece.TextLength == 0 || buf.Chars[piece.TextStart] != ' '))
            {
                // The Rust crate prepends the space to the text (it stands for nothing in the input).
                var p = buf.Add(" ", piece.Start, piece.Start);
                var rest = buf.Add(buf.Text(piece), piece.Start, piece.End);
                piece = new PreToken
                {
                    TextStart = p.TextStart, TextLength = 1 + rest.TextLength, Start = piece.Start, End = piece.End,
                    Kind = piece.Kind == PieceKind.Chars ? PieceKind.Chars : PieceKind.Opaque, Lead = piece.Lead + 1,
                };
            }
            if (!useRegex) { Encode(buf, piece, output); return; }
            var matches = t_matches ??= new();
            Gpt2.Matches(buf.Text(piece), matches);
            foreach (var (s, l) in matches)
                if (l > 0) Encode(buf, s == 0 && l == piece.TextLength ? piece : piece.Slice(s, s + l), output);
            if (matches.Capacity > 1 << 16) t_matches = null; // let a huge text's scratch go
        }

        [System.Runtime.CompilerServices.SkipLocalsInit]
        static void Encode(PreTokenBuffer buf, in PreToken piece, List<PreToken> output)
        {
            int max = piece.TextLength * 3;
            buf.Reserve(max);
            var src = buf.Text(piece);
            var dst = buf.Chars.AsSpan(buf.Length);
            var table = ByteLevelAlphabet.ByteToChar;
            int n;
            if (!System.Text.Ascii.IsValid(src))
            {
                Span<byte> small = stackalloc byte[512];
                byte[]? rented = null;
                Span<byte> bytes = max <= small.Length ? small : (rented = System.Buffers.ArrayPool<byte>.Shared.Rent(max));
                n = System.Text.Encoding.UTF8.GetBytes(src, bytes); // a lone surrogate becomes EF BF BD (U+FFFD)
                for (int i = 0; i < n; i++) dst[i] = table[bytes[i]];
                if (rented != null) System.Buffers.ArrayPool<byte>.Shared.Return(rented);
            }
            else
            {
                n = src.Length;
                for (int i = 0; i < n; i++) dst[i] = table[src[i]];
            }
            output.Add(new PreToken
            {
                TextStart = buf.Length, TextLength = n, Start = piece.Start, End = piece.End, Origin = piece.TextStart,
                Kind = piece.Kind == PieceKind.Chars && piece.Lead == 0 ? PieceKind.Bytes : PieceKind.Opaque,
            });
            buf.Length += n;
        }
    }

    /// <summary>Digits: runs of numeric characters (char::is_numeric: Nd, Nl, No, as the Rust crate), one by one or as runs.</summary>
    sealed class DigitsPre(bool individual) : HfPreTokenizer
    {
        public override void Split(PreTokenBuffer buf, in PreToken piece, int sectionIndex, List<PreToken> output)
        {
            var text = buf.Text(piece);
            int i = 0;
            while (i < text.Length)
            {
                int s = i;
                bool numeric = RustText.IsNumeric(RustText.CodePointAt(text, i, out int len));
                i += len;
                if (!numeric || !individual)
                {
                    while (i < text.Length && RustText.IsNumeric(RustText.CodePointAt(text, i, out len)) == numeric) i += len;
                }
                Emit(piece, s, i, output);
            }
        }
    }

    /// <summary>
    /// Metaspace: spaces become the replacement character, which is prepended per prepend_scheme
    /// ("first" = only in the first section). With split (the Rust default) the text is cut before every
    /// replacement character, as the Rust crate does.
    /// </summary>
    sealed class MetaspacePre(string replacement, string scheme, bool split) : HfPreTokenizer
    {
        public override void Split(PreTokenBuffer buf, in PreToken piece, int sectionIndex, List<PreToken> output)
        {
            bool prepend = (scheme == "always" || scheme == "first" && sectionIndex == 0)
                && !buf.Text(piece).StartsWith(replacement, StringComparison.Ordinal)
                && !(piece.TextLength > 0 && buf.Chars[piece.TextStart] == ' ');
            string t = (prepend ? replacement : "") + buf.Text(piece).ToString().Replace(" ", replacement, StringComparison.Ordinal);
            var whole = buf.Add(t, piece.Start, piece.End);
            bool aligned = replacement.Length == 1 && piece.Kind == PieceKind.Chars;
            whole.Kind = aligned ? PieceKind.Chars : PieceKind.Opaque;
            whole.Lead = aligned ? piece.Lead + (prepend ? 1 : 0) : 0;
            if (!split || replacement.Length == 0) { output.Add(whole); return; }
            int start = 0;
            for (int i = t.IndexOf(replacement, 1, StringComparison.Ordinal); i > 0; i = t.IndexOf(replacement, i + replacement.Length, StringComparison.Ordinal))
            {
                Emit(whole, start, i, output);
                start = i;
            }
            Emit(whole, start, t.Length, output);
        }
    }

    /// <summary>Keeps the matches of a regex (Whitespace, WhitespaceSplit).</summary>
    sealed class RegexPre(CodePointRegex regex) : HfPreTokenizer
    {
        [ThreadStatic] static List<(int Start, int Length)>? t_matches;

        public override void Split(PreTokenBuffer buf, in PreToken piece, int sectionIndex, List<PreToken> output)
        {
            var matches = t_matches ??= new();
            regex.Matches(buf.Text(piece), matches);
            foreach (var (s, l) in matches) Emit(piece, s, s + l, output);
        }
    }

    sealed class ReplacePre(HfPattern pattern, string content) : HfPreTokenizer
    {
        public override void Split(PreTokenBuffer buf, in PreToken piece, int sectionIndex, List<PreToken> output)
        {
            string replaced = pattern.ReplaceAll(buf.Text(piece).ToString(), content);
            var p = buf.Add(replaced, piece.Start, piece.End);
            p.Kind = PieceKind.Opaque;
            output.Add(p);
        }
    }

    sealed class SequencePre(List<HfPreTokenizer> items) : HfPreTokenizer
    {
        // Reused lists per thread (a stack of them, for sequences inside sequences): no allocation per call.
        [ThreadStatic] static Stack<List<PreToken>>? t_free;

        public override void Split(PreTokenBuffer buf, in PreToken piece, int sectionIndex, List<PreToken> output)
        {
            var free = t_free ??= new();
            var current = free.Count > 0 ? free.Pop() : new List<PreToken>();
            var next = free.Count > 0 ? free.Pop() : new List<PreToken>();
            current.Clear();
            current.Add(piece);
            for (int k = 0; k < items.Count; k++)
            {
                var target = k == items.Count - 1 ? output : next;
                if (target == next) next.Clear();
                foreach (var q in current) items[k].Split(buf, q, sectionIndex, target);
                if (target == next) (current, next) = (next, current);
            }
            if (items.Count == 0) output.Add(piece);
            current.Clear();
            next.Clear();
            if (current.Capacity <= 1 << 16) free.Push(current); // a huge text's lists are let go
            if (next.Capacity <= 1 << 16) free.Push(next);
        }
    }
}

// ---------------------------------------------------------------- decoders

internal abstract class HfDecoder
{
    /// <summary>Decodes token strings; with holdTail, a trailing incomplete UTF-8 sequence is held back (not emitted as U+FFFD).</summary>
    public abstract List<string> DecodeChain(List<string> tokens, bool holdTail);

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

    /// <summary>Drops a UTF-8 sequence cut short at the end (a lead byte without all its continuation bytes).</summary>
    static void HoldIncompleteTail(List<byte> bytes)
    {
        int n = bytes.Count;
        for (int back = 1; back <= 3 && back <= n; back++)
        {
            byte b = bytes[n - back];
            if ((b & 0xC0) == 0x80) continue; // continuation byte: look further back
            int need = b >= 0xF0 && b <= 0xF4 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 1;
            if (need > back) bytes.RemoveRange(n - back, back);
            return;
        }
    }

    /// <summary>UTF-8 decoding with U+FFFD for ill-formed sequences (as TextDecoder with fatal=false).</summary>
    static readonly UTF8Encoding Utf8 = new(false, false);

    /// <summary>ByteLevel: characters back to bytes, UTF-8 decoded; added tokens pass through verbatim.</summary>
    sealed class ByteLevelDec(HashSet<string> added) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens, bool holdTail)
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
            if (holdTail) HoldIncompleteTail(bytes);
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
        public override List<string> DecodeChain(List<string> tokens, bool holdTail)
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
        public override List<string> DecodeChain(List<string> tokens, bool holdTail)
        {
            var r = new List<string>(tokens.Count);
            foreach (var t in tokens) r.Add(pattern.ReplaceAll(t, content));
            return r;
        }
    }

    /// <summary>ByteFallback: runs of &lt;0xNN&gt; tokens become UTF-8 text (TextDecoder: U+FFFD on errors, leading BOM dropped).</summary>
    sealed class ByteFallbackDec : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens, bool holdTail)
        {
            var r = new List<string>(tokens.Count);
            var bytes = new List<byte>();
            foreach (var t in tokens)
            {
                if (TryByte(t, out byte b)) { bytes.Add(b); continue; }
                Flush(bytes, r);
                r.Add(t);
            }
            if (holdTail) HoldIncompleteTail(bytes);
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
        public override List<string> DecodeChain(List<string> tokens, bool holdTail) => new() { string.Concat(tokens) };
    }

    sealed class StripDec(string content, int start, int stop) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens, bool holdTail)
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
        public override List<string> DecodeChain(List<string> tokens, bool holdTail)
        {
            var r = new List<string>(tokens.Count);
            for (int i = 0; i < tokens.Count; i++)
                r.Add(suffix.Length == 0 ? tokens[i] : tokens[i].Replace(suffix, i == tokens.Count - 1 ? "" : " ", StringComparison.Ordinal));
            return r;
        }
    }

    sealed class SequenceDec(List<HfDecoder> items) : HfDecoder
    {
        public override List<string> DecodeChain(List<string> tokens, bool holdTail)
        {
            foreach (var d in items) tokens = d.DecodeChain(tokens, holdTail);
            return tokens;
        }
    }
}
