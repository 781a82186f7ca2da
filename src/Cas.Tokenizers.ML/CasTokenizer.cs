using System.Buffers;
using Cas.Engine.Tokenizers;
using Microsoft.ML.Tokenizers;

namespace Cas.Tokenizers.ML;

/// <summary>
/// A Hugging Face tokenizer.json tokenizer (<see cref="HfTokenizer"/>: ids identical to HF's Rust tokenizers)
/// as a <see cref="Microsoft.ML.Tokenizers.Tokenizer"/>. Microsoft.ML.Tokenizers 2.0.1 cannot load these
/// files itself (no ignore_merges, byte_fallback or NFC; .NET regexes miss astral letters).
/// <list type="bullet">
/// <item>Normalization and pre-tokenization are part of the model's tokenizer and always applied: the
/// <c>considerNormalization</c> / <c>considerPreTokenization</c> flags are ignored, and
/// <c>normalizedText</c> is always null because every offset refers to the text as given.</item>
/// <item>Offsets are UTF-16 ranges of the input; tokens that share a character (the byte tokens of an
/// emoji) each get that character's range. Special tokens written in the text are recognised; no BOS/EOS
/// is added.</item>
/// <item>A token budget never cuts between tokens that share a character: fewer tokens are taken instead.</item>
/// </list>
/// </summary>
public sealed class CasTokenizer : Tokenizer
{
    public HfTokenizer Inner { get; }

    public CasTokenizer(HfTokenizer inner) => Inner = inner ?? throw new ArgumentNullException(nameof(inner));

    /// <summary>Loads a tokenizer.json file (a tokenizer_config.json beside it supplies BOS/EOS).</summary>
    public static CasTokenizer FromFile(string tokenizerJsonPath) => new(HfTokenizer.FromFile(tokenizerJsonPath));

    static string TextOf(string? text, ReadOnlySpan<char> span) => text ?? span.ToString();

    protected override EncodeResults<EncodedToken> EncodeToTokens(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        string s = TextOf(text, textSpan);
        var ids = Inner.Encode(s, out var spans);
        int n = Take(spans, settings.MaxTokenCount);
        var tokens = new EncodedToken[n];
        for (int i = 0; i < n; i++)
            tokens[i] = new EncodedToken(ids[i], Inner.IdToToken(ids[i]) ?? "", new Range(spans[i].Start, spans[i].End));
        return new EncodeResults<EncodedToken> { Tokens = tokens, NormalizedText = null, CharsConsumed = Consumed(s, spans, n) };
    }

    protected override EncodeResults<int> EncodeToIds(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        string s = TextOf(text, textSpan);
        if (settings.MaxTokenCount == int.MaxValue)
        {
            var all = Inner.Encode(s);
            return new EncodeResults<int> { Tokens = all, NormalizedText = null, CharsConsumed = s.Length };
        }
        var ids = Inner.Encode(s, out var spans);
        int n = Take(spans, settings.MaxTokenCount);
        return new EncodeResults<int> { Tokens = n == ids.Length ? ids : ids[..n], NormalizedText = null, CharsConsumed = Consumed(s, spans, n) };
    }

    protected override int CountTokens(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings)
    {
        string s = TextOf(text, textSpan);
        if (settings.MaxTokenCount == int.MaxValue) return Inner.CountTokens(s);
        Inner.Encode(s, out var spans);
        return Take(spans, settings.MaxTokenCount);
    }

    protected override int GetIndexByTokenCount(string? text, ReadOnlySpan<char> textSpan, EncodeSettings settings, bool fromEnd,
        out string? normalizedText, out int tokenCount)
    {
        normalizedText = null;
        string s = TextOf(text, textSpan);
        Inner.Encode(s, out var spans);
        int max = settings.MaxTokenCount;
        if (!fromEnd)
        {
            tokenCount = Take(spans, max);
            return Consumed(s, spans, tokenCount);
        }
        // The last tokens: start at j and move right while token j shares a character with token j-1.
        int j = spans.Length - Math.Min(max, spans.Length);
        while (j > 0 && j < spans.Length && spans[j].Start < spans[j - 1].End) j++;
        tokenCount = spans.Length - j;
        return j == spans.Length ? s.Length : spans[j].Start;
    }

    /// <summary>How many of the first tokens fit in max without splitting a character shared with the next token.</summary>
    static int Take(TokenSpan[] spans, int max)
    {
        if (max <= 0) throw new ArgumentOutOfRangeException(nameof(max), "The maximum token count must be greater than 0.");
        int k = Math.Min(max, spans.Length);
        while (k > 0 && k < spans.Length && spans[k].Start < spans[k - 1].End) k--;
        return k;
    }

    static int Consumed(string s, TokenSpan[] spans, int k) => k == spans.Length ? s.Length : k == 0 ? 0 : spans[k - 1].End;

    public override string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        return Inner.Decode(ids as int[] ?? ids.ToArray());
    }

    /// <summary>
    /// Writes Decode(ids[..idsConsumed]) for the most leading ids whose text fits and ends on a whole
    /// character (an id whose bytes stop inside a character is left for the next call). As with any decode of
    /// a slice, a SentencePiece-style decoder (Llama 2) drops the leading space of the slice's first token.
    /// </summary>
    public override OperationStatus Decode(IEnumerable<int> ids, Span<char> destination, out int idsConsumed, out int charsWritten)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var all = ids as int[] ?? ids.ToArray();
        string full = Inner.Decode(all);
        if (full.Length <= destination.Length)
        {
            full.CopyTo(destination);
            idsConsumed = all.Length;
            charsWritten = full.Length;
            return OperationStatus.Done;
        }
        // The longest prefix of ids whose streaming-safe text fits (prefix texts grow with the prefix).
        int lo = 0, hi = all.Length;
        string best = "";
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            string t = Inner.DecodePrefix(all.AsSpan(0, mid));
            if (t.Length <= destination.Length && full.StartsWith(t, StringComparison.Ordinal)) { lo = mid; best = t; }
            else hi = mid - 1;
        }
        // Ids whose bytes were held back (an unfinished character) are not consumed: the caller resends them.
        while (lo > 0 && Inner.Decode(all.AsSpan(0, lo)) != Inner.DecodePrefix(all.AsSpan(0, lo))) lo--;
        best = Inner.Decode(all.AsSpan(0, lo));
        best.CopyTo(destination);
        idsConsumed = lo;
        charsWritten = best.Length;
        return OperationStatus.DestinationTooSmall;
    }
}
