using System.Globalization;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>
/// The input classes on which Tokenizers.js (our second reference) and HF's Rust tokenizers (the reference,
/// what the models were trained with) give different ids. We follow Rust; a Tokenizers.js golden may differ
/// from our ids only on a text of one of these classes, and only where our ids equal Rust's.
/// Listed in src/Cas.Engine/Tokenizers/README.md.
/// </summary>
internal static class JsRustDisagreements
{
    /// <summary>The classes a text belongs to (empty when Tokenizers.js and Rust must agree on it).</summary>
    public static List<string> Classes(string text)
    {
        var found = new List<string>();
        if (text.Contains('\u0085') || text.Contains('\uFEFF'))
            found.Add("whitespace: U+0085 is White_Space for Rust (\\s, Strip, lstrip/rstrip), U+FEFF is whitespace for JavaScript");
        bool nonAsciiNumeric = false, nonAscii = false;
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] < 0x80) continue;
            nonAscii = true;
            int cp = char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? char.ConvertToUtf32(text[i], text[i + 1]) : text[i];
            if (CharUnicodeInfo.GetUnicodeCategory(cp) is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber)
                nonAsciiNumeric = true;
        }
        if (nonAsciiNumeric) found.Add("Digits: Rust splits every numeric character (Nd, Nl, No: ½, Ⅻ, ١, 𝟏), Tokenizers.js only ASCII 0-9");
        if (text.Contains('Σ')) found.Add("Lowercase: Rust maps Σ to σ everywhere, JavaScript to ς at the end of a word");
        if (nonAscii) found.Add("Whitespace pre-tokenizer: Rust's \\w is Unicode (letters, marks, digits of every script), Tokenizers.js's is [A-Za-z0-9_]");
        if (System.Text.RegularExpressions.Regex.Split(text, @"<\|[^|<>]*\|>|</?s>").Any(part => part.Length > 0 && part.Trim().Length == 0))
            found.Add("Prepend: Rust prepends only to a non-empty section, Tokenizers.js also to one that Strip left empty");
        return found;
    }
}
