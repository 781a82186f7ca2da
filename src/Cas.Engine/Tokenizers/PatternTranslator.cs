using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Cas.Engine.Tokenizers;

/// <summary>
/// Translates the Oniguruma-flavoured regexes found in Hugging Face tokenizer.json files into .NET
/// regexes with the semantics Tokenizers.js gives them (its rewrite_oniguruma_to_js):
/// <c>\s</c> is Unicode White_Space, <c>\d</c> is <c>\p{Nd}</c>, <c>.</c> excludes only <c>\n</c>,
/// <c>^</c>/<c>$</c> are line anchors on <c>\n</c>, <c>(?i:...)</c> folds ASCII letters only,
/// possessive quantifiers and atomic groups become ordinary ones.
/// The result is matched by <see cref="CodePointRegex"/>, which makes astral-plane characters
/// behave as single code points.
/// </summary>
internal static class PatternTranslator
{
    /// <summary>Unicode White_Space as a .NET class body (no astral members exist).</summary>
    internal const string WhiteSpaceBody = @"\t\n\v\f\r\x20\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

    /// <summary>JavaScript's <c>\s</c> (WhiteSpace + LineTerminator): note U+FEFF in, U+0085 out.</summary>
    internal const string JsWhiteSpaceBody = @"\t\n\v\f\r\x20\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFEFF";

    /// <summary>
    /// Oniguruma word characters as Tokenizers.js defines them inside a class:
    /// Alphabetic ∪ M ∪ Nd ∪ Pc. Alphabetic ∖ M = L ∪ Nl ∪ the circled/squared letters (So) listed here.
    /// </summary>
    const string WordBodyInClass = @"\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\u24B6-\u24E9";
    const string WordBody = WordBodyInClass + @"\xB2\xB3\xB9\xBC-\xBE";
    const string WordClass = "[" + WordBody + "]";
    const string NonWordClass = "[^" + WordBody + "]";
    const string HexBody = "0-9A-Fa-f";
    const string AnyChar = @"[\s\S]";

    static readonly string[] GeneralCategories =
    {
        "L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
        "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So",
        "Z", "Zs", "Zl", "Zp", "C", "Cc", "Cf", "Cs", "Co", "Cn",
    };

    static readonly Dictionary<string, string> LongCategoryNames = new(StringComparer.OrdinalIgnoreCase)
    {
        ["Letter"] = "L", ["Uppercase_Letter"] = "Lu", ["Lowercase_Letter"] = "Ll", ["Titlecase_Letter"] = "Lt",
        ["Modifier_Letter"] = "Lm", ["Other_Letter"] = "Lo", ["Mark"] = "M", ["Combining_Mark"] = "M",
        ["Nonspacing_Mark"] = "Mn", ["Spacing_Mark"] = "Mc", ["Enclosing_Mark"] = "Me", ["Number"] = "N",
        ["Decimal_Number"] = "Nd", ["Digit"] = "Nd", ["Letter_Number"] = "Nl", ["Other_Number"] = "No",
        ["Punctuation"] = "P", ["punct"] = "P", ["Connector_Punctuation"] = "Pc", ["Dash_Punctuation"] = "Pd",
        ["Open_Punctuation"] = "Ps", ["Close_Punctuation"] = "Pe", ["Initial_Punctuation"] = "Pi",
        ["Final_Punctuation"] = "Pf", ["Other_Punctuation"] = "Po", ["Symbol"] = "S", ["Math_Symbol"] = "Sm",
        ["Currency_Symbol"] = "Sc", ["Modifier_Symbol"] = "Sk", ["Other_Symbol"] = "So", ["Separator"] = "Z",
        ["Space_Separator"] = "Zs", ["Line_Separator"] = "Zl", ["Paragraph_Separator"] = "Zp", ["Other"] = "C",
        ["Control"] = "Cc", ["cntrl"] = "Cc", ["Format"] = "Cf", ["Surrogate"] = "Cs", ["Private_Use"] = "Co",
        ["Unassigned"] = "Cn",
    };

