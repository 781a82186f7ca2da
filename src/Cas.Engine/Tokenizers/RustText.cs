using System.Globalization;

namespace Cas.Engine.Tokenizers;

/// <summary>
/// The character classes of Rust's <c>char</c> that Hugging Face's Rust tokenizers crate (the library the
/// models were trained with) uses: <c>is_whitespace</c> (Unicode White_Space: U+0085 in, U+FEFF out) and
/// <c>is_numeric</c> (general categories Nd, Nl, No: ½, Ⅻ, ١ and 𝟏 included).
/// </summary>
internal static class RustText
{
    public static bool IsWhiteSpace(int cp) => cp switch
    {
        >= 0x09 and <= 0x0D or 0x20 or 0x85 or 0xA0 or 0x1680 or (>= 0x2000 and <= 0x200A)
            or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        _ => false,
    };

    public static bool IsNumeric(int cp)
    {
        if (cp < 0x80) return (uint)(cp - '0') <= 9;
        var cat = CharUnicodeInfo.GetUnicodeCategory(cp);
        return cat is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;
    }

    /// <summary>The code point at i (a lone surrogate counts as itself) and its UTF-16 length.</summary>
    public static int CodePointAt(ReadOnlySpan<char> s, int i, out int length)
    {
        char c = s[i];
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
        {
            length = 2;
            return char.ConvertToUtf32(c, s[i + 1]);
        }
        length = 1;
        return c;
    }

    public static string TrimStart(string s) => Trim(s, true, false, c => IsWhiteSpace(c));

    public static string TrimEnd(string s) => Trim(s, false, true, c => IsWhiteSpace(c));

    /// <summary>Removes the leading and/or trailing characters that <paramref name="isSpace"/> accepts (same string when none).</summary>
    internal static string Trim(string s, bool start, bool end, Func<char, bool> isSpace)
    {
        int i = 0, e = s.Length;
        if (start) while (i < e && isSpace(s[i])) i++;
        if (end) while (e > i && isSpace(s[e - 1])) e--;
        return i == 0 && e == s.Length ? s : s[i..e];
    }

    /// <summary>
    /// The text with every lone surrogate replaced by U+FFFD (a Rust string cannot hold one; UTF-8 encoding
    /// writes U+FFFD for it). Returns the same string when there is none (a vectorized scan).
    /// </summary>
    public static string ReplaceLoneSurrogates(string text)
    {
        int first = text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF');
        if (first < 0) return text;
        char[]? copy = null;
        for (int i = first; i < text.Length; i++)
        {
            char c = text[i];
            if (!char.IsSurrogate(c)) continue;
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            copy ??= text.ToCharArray();
            copy[i] = '\uFFFD';
        }
        return copy == null ? text : new string(copy);
    }
}
