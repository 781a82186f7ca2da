using System.Text.RegularExpressions;

namespace Cas.Eval;

/// <summary>
/// ROUGE-L (Lin, 2004): the F-measure of the longest common subsequence of two texts' word tokens. Written here because
/// it is a formula of a few lines (no library on this machine computes it): tokens are the maximal runs of letters and
/// digits, lower-cased (punctuation and whitespace separate them and are dropped); P = LCS / |candidate|,
/// R = LCS / |reference|, F = 2PR / (P + R); 0 when either text has no token (so two empty texts score 0).
/// </summary>
public static class RougeL
{
    static readonly Regex Word = new(@"[\p{L}\p{N}]+", RegexOptions.Compiled);

    /// <summary>The lower-cased word tokens ROUGE-L compares.</summary>
    public static string[] Tokens(string text) => Word.Matches(text ?? "").Select(m => m.Value.ToLowerInvariant()).ToArray();

    /// <summary>Length of the longest common subsequence (dynamic programming over two rows, O(|a|·|b|) time, O(|b|) memory).</summary>
    public static int Lcs(IReadOnlyList<string> a, IReadOnlyList<string> b)
    {
        if (a.Count == 0 || b.Count == 0) return 0;
        var prev = new int[b.Count + 1];
        var cur = new int[b.Count + 1];
        for (int i = 1; i <= a.Count; i++)
        {
            for (int j = 1; j <= b.Count; j++)
                cur[j] = string.Equals(a[i - 1], b[j - 1], StringComparison.Ordinal) ? prev[j - 1] + 1 : Math.Max(prev[j], cur[j - 1]);
            (prev, cur) = (cur, prev);
        }
        return prev[b.Count];
    }

    /// <summary>ROUGE-L F-measure of <paramref name="candidate"/> against one reference.</summary>
    public static double F(string candidate, string reference)
    {
        var c = Tokens(candidate);
        var r = Tokens(reference);
        int lcs = Lcs(c, r);
        if (lcs == 0) return 0;
        double p = (double)lcs / c.Length, rec = (double)lcs / r.Length;
        return 2 * p * rec / (p + rec);
    }

    /// <summary>The best F-measure over several references (SQuALITY has four per question); 0 without references.</summary>
    public static double Best(string candidate, IEnumerable<string> references)
    {
        double best = 0;
        foreach (var r in references) best = Math.Max(best, F(candidate, r));
        return best;
    }
}