    /// <summary>Translates a tokenizer.json <c>{"Regex": ...}</c> pattern. Throws ModelFormatException when unsupported.</summary>
    public static string Translate(string pattern)
    {
        try
        {
            var p = new Parser(NormalizeBloomSplitClass(pattern));
            var result = p.TranslateTop();
            _ = new Regex(result, RegexOptions.CultureInvariant); // validate
            return result;
        }
        catch (ModelFormatException) { throw; }
        catch (Exception e) when (e is ArgumentException or FormatException)
        {
            throw new ModelFormatException($"tokenizer regex {Quote(pattern)} cannot be translated to a .NET regex: {e.Message}", e);
        }
    }

    /// <summary>A literal string as a .NET regex.</summary>
    public static string Literal(string s) => Regex.Escape(s);

    static string Quote(string s) => s.Length > 120 ? "\"" + s[..120] + "...\"" : "\"" + s + "\"";

    // Tokenizers.js: regex.replace(/\[\^\(\\s\|\[([^\]]+)\]\)\]/g, "[^()|\\s$1]") (BLOOM's pattern).
    static string NormalizeBloomSplitClass(string regex) =>
        Regex.Replace(regex, @"\[\^\(\\s\|\[([^\]]+)\]\)\]", m => "[^()|\\s" + m.Groups[1].Value + "]");

    static string CategoryName(string name, string pattern)
    {
        foreach (var c in GeneralCategories) if (c == name) return c;
        if (name == "LC" || name.Equals("Cased_Letter", StringComparison.OrdinalIgnoreCase)) return "LC";
        if (LongCategoryNames.TryGetValue(name, out var s)) return s;
        if (name.StartsWith("gc=", StringComparison.Ordinal) || name.StartsWith("General_Category=", StringComparison.Ordinal))
            return CategoryName(name[(name.IndexOf('=') + 1)..], pattern);
        if (name is "White_Space" or "space" or "WSpace") return "White_Space";
        if (name == "Word") return "Word";
        if (name == "Any") return "Any";
        throw new ModelFormatException(
            $"tokenizer regex {Quote(pattern)} uses \\p{{{name}}}, which is not supported; " +
            "supported properties: Unicode general categories (L, Lu, N, Nd, P, S, Z, ... and their long names), White_Space, Word, Any.");
    }

    /// <summary>One operand of a character class: a .NET class body plus extra single-character atoms.</summary>
    sealed class Operand
    {
        public readonly StringBuilder Fragment = new();
        public readonly List<string> Alternatives = new();
        public bool Empty => Fragment.Length == 0 && Alternatives.Count == 0;

        public string Compile()
        {
            var pieces = new List<string>();
            if (Fragment.Length > 0) pieces.Add("[" + Fragment + "]");
            pieces.AddRange(Alternatives);
            return pieces.Count == 1 ? pieces[0] : "(?:" + string.Join("|", pieces) + ")";
        }
    }

    sealed class Parser
    {
        readonly string _src;
        readonly StringBuilder _out = new();
        int _atomStart = -1;
        bool _lastWasQuantifier;
        bool _asciiFold;

        public Parser(string src) { _src = src; }

        ModelFormatException Error(string what, int index) =>
            new($"tokenizer regex {Quote(_src)}: {what} at index {index}; this construct is not supported.");

        void EmitAtom(string text)
        {
            _atomStart = _out.Length;
            _out.Append(text);
            _lastWasQuantifier = false;
        }

        static string LiteralChar(int cp)
        {
            if (cp > 0xFFFF) throw new ModelFormatException($"tokenizer regex: astral-plane literal U+{cp:X} is not supported.");
            if (cp < 128 && char.IsAsciiLetterOrDigit((char)cp)) return ((char)cp).ToString();
            return "\\u" + cp.ToString("X4");
        }

        static string FoldLetter(char c) => "[" + char.ToLowerInvariant(c) + char.ToUpperInvariant(c) + "]";

        int CodePointAt(int i) => char.IsHighSurrogate(_src[i]) && i + 1 < _src.Length && char.IsLowSurrogate(_src[i + 1])
            ? char.ConvertToUtf32(_src[i], _src[i + 1]) : _src[i];

        static int CharLen(int cp) => cp > 0xFFFF ? 2 : 1;

        // \p{..} / \P{..} / \x{..} / \u{..} at index i; returns null when not a braced escape.
        (char kind, string body, int length)? Braced(int i)
        {
            if (i + 2 >= _src.Length || _src[i] != '\\' || _src[i + 2] != '{') return null;
            char k = _src[i + 1];
            if (k is not ('p' or 'P' or 'x' or 'u')) return null;
            int close = _src.IndexOf('}', i + 3);
            if (close < 0) return null;
            return (k, _src.Substring(i + 3, close - i - 3), close - i + 1);
        }

