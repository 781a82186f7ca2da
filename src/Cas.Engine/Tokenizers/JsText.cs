using System.Globalization;
using System.Text;

namespace Cas.Engine.Tokenizers;

/// <summary>JavaScript string behaviours (trim for the chat templates, toLowerCase checked against the JS goldens).</summary>
internal static class JsText
{
    /// <summary>JavaScript WhiteSpace or LineTerminator (what String.prototype.trim removes).</summary>
    public static bool IsWhiteSpace(char c) => c switch
    {
        '\t' or '\n' or '\v' or '\f' or '\r' or ' ' or '\u00A0' or '\u1680' or '\u2028' or '\u2029'
            or '\u202F' or '\u205F' or '\u3000' or '\uFEFF' => true,
        >= '\u2000' and <= '\u200A' => true,
        _ => false,
    };

    public static string Trim(string s) => RustText.Trim(s, true, true, IsWhiteSpace);

    /// <summary>
    /// String.prototype.toLowerCase: simple lowercase mapping per code point, plus the unconditional
    /// special casing (U+0130 → "i̇") and the Final_Sigma rule for U+03A3.
    /// </summary>
    public static string ToLower(string s)
    {
        bool ascii = true;
        foreach (char c in s) if (c >= 0x80) { ascii = false; break; }
        if (ascii) return s.ToLowerInvariant();
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length;)
        {
            if (!Rune.TryGetRuneAt(s, i, out var r)) { sb.Append(s[i]); i++; continue; }
            if (r.Value == 0x130) sb.Append("i\u0307");
            else if (r.Value == 0x3A3) sb.Append(IsFinalSigma(s, i) ? '\u03C2' : '\u03C3');
            else sb.Append(Rune.ToLowerInvariant(r).ToString());
            i += r.Utf16SequenceLength;
        }
        return sb.ToString();
    }

    // Final_Sigma: preceded by a cased letter (skipping case-ignorables) and not followed by one.
    static bool IsFinalSigma(string s, int at)
    {
        int i = at;
        bool before = false;
        while (i > 0)
        {
            var r = RuneBefore(s, i);
            i -= r.Utf16SequenceLength;
            if (IsCaseIgnorable(r)) continue;
            before = IsCased(r);
            break;
        }
        if (!before) return false;
        i = at + 1;
        while (i < s.Length && Rune.TryGetRuneAt(s, i, out var r))
        {
            i += r.Utf16SequenceLength;
            if (IsCaseIgnorable(r)) continue;
            return !IsCased(r);
        }
        return true;
    }

    static Rune RuneBefore(string s, int end)
    {
        if (end >= 2 && char.IsLowSurrogate(s[end - 1]) && char.IsHighSurrogate(s[end - 2]))
            return new Rune(s[end - 2], s[end - 1]);
        return Rune.IsValid(s[end - 1]) ? new Rune(s[end - 1]) : Rune.ReplacementChar;
    }

    static bool IsCased(Rune r)
    {
        var cat = Rune.GetUnicodeCategory(r);
        return cat is UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter;
    }

    static bool IsCaseIgnorable(Rune r)
    {
        if (r.Value is '\'' or '.' or ':' or '^' or '`' or 0xB7 or 0x2018 or 0x2019 or 0x2024 or 0x2027) return true;
        var cat = Rune.GetUnicodeCategory(r);
        return cat is UnicodeCategory.NonSpacingMark or UnicodeCategory.EnclosingMark or UnicodeCategory.Format
            or UnicodeCategory.ModifierLetter or UnicodeCategory.ModifierSymbol;
    }
}
