using Cas.Engine.Tokenizers;

namespace Cas.SelfStudy;

/// <summary>Stop strings over generated token ids.</summary>
static class StopText
{
    /// <summary>Tokens decoded at the end of the output to look for a stop string (stops are short).</summary>
    const int Window = 24;

    /// <summary>A StopAfter check for the Generator: true once the tail of the output contains a stop string.</summary>
    public static Func<IReadOnlyList<int>, bool>? Detector(ITokenizer tokenizer, IReadOnlyList<string> stops)
    {
        if (stops.Count == 0) return null;
        var buffer = new int[Window];
        return generated =>
        {
            int n = Math.Min(Window, generated.Count);
            for (int i = 0; i < n; i++) buffer[i] = generated[generated.Count - n + i];
            string tail = tokenizer.Decode(buffer.AsSpan(0, n));
            foreach (var s in stops)
                if (tail.Contains(s, StringComparison.Ordinal)) return true;
            return false;
        };
    }

    /// <summary>
    /// How many leading tokens of <paramref name="ids"/> to keep so that the kept text ends before the first
    /// stop string (all of them when there is none). A token that straddles the stop's start is dropped.
    /// </summary>
    public static int KeepBeforeStop(ITokenizer tokenizer, ReadOnlySpan<int> ids, IReadOnlyList<string> stops)
    {
        if (stops.Count == 0 || ids.IsEmpty) return ids.Length;
        string full = tokenizer.Decode(ids);
        int cut = -1;
        foreach (var s in stops)
        {
            int i = full.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut < 0) return ids.Length;
        int keep = ids.Length;
        while (keep > 0 && tokenizer.Decode(ids[..keep]).Length > cut) keep--;
        return keep;
    }
}