        int? FixedWidthEscape(int i, out string text)
        {
            text = "";
            if (i + 1 >= _src.Length || _src[i] != '\\') return null;
            char k = _src[i + 1];
            if (k == 'x' && i + 3 < _src.Length && IsHex(_src[i + 2]) && IsHex(_src[i + 3]))
            { text = _src.Substring(i, 4); return Convert.ToInt32(_src.Substring(i + 2, 2), 16); }
            if (k == 'u' && i + 5 < _src.Length && IsHex(_src[i + 2]) && IsHex(_src[i + 3]) && IsHex(_src[i + 4]) && IsHex(_src[i + 5]))
            { text = _src.Substring(i, 6); return Convert.ToInt32(_src.Substring(i + 2, 4), 16); }
            if (k == 'c' && i + 2 < _src.Length && char.IsAsciiLetter(_src[i + 2]))
            { text = _src.Substring(i, 3); return _src[i + 2] % 32; }
            return null;
        }

        static bool IsHex(char c) => char.IsAsciiHexDigit(c);

        public string TranslateTop()
        {
            var groupStates = new Stack<(int start, bool fold)>();
            int i = 0;
            while (i < _src.Length)
            {
                int cp = CodePointAt(i);
                char c = _src[i];
                if (c == '\\')
                {
                    var braced = Braced(i);
                    if (braced is { } b)
                    {
                        if (b.kind is 'x' or 'u')
                        {
                            int v = ParseHex(b.body, i);
                            EmitAtom(_asciiFold && v < 128 && char.IsAsciiLetter((char)v) ? FoldLetter((char)v) : LiteralChar(v));
                        }
                        else EmitAtom(PropertyAtom(b.kind == 'P', b.body));
                        i += b.length;
                        continue;
                    }
                    var fixedCp = FixedWidthEscape(i, out var fixedText);
                    if (fixedCp is { } fv)
                    {
                        bool isControl = fixedText[1] == 'c';
                        EmitAtom(_asciiFold && !isControl && fv < 128 && char.IsAsciiLetter((char)fv) ? FoldLetter((char)fv) : LiteralChar(fv));
                        i += fixedText.Length;
                        continue;
                    }
                    if (i + 1 >= _src.Length) throw Error("trailing backslash", i);
                    int next = CodePointAt(i + 1);
                    i += 1 + CharLen(next);
                    switch (next)
                    {
                        case 'G': continue; // Tokenizers.js drops \G
                        case 'n': EmitAtom("\\n"); continue;
                        case 'r': EmitAtom("\\r"); continue;
                        case 't': EmitAtom("\\t"); continue;
                        case 'f': EmitAtom("\\f"); continue;
                        case 'v': EmitAtom("\\v"); continue;
                        case 'a': EmitAtom("\\a"); continue;
                        case 'e': EmitAtom("\\e"); continue;
                        case 'A': EmitAtom(@"\A"); continue;
                        case 'z': EmitAtom(@"\z"); continue;
                        case 'Z': EmitAtom(@"(?=\n?\z)"); continue;
                        case 'h': EmitAtom("[" + HexBody + "]"); continue;
                        case 'H': EmitAtom("[^" + HexBody + "]"); continue;
                        case 'w': EmitAtom(WordClass); continue;
                        case 'W': EmitAtom(NonWordClass); continue;
                        case 'd': EmitAtom(@"\p{Nd}"); continue;
                        case 'D': EmitAtom(@"\P{Nd}"); continue;
                        case 's': EmitAtom("[" + WhiteSpaceBody + "]"); continue;
                        case 'S': EmitAtom("[^" + WhiteSpaceBody + "]"); continue;
                        case 'b': EmitAtom($"(?:(?<!{WordClass})(?={WordClass})|(?<={WordClass})(?!{WordClass}))"); continue;
                        case 'B': EmitAtom($"(?:(?<!{WordClass})(?!{WordClass})|(?<={WordClass})(?={WordClass}))"); continue;
                    }
                    if (next < 128 && char.IsAsciiDigit((char)next)) { EmitAtom("\\" + (char)next); continue; }
                    if (next < 128 && char.IsAsciiLetter((char)next))
                    {
                        if (next == 'k') { EmitAtom("\\k"); continue; }
                        throw Error($"escape \\{(char)next}", i - 2);
                    }
                    EmitAtom(LiteralChar(next));
                    continue;
                }
                switch (c)
                {
                    case '[':
                    {
                        var parsed = ParseClass(i, _asciiFold, true, 1);
                        EmitAtom(parsed.atom);
                        i = parsed.end;
                        continue;
                    }
                    case ']': EmitAtom(@"\]"); i++; continue;
                    case '.': EmitAtom(@"[^\n]"); i++; continue;
                    case '^': EmitAtom(@"(?:^|(?<=\n))"); i++; continue;
                    case '$': EmitAtom(@"(?=\n|\z)"); i++; continue;
                    case '(':
                    {
                        string prefix, outPrefix;
                        bool fold = false;
                        if (string.CompareOrdinal(_src, i, "(?i:", 0, 4) == 0) { prefix = "(?i:"; outPrefix = "(?:"; fold = true; }
                        else
                        {
                            var m = Regex.Match(_src.Substring(i), @"^\(\?(?:<[=!]|<[A-Za-z_][A-Za-z0-9_]*>|[:=!>])");
                            if (m.Success) { prefix = m.Value; outPrefix = prefix == "(?>" ? "(?:" : prefix; }
                            else if (i + 1 < _src.Length && _src[i + 1] == '?') throw Error("group syntax \"" + _src.Substring(i, Math.Min(4, _src.Length - i)) + "\"", i);
                            else { prefix = "("; outPrefix = "("; }
                        }
                        groupStates.Push((_out.Length, _asciiFold));
                        if (fold) _asciiFold = true;
                        _out.Append(outPrefix);
                        _lastWasQuantifier = false;
                        i += prefix.Length;
                        continue;
                    }
                    case ')':
                        _out.Append(')');
                        if (groupStates.Count > 0) (_atomStart, _asciiFold) = groupStates.Pop();
                        else { _atomStart = -1; _asciiFold = false; }
                        _lastWasQuantifier = false;
                        i++;
                        continue;
                    case '|':
                        _out.Append('|');
                        _atomStart = -1;
                        _lastWasQuantifier = false;
                        i++;
                        continue;
                    case '{':
                    {
                        var m = Regex.Match(_src.Substring(i), @"^\{(\d+(?:,\d*)?|,\d+)\}");
                        if (!m.Success || _atomStart < 0) { EmitAtom(@"\{"); i++; continue; }
                        string body = m.Groups[1].Value.StartsWith(',') ? "0" + m.Groups[1].Value : m.Groups[1].Value;
                        i += m.Length;
                        if (i < _src.Length && (_src[i] == '+' || _src[i] == '*'))
                        {
                            string atom = _out.ToString(_atomStart, _out.Length - _atomStart);
                            _out.Length = _atomStart;
                            _out.Append("(?:").Append(atom).Append('{').Append(body).Append("})").Append(_src[i]);
                            i++;
                        }
                        else _out.Append('{').Append(body).Append('}');
                        _lastWasQuantifier = true;
                        continue;
                    }
                    case '}': EmitAtom(@"\}"); i++; continue;
                    case '+':
                        if (_lastWasQuantifier) { i++; continue; } // possessive: Tokenizers.js treats as greedy
                        _out.Append('+');
                        _lastWasQuantifier = true;
                        i++;
                        continue;
                    case '*':
                    case '?':
                        _out.Append(c);
                        _lastWasQuantifier = true;
                        i++;
                        continue;
                    default:
                        EmitAtom(_asciiFold && c < 128 && char.IsAsciiLetter(c) ? FoldLetter(c) : LiteralChar(cp));
                        i += CharLen(cp);
                        continue;
                }
            }
            return _out.ToString();
        }

