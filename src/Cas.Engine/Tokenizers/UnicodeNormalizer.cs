using System.Text;

namespace Cas.Engine.Tokenizers;

/// <summary>The four Unicode normalization forms.</summary>
internal enum NormalForm { NFC, NFD, NFKC, NFKD }

/// <summary>
/// Unicode normalization (UAX #15) from embedded tables, because string.Normalize does nothing
/// under InvariantGlobalization. Canonical decomposition, canonical ordering, canonical composition,
/// Hangul handled algorithmically.
/// </summary>
internal static class UnicodeNormalizer
{
    const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
    const int LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

    sealed class Tables
    {
        public readonly Dictionary<int, byte> Ccc = new();
        public readonly Dictionary<int, int[]> Canonical = new();     // full (recursive) canonical decomposition
        public readonly Dictionary<int, int[]> Compatibility = new(); // full compatibility decomposition
        public readonly Dictionary<long, int> Compose = new();        // (first << 21 | second) -> composite
        /// <summary>Per form, the BMP characters that may change under it (see <see cref="BuildUnsafe"/>).</summary>
        public readonly bool[][] Unsafe = new bool[4][];
    }

    static readonly Lazy<Tables> Data = new(Load);

    static Tables Load()
    {
        var t = new Tables();
        var lines = UnicodeNormalizationData.Data.Split('\n');
        foreach (var r in lines[0][1..].Split(';'))
        {
            int dash = r.IndexOf('-'), colon = r.IndexOf(':');
            int s = Convert.ToInt32(r[..dash], 16), e = Convert.ToInt32(r[(dash + 1)..colon], 16);
            byte c = byte.Parse(r[(colon + 1)..]);
            for (int cp = s; cp <= e; cp++) t.Ccc[cp] = c;
        }
        var single = new Dictionary<int, (bool compat, int[] map)>();
        foreach (var item in lines[1][1..].Split(';'))
        {
            int k = 0;
            while (char.IsAsciiHexDigit(item[k])) k++;
            int cp = Convert.ToInt32(item[..k], 16);
            char flag = item[k];
            var map = item[(k + 1)..].Split(',').Select(h => Convert.ToInt32(h, 16)).ToArray();
            single[cp] = (flag == 'k', map);
            if (flag == 'p') t.Compose[((long)map[0] << 21) | (uint)map[1]] = cp;
        }
        foreach (var cp in single.Keys)
        {
            var canon = new List<int>();
            Expand(cp, single, false, canon);
            if (canon.Count != 1 || canon[0] != cp) t.Canonical[cp] = canon.ToArray();
            var compat = new List<int>();
            Expand(cp, single, true, compat);
            t.Compatibility[cp] = compat.ToArray();
        }
        var seconds = new HashSet<int>();
        foreach (var key in t.Compose.Keys) seconds.Add((int)(key & 0x1FFFFF));
        foreach (NormalForm f in Enum.GetValues<NormalForm>()) t.Unsafe[(int)f] = BuildUnsafe(t, f, seconds);
        return t;
    }

    // A BMP character is "unsafe" for a form when it could make the form differ from the input: it has a
    // decomposition, a non-zero combining class, could compose with what precedes it (composing forms),
    // is Hangul, or is a surrogate (astral characters take the full path). Text with no unsafe character
    // is already normalized.
    static bool[] BuildUnsafe(Tables t, NormalForm form, HashSet<int> seconds)
    {
        bool compat = form is NormalForm.NFKC or NormalForm.NFKD;
        bool composing = form is NormalForm.NFC or NormalForm.NFKC;
        var u = new bool[65536];
        for (int c = 0; c < 65536; c++)
        {
            u[c] = (c >= 0xD800 && c <= 0xDFFF) || (c >= 0x1100 && c <= 0x11FF) || (c >= SBase && c < SBase + SCount)
                || t.Ccc.ContainsKey(c)
                || (compat ? t.Compatibility.ContainsKey(c) : t.Canonical.ContainsKey(c))
                || (composing && seconds.Contains(c));
        }
        return u;
    }

    static void Expand(int cp, Dictionary<int, (bool compat, int[] map)> single, bool allowCompat, List<int> into)
    {
        if (cp >= SBase && cp < SBase + SCount) { HangulDecompose(cp, into); return; }
        if (single.TryGetValue(cp, out var d) && (allowCompat || !d.compat))
        {
            foreach (var m in d.map) Expand(m, single, allowCompat, into);
            return;
        }
        into.Add(cp);
    }

    static void HangulDecompose(int s, List<int> into)
    {
        int sIndex = s - SBase;
        into.Add(LBase + sIndex / NCount);
        into.Add(VBase + sIndex % NCount / TCount);
        int tIndex = sIndex % TCount;
        if (tIndex != 0) into.Add(TBase + tIndex);
    }

    /// <summary>True when the form certainly leaves the text unchanged (cheap pre-check).</summary>
    static bool QuickUnchanged(string text, NormalForm form)
    {
        char limit = form switch { NormalForm.NFC => '\u0300', NormalForm.NFD => '\u00C0', _ => '\u00A0' };
        foreach (char c in text) if (c >= limit) return false;
        return true;
    }

