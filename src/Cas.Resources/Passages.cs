using System.Text.RegularExpressions;

namespace Cas.Resources;

/// <summary>
/// A text cut into consecutive passages of whole sentences that each fit a token budget: the one splitter the demo
/// (its story openings) and the dataset evaluation (documents too long for the model, split into documents that fit)
/// share. The token count is the caller's (any tokenizer), so this library stays free of the engine.
/// </summary>
public static class Passages
{
    static readonly Regex Space = new(@"\s+", RegexOptions.Compiled);
    static readonly Regex SentenceEnd = new(@"(?<=[.!?][""”’')]?)\s+", RegexOptions.Compiled);

    /// <summary>
    /// The whole text as consecutive passages of whole sentences, each of at most <paramref name="maxTokens"/> tokens by
    /// <paramref name="countTokens"/> (a sentence longer than that is cut between words; a single word too long is cut
    /// between characters). Whitespace is collapsed to single spaces; nothing else is dropped: the passages joined by
    /// single spaces are the whitespace-collapsed text (except where a word had to be cut).
    /// </summary>
    public static IEnumerable<string> Split(string text, Func<string, int> countTokens, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(text); ArgumentNullException.ThrowIfNull(countTokens);
        if (maxTokens < 1) throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, "a passage must allow at least one token.");
        text = Space.Replace(text, " ").Trim();
        if (text.Length == 0) yield break;
        if (countTokens(text) <= maxTokens) { yield return text; yield break; }
        var pieces = new Queue<string>(SentenceEnd.Split(text));
        string current = "";
        while (pieces.Count > 0)
        {
            string piece = pieces.Dequeue();
            if (piece.Length == 0) continue;
            string next = current.Length == 0 ? piece : current + " " + piece;
            if (countTokens(next) <= maxTokens) { current = next; continue; }
            if (current.Length > 0) { yield return current; current = ""; pieces = new Queue<string>(pieces.Prepend(piece)); continue; }
            // One piece alone is too long: split it in halves (between words if it has any, else between characters).
            if (piece.Length == 1) throw new ArgumentException($"the character '{piece}' alone counts more than {maxTokens} tokens; the text cannot be split to fit.", nameof(maxTokens));
            int cut = piece.LastIndexOf(' ', piece.Length / 2);
            if (cut <= 0) cut = piece.IndexOf(' ', piece.Length / 2);
            if (cut <= 0) cut = Math.Max(1, piece.Length / 2);
            pieces = new Queue<string>(pieces.Prepend(piece[cut..].TrimStart()).Prepend(piece[..cut].TrimEnd()));
        }
        if (current.Length > 0) yield return current;
    }
}