        int ParseHex(string body, int index)
        {
            if (body.Length is 0 or > 8 || !body.All(char.IsAsciiHexDigit)) throw Error("bad hex escape", index);
            return Convert.ToInt32(body, 16);
        }

        string PropertyAtom(bool negated, string name)
        {
            string cat = CategoryName(name, _src);
            return cat switch
            {
                "White_Space" => negated ? "[^" + WhiteSpaceBody + "]" : "[" + WhiteSpaceBody + "]",
                "Word" => negated ? NonWordClass : WordClass,
                "Any" => negated ? "(?!)" : AnyChar,
                "LC" => negated ? @"[^\p{Lu}\p{Ll}\p{Lt}]" : @"[\p{Lu}\p{Ll}\p{Lt}]",
                _ => (negated ? @"\P{" : @"\p{") + cat + "}",
            };
        }

        // Adds a property to a class operand: positive ones join the fragment, complements become atoms.
        void ClassProperty(Operand op, bool negated, string name)
        {
            string cat = CategoryName(name, _src);
            switch (cat)
            {
                case "White_Space":
                    if (negated) op.Alternatives.Add("[^" + WhiteSpaceBody + "]"); else op.Fragment.Append(WhiteSpaceBody);
                    break;
                case "Word":
                    if (negated) op.Alternatives.Add("[^" + WordBodyInClass + "]"); else op.Fragment.Append(WordBodyInClass);
                    break;
                case "Any":
                    if (!negated) op.Alternatives.Add(AnyChar);
                    break;
                case "LC":
                    if (negated) op.Alternatives.Add(@"[^\p{Lu}\p{Ll}\p{Lt}]"); else op.Fragment.Append(@"\p{Lu}\p{Ll}\p{Lt}");
                    break;
                default:
                    op.Fragment.Append(negated ? @"\P{" : @"\p{").Append(cat).Append('}');
                    break;
            }
        }