    /// <summary>
    /// Normalizes text. Only the segments around characters the form may change are rewritten: the text
    /// is cut before every "safe" BMP character (one the form leaves alone and that combines with nothing
    /// before it), which is a normalization boundary, so each segment normalizes on its own. O(n).
    /// </summary>
    public static string Normalize(string text, NormalForm form)
    {
        if (QuickUnchanged(text, form)) return text;
        var unsafeChars = Data.Value.Unsafe[(int)form];
        int first = -1;
        for (int i = 0; i < text.Length; i++) if (unsafeChars[text[i]]) { first = i; break; }
        if (first < 0) return text;
        var sb = new StringBuilder(text.Length + 16);
        int done = 0;
        for (int i = first; i < text.Length;)
        {
            if (!unsafeChars[text[i]]) { i++; continue; }
            int s = i > 0 && !unsafeChars[text[i - 1]] ? i - 1 : i; // the safe character before may compose with it
            int e = i + 1;
            while (e < text.Length && unsafeChars[text[e]]) e++;
            sb.Append(text, done, s - done);
            sb.Append(NormalizeSegment(text.AsSpan(s, e - s), form));
            done = i = e;
        }
        sb.Append(text, done, text.Length - done);
        return sb.ToString();
    }

    static string NormalizeSegment(ReadOnlySpan<char> text, NormalForm form)
    {
        var t = Data.Value;
        bool compat = form is NormalForm.NFKC or NormalForm.NFKD;
        var cps = new List<int>(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            int cp = text[i];
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                cp = char.ConvertToUtf32(text[i], text[++i]);
            if (cp >= SBase && cp < SBase + SCount) { HangulDecompose(cp, cps); continue; }
            var map = compat ? (t.Compatibility.TryGetValue(cp, out var m1) ? m1 : null) : (t.Canonical.TryGetValue(cp, out var m2) ? m2 : null);
            if (map != null) cps.AddRange(map); else cps.Add(cp);
        }
        // Canonical ordering: stable sort of each run of non-starters by combining class.
        for (int i = 1; i < cps.Count; i++)
        {
            int c = CccOf(t, cps[i]);
            if (c == 0) continue;
            int j = i;
            while (j > 0 && CccOf(t, cps[j - 1]) > c) { (cps[j - 1], cps[j]) = (cps[j], cps[j - 1]); j--; }
        }
        if (form is NormalForm.NFC or NormalForm.NFKC) Compose(t, cps);
        var sb = new StringBuilder(cps.Count + 8);
        foreach (int cp in cps) sb.Append(char.ConvertFromUtf32(cp));
        return sb.ToString();
    }

    /// <summary>
    /// Normalizes and appends, per output character, the input span it came from. The text is cut before
    /// every BMP character the form cannot change or combine backwards (a "safe" one), which is a
    /// normalization boundary; each output character maps to its whole segment (for Latin text, one
    /// character plus its combining marks).
    /// </summary>
    public static string Normalize(string text, NormalForm form, List<(int S, int E)> map)
    {
        string whole = Normalize(text, form);
        if (ReferenceEquals(whole, text) || whole == text)
        {
            for (int i = 0; i < text.Length; i++) map.Add((i, i + 1));
            return whole;
        }
        var unsafeChars = Data.Value.Unsafe[(int)form];
        var sb = new StringBuilder(whole.Length);
        int s = 0;
        while (s < text.Length)
        {
            int e = s + 1;
            while (e < text.Length && unsafeChars[text[e]]) e++;
            string seg = Normalize(text.Substring(s, e - s), form);
            sb.Append(seg);
            for (int k = 0; k < seg.Length; k++) map.Add((s, e));
            s = e;
        }
        return sb.ToString();
    }

    static byte CccOf(Tables t, int cp) => t.Ccc.TryGetValue(cp, out var c) ? c : (byte)0;

    static void Compose(Tables t, List<int> cps)
    {
        if (cps.Count == 0) return;
        int starterPos = CccOf(t, cps[0]) == 0 ? 0 : -1;
        int lastCcc = starterPos == 0 ? 0 : 256;
        int write = 1;
        for (int read = 1; read < cps.Count; read++)
        {
            int ch = cps[read];
            int ccc = CccOf(t, ch);
            if (starterPos >= 0 && (lastCcc < ccc || lastCcc == 0 && write - 1 == starterPos))
            {
                int composite = ComposePair(t, cps[starterPos], ch);
                if (composite >= 0)
                {
                    cps[starterPos] = composite;
                    continue;
                }
            }
            if (ccc == 0) { starterPos = write; lastCcc = 0; }
            else lastCcc = ccc;
            cps[write++] = ch;
        }
        cps.RemoveRange(write, cps.Count - write);
    }

    static int ComposePair(Tables t, int a, int b)
    {
        if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
            return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
        if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
            return a + (b - TBase);
        return t.Compose.TryGetValue(((long)a << 21) | (uint)b, out var c) ? c : -1;
    }
}
