using System.Globalization;
using System.Text;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>
/// A generated corpus aimed at the edges of tokenizer.json pipelines (deterministic, nothing committed):
/// samples of every Unicode general category (BMP and astral) alone and in context, astral letters and
/// digits, NEL/BOM/ZWJ/ZWSP, combining marks and composition, very long words and digit runs, special tokens
/// glued to text, and random mixtures of all of these.
/// </summary>
internal static class TokenizerEdgeCorpus
{
    public static readonly string[] Specials =
    [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|eot_id|>",
        "<|start_header_id|>", "<think>", "</think>",
    ];

    static readonly Lazy<string[]> Texts = new(Generate);
    public static string[] All => Texts.Value;

    static string[] Generate()
    {
        var texts = new List<string>();
        var fragments = new List<string>();

        // Every general category: up to 12 code points spread over the whole range (Cs as lone surrogates).
        var byCategory = new Dictionary<UnicodeCategory, List<int>>();
        for (int cp = 0; cp <= 0x10FFFF; cp++)
        {
            var cat = CharUnicodeInfo.GetUnicodeCategory(cp);
            (byCategory.TryGetValue(cat, out var l) ? l : byCategory[cat] = new List<int>()).Add(cp);
        }
        foreach (var (cat, cps) in byCategory.OrderBy(kv => kv.Key))
        {
            for (int k = 0; k < 12; k++)
            {
                int cp = cps[(int)((long)cps.Count * k / 12)];
                string c = cp is >= 0xD800 and <= 0xDFFF ? ((char)cp).ToString() : char.ConvertFromUtf32(cp);
                fragments.Add(c);
                texts.Add(c);
                texts.Add($"a{c}b {c}{c} 12{c}3 's{c}");
                texts.Add($" {c}\n{c}'ll {c}x");
            }
            texts.Add(cat + ": " + string.Concat(cps.Where((_, i) => i % Math.Max(1, cps.Count / 40) == 0).Take(40)
                .Select(cp => cp is >= 0xD800 and <= 0xDFFF ? ((char)cp).ToString() : char.ConvertFromUtf32(cp))));
        }

        string[] edges =
        [
            "𝐀𝐁𝐂 𝐚𝐛𝐜", "𝟏𝟐𝟑𝟒𝟓", "x𝟏y 𝟗𝟗 𝐀1", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𠀀𠀁 𪚥",
            "\u0085", "a\u0085b", " \u0085 ", "\u0085\u0085\n", "\uFEFFhello", "hello\uFEFF", " \uFEFF ", "\r\n\u0085x",
            "👨\u200D👩\u200D👧", "a\u200Db", "a\u200Bb", "a\u200Cb", "\u2028\u2029", "\u00A0x\u00A0", "\u3000全角",
            "e\u0301", "e\u0301\u0327", "A\u030A", "\u00C5", "\u212B", "\u1100\u1161\u11A8", "한국어", "क्षि", "ﬁ ﬂ ﬃ",
            "½ ¼ ¾", "Ⅻ ⅻ Ⅳ", "١٢٣ ۴۵۶", "٠١٢٣٤٥٦٧٨٩0", "²³¹", "①②③", "ΣΑΣ σας ΌΣΟΣ", "İstanbul ǅ ǈ", "ſ 'ſ K",
            "I'm you'RE they've I'LL we'd", "'s't're've'm'll'd", "  leading", "trailing  ", "\t\ttabs\t",
            "\n\n\n", "a\r\n\r\nb", "   \n   ", "$$$ ### @@@", "a--b__c..d", "\u0000\u0001\u007F", "\uE000\uF8FF",
        ];
        texts.AddRange(edges);
        fragments.AddRange(edges);

        // Very long words, digit runs and whitespace runs.
        texts.Add(new string('a', 5000));
        texts.Add(string.Concat(Enumerable.Repeat("ab", 3000)));
        texts.Add(string.Concat(Enumerable.Repeat("1234567890", 300)));
        texts.Add(string.Concat(Enumerable.Repeat("٣", 700)));
        texts.Add(string.Concat(Enumerable.Repeat("𝐀", 800)));
        texts.Add(string.Concat(Enumerable.Repeat("𝟏", 800)));
        texts.Add(new string(' ', 3000) + "x");
        texts.Add(new string('\n', 1000));
        texts.Add(string.Concat(Enumerable.Repeat("supercalifragilistic", 250)));
        texts.Add(string.Concat(Enumerable.Repeat("😀", 500)));

        // Special tokens glued to text.
        foreach (var s in Specials)
        {
            texts.Add($"x{s}y");
            texts.Add($" {s} ");
            texts.Add($"{s}{s}");
            texts.Add($"{s}hello{s}\n");
            texts.Add($"\u0085{s}\uFEFF");
            texts.Add($"12{s}34");
            fragments.Add(s);
        }

        // Random mixtures of the fragments above and some words.
        fragments.AddRange(["The", " the", "hello", " world", "123", " ", "  ", "\n", "'s", "!", "é", "你好", "\t"]);
        var rng = new Random(8);
        for (int k = 0; k < 400; k++)
        {
            var sb = new StringBuilder();
            int n = 2 + rng.Next(8);
            for (int j = 0; j < n; j++) sb.Append(fragments[rng.Next(fragments.Count)]);
            texts.Add(sb.ToString());
        }
        return texts.ToArray();
    }
}