        (string atom, int end) ParseClass(int start, bool asciiFold, bool applyFold, int depth)
        {
            if (depth > 256) throw Error("character classes nested too deeply", start);
            int i = start + 1;
            bool negated = i < _src.Length && _src[i] == '^';
            if (negated) i++;
            int firstContent = i;
            var operands = new List<Operand> { new() };
            var op = operands[0];
            int pendingRangeStart = -1; // code point waiting for "-x"
            int lastScalar = -1;        // last single code point appended (a range may start from it)

            void AddScalar(int v)
            {
                if (pendingRangeStart >= 0)
                {
                    if (v < pendingRangeStart) throw Error("reversed range in character class", i);
                    op.Fragment.Append(LiteralChar(pendingRangeStart)).Append('-').Append(LiteralChar(v));
                    pendingRangeStart = -1;
                    lastScalar = -1;
                    return;
                }
                if (lastScalar >= 0) op.Fragment.Append(LiteralChar(lastScalar));
                lastScalar = v;
            }
            void FlushScalar()
            {
                if (pendingRangeStart >= 0) throw Error("range with a set-valued end in character class", i);
                if (lastScalar >= 0) { op.Fragment.Append(LiteralChar(lastScalar)); lastScalar = -1; }
            }

            while (i < _src.Length)
            {
                char c = _src[i];
                int cp = CodePointAt(i);
                if (c == '\\')
                {
                    var braced = Braced(i);
                    if (braced is { } b)
                    {
                        if (b.kind is 'x' or 'u') AddScalar(ParseHex(b.body, i));
                        else { FlushScalar(); ClassProperty(op, b.kind == 'P', b.body); }
                        i += b.length;
                        continue;
                    }
                    var fixedCp = FixedWidthEscape(i, out var fixedText);
                    if (fixedCp is { } fv) { AddScalar(fv); i += fixedText.Length; continue; }
                    if (i + 1 >= _src.Length) throw Error("unterminated escape in character class", i);
                    int next = CodePointAt(i + 1);
                    i += 1 + CharLen(next);
                    switch (next)
                    {
                        case 'n': AddScalar('\n'); continue;
                        case 'r': AddScalar('\r'); continue;
                        case 't': AddScalar('\t'); continue;
                        case 'f': AddScalar('\f'); continue;
                        case 'v': AddScalar('\v'); continue;
                        case 'a': AddScalar(7); continue;
                        case 'e': AddScalar(27); continue;
                        case 'h': FlushScalar(); op.Fragment.Append(HexBody); continue;
                        case 'H': FlushScalar(); op.Alternatives.Add("[^" + HexBody + "]"); continue;
                        case 'w': FlushScalar(); op.Fragment.Append(WordBodyInClass); continue;
                        case 'W': FlushScalar(); op.Alternatives.Add("[^" + WordBodyInClass + "]"); continue;
                        case 'd': FlushScalar(); op.Fragment.Append(@"\p{Nd}"); continue;
                        case 'D': FlushScalar(); op.Fragment.Append(@"\P{Nd}"); continue;
                        case 's': FlushScalar(); op.Fragment.Append(WhiteSpaceBody); continue;
                        case 'S': FlushScalar(); op.Alternatives.Add("[^" + WhiteSpaceBody + "]"); continue;
                    }
                    if (next < 128 && char.IsAsciiLetterOrDigit((char)next)) throw Error($"escape \\{(char)next} in character class", i - 2);
                    AddScalar(next);
                    continue;
                }
                if (c == ']' && i != firstContent)
                {
                    FlushScalar();
                    if (op.Empty) throw Error(operands.Count > 1 ? "empty intersection operand" : "empty character class", i);
                    string first = operands[0].Compile();
                    string positive = first;
                    if (operands.Count > 1)
                    {
                        var sb = new StringBuilder("(?:");
                        for (int j = 1; j < operands.Count; j++) sb.Append("(?=").Append(operands[j].Compile()).Append(')');
                        positive = sb.Append(first).Append(')').ToString();
                    }
                    bool direct = operands.Count == 1 && op.Alternatives.Count == 0;
                    string directFragment = op.Fragment.ToString();
                    if (asciiFold && applyFold)
                    {
                        string additions = AsciiFoldAdditions(positive);
                        if (additions.Length > 0)
                        {
                            if (direct) { directFragment += additions; positive = "[" + directFragment + "]"; }
                            else positive = "(?:" + positive + "|[" + additions + "])";
                        }
                    }
                    string atom = negated ? (direct ? "[^" + directFragment + "]" : "(?:(?!" + positive + ")" + AnyChar + ")") : positive;
                    return (atom, i + 1);
                }
                if (c == '&' && i + 1 < _src.Length && _src[i + 1] == '&')
                {
                    FlushScalar();
                    if (op.Empty) throw Error("empty intersection operand", i);
                    op = new Operand();
                    operands.Add(op);
                    i += 2;
                    continue;
                }
                if (c == '[')
                {
                    var posix = Regex.Match(_src.Substring(i), @"^\[:(\^?)([A-Za-z]+):\]");
                    if (posix.Success)
                    {
                        FlushScalar();
                        bool neg = posix.Groups[1].Value == "^";
                        string body = posix.Groups[2].Value switch
                        {
                            "digit" => @"\p{Nd}",
                            "space" => WhiteSpaceBody,
                            "blank" => @"\t\p{Zs}",
                            "punct" => @"\p{P}\p{S}",
                            "cntrl" => @"\p{Cc}",
                            "word" => WordBodyInClass,
                            "xdigit" => HexBody,
                            var other => throw Error($"POSIX class [:{other}:]", i),
                        };
                        if (neg) op.Alternatives.Add("[^" + body + "]"); else op.Fragment.Append(body);
                        i += posix.Length;
                        continue;
                    }
                    FlushScalar();
                    var nested = ParseClass(i, asciiFold, false, depth + 1);
                    op.Alternatives.Add(nested.atom);
                    i = nested.end;
                    continue;
                }
                if (c == '-' && lastScalar >= 0 && pendingRangeStart < 0 && i + 1 < _src.Length && _src[i + 1] != ']'
                    && !(i + 2 < _src.Length && _src[i + 1] == '&' && _src[i + 2] == '&'))
                {
                    pendingRangeStart = lastScalar;
                    lastScalar = -1;
                    i++;
                    continue;
                }
                AddScalar(cp);
                i += CharLen(cp);
            }
            throw Error("unterminated character class", start);
        }

        static string AsciiFoldAdditions(string positiveAtom)
        {
            var membership = new Regex("^(?:" + positiveAtom + ")$", RegexOptions.CultureInvariant);
            var sb = new StringBuilder();
            for (int k = 0; k < 26; k++)
            {
                char upper = (char)('A' + k), lower = (char)('a' + k);
                bool hu = membership.IsMatch(upper.ToString()), hl = membership.IsMatch(lower.ToString());
                if (hu != hl) sb.Append(hu ? lower : upper);
            }
            return sb.ToString();
        }
    }
}

/// <summary>
/// A .NET regex matched over code points rather than UTF-16 units: astral characters are replaced,
/// for matching only, by one BMP stand-in of the same general category (so <c>\p{L}</c>, <c>[^...]</c>
/// and <c>.</c> see one character), and match positions are mapped back to the original string.
/// Translated patterns never contain astral literals, so no pattern can tell a stand-in from the original.
/// </summary>
internal sealed class CodePointRegex
{
    readonly Regex _regex;
    static readonly char[] StandIns = BuildStandIns();

    public CodePointRegex(string dotnetPattern)
    {
        _regex = new Regex(dotnetPattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);
    }

    /// <summary>Appends (start, length) of every match (empty ones included) in the original text.</summary>
    public void Matches(ReadOnlySpan<char> text, List<(int Start, int Length)> into)
    {
        into.Clear();
        if (!HasSurrogatePair(text))
        {
            foreach (var m in _regex.EnumerateMatches(text)) into.Add((m.Index, m.Length));
            return;
        }
        var (mapped, offsets) = MapAstral(text);
        foreach (var m in _regex.EnumerateMatches(mapped))
        {
            int s = offsets[m.Index], e = offsets[m.Index + m.Length];
            into.Add((s, e - s));
        }
    }

    /// <summary>String.replaceAll(regex, content) with JS-like $ substitutions ($&amp;, $1, $$).</summary>
    public string Replace(string text, string replacement)
    {
        var ranges = new List<(int Start, int Length)>();
        Matches(text, ranges);
        if (ranges.Count == 0) return text;
        var sb = new StringBuilder(text.Length);
        int prev = 0;
        foreach (var (s, l) in ranges)
        {
            sb.Append(text, prev, s - prev);
            AppendSubstitution(sb, replacement, text.Substring(s, l));
            prev = s + l;
        }
        sb.Append(text, prev, text.Length - prev);
        return sb.ToString();
    }

    static void AppendSubstitution(StringBuilder sb, string replacement, string matched)
    {
        if (replacement.IndexOf('$') < 0) { sb.Append(replacement); return; }
        for (int i = 0; i < replacement.Length; i++)
        {
            char c = replacement[i];
            if (c == '$' && i + 1 < replacement.Length)
            {
                char n = replacement[i + 1];
                if (n == '$') { sb.Append('$'); i++; continue; }
                if (n == '&') { sb.Append(matched); i++; continue; }
            }
            sb.Append(c);
        }
    }

    internal static bool HasSurrogatePair(ReadOnlySpan<char> text) =>
        text.IndexOfAnyInRange('\uD800', '\uDFFF') >= 0; // vectorized; the regex itself costs far more

    /// <summary>Replaces each valid surrogate pair by one stand-in; offsets[k] = original index of mapped char k (plus end).</summary>
    internal static (string mapped, int[] offsets) MapAstral(ReadOnlySpan<char> text)
    {
        var sb = new StringBuilder(text.Length);
        var offsets = new List<int>(text.Length + 1);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            offsets.Add(i);
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                int cp = char.ConvertToUtf32(c, text[i + 1]);
                sb.Append(StandInFor(cp));
                i++;
            }
            else sb.Append(c);
        }
        offsets.Add(text.Length);
        return (sb.ToString(), offsets.ToArray());
    }

    internal static char StandInFor(int codePoint)
    {
        // Circled/squared Latin capitals (So) are Alphabetic: use a BMP So that is Alphabetic too.
        if (codePoint is >= 0x1F130 and <= 0x1F189) return '\u24B6';
        return StandIns[(int)CharUnicodeInfo.GetUnicodeCategory(codePoint)];
    }

    static char[] BuildStandIns()
    {
        var result = new char[32];
        var found = new bool[32];
        // Pick, for every general category, the first BMP character above Latin-1 that has it and is not
        // White_Space, not ASCII-foldable, and not one of the Alphabetic circled letters.
        for (int c = 0x100; c <= 0xFFFF; c++)
        {
            if (c is >= 0xD800 and <= 0xDFFF) continue;
            if (c is >= 0x24B6 and <= 0x24E9) continue;
            if (c is 0x1680 or (>= 0x2000 and <= 0x200A) or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 or 0xFEFF) continue;
            if (c == 0x212A || c == 0x017F || c == 0x0130 || c == 0x0131) continue; // case-fold to ASCII
            int cat = (int)CharUnicodeInfo.GetUnicodeCategory((char)c);
            if (!found[cat]) { found[cat] = true; result[cat] = (char)c; }
        }
        for (int k = 0; k < result.Length; k++) if (!found[k]) result[k] = '\u0378';
        return result;
    }
}
