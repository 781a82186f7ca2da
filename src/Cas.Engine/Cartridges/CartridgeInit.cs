using Cas.Engine.Models;
using Cas.Engine.Tokenizers;

namespace Cas.Engine.Cartridges;

/// <summary>
/// The starting KV of a cartridge. The published results: KV of the corpus's own first p tokens trains best,
/// KV of unrelated text is close behind, random vectors are far worse. All three give keys rotated for
/// positions 0..p-1, as the model itself would store them.
/// </summary>
public static class CartridgeInit
{
    /// <summary>
    /// Unrelated text for <see cref="CartridgeInitKind.RandomText"/> (written for this project; repeated to length p).
    /// </summary>
    public const string NeutralText =
        "The harbour town wakes slowly. Fishing boats come back before sunrise, and the market opens when the bells " +
        "of the old church ring six times. Traders set out crates of apples, bread, cheese and rope along the stone quay. " +
        "A ferry leaves for the island every two hours; in winter it runs only in the morning. Children walk to the school " +
        "on the hill, past the library, the bakery and a small museum of clocks. In the afternoon the wind turns, gulls " +
        "circle the lighthouse, and the tide uncovers a wide beach of grey sand. Visitors often ask the way to the castle " +
        "ruins, which stand in a field of sheep about three miles to the north. ";

    /// <summary>Any of the three kinds. <paramref name="documentTokens"/> (start tokens included) is used by first-k only.</summary>
    public static KvPrefix Create(CartridgeInitKind kind, Model model, ITokenizer tokenizer, ReadOnlySpan<int> documentTokens, int p, ulong seed = 1) => kind switch
    {
        CartridgeInitKind.FirstK => FirstK(model, documentTokens, p),
        CartridgeInitKind.RandomText => RandomText(model, tokenizer, p),
        CartridgeInitKind.Random => Random(model, tokenizer, p, seed),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>
    /// first-k: prefill the first p of <paramref name="tokens"/> (the document with its start tokens, e.g. BOS) and keep
    /// their KV. Throws <see cref="InvalidRequestException"/> when the document is shorter than p.
    /// </summary>
    public static KvPrefix FirstK(Model model, ReadOnlySpan<int> tokens, int p)
    {
        CheckLength(model, p);
        if (tokens.Length < p)
            throw new InvalidRequestException(
                $"first-k initialisation needs at least p = {p} document tokens but the document has {tokens.Length}; " +
                $"use --tokens {Math.Max(1, tokens.Length)} or less, or --init random-text.");
        return Prefill(model, tokens.Slice(0, p).ToArray());
    }

    /// <summary>random-text: the KV of the start tokens followed by <see cref="NeutralText"/> repeated to p tokens.</summary>
    public static KvPrefix RandomText(Model model, ITokenizer tokenizer, int p)
    {
        CheckLength(model, p);
        return Prefill(model, NeutralTokens(tokenizer, p));
    }

    /// <summary>
    /// random: Gaussian values whose mean and std per (layer, kv-head), separately for K and V, are measured on the
    /// model's real K/V of <see cref="NeutralText"/>. Slot 0 keeps the real KV of the text's first token (BOS where
    /// the tokenizer uses one), so the frozen attention-sink slot is a genuine one. Deterministic for a seed.
    /// </summary>
    public static KvPrefix Random(Model model, ITokenizer tokenizer, int p, ulong seed)
    {
        CheckLength(model, p);
        var c = model.Config;
        int n = Math.Min(c.MaxSeqLen, 256);
        var measured = Prefill(model, NeutralTokens(tokenizer, n));
        int hd = c.HeadDim;
        var rng = new Normal(seed);
        var keys = new float[c.Layers][]; var values = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            keys[l] = Fill(measured.Keys[l]);
            values[l] = Fill(measured.Values[l]);
        }
        return new KvPrefix(c.Layers, c.KvHeads, hd, p, keys, values);

        float[] Fill(float[] real) // real: [kv_heads, n, hd]
        {
            var dst = new float[c.KvHeads * p * hd];
            for (int h = 0; h < c.KvHeads; h++)
            {
                // Statistics over slots 1..n-1 (slot 0, the sink, is atypical).
                var part = real.AsSpan((h * n + (n > 1 ? 1 : 0)) * hd, (n > 1 ? n - 1 : 1) * hd);
                double sum = 0, sq = 0;
                foreach (float x in part) { sum += x; sq += (double)x * x; }
                double mean = sum / part.Length, std = Math.Sqrt(Math.Max(0, sq / part.Length - mean * mean));
                var head = dst.AsSpan(h * p * hd, p * hd);
                real.AsSpan(h * n * hd, hd).CopyTo(head); // slot 0
                for (int i = hd; i < head.Length; i++) head[i] = (float)(mean + std * rng.Next());
            }
            return dst;
        }
    }

    /// <summary>Start tokens + <see cref="NeutralText"/> repeated, exactly <paramref name="count"/> ids.</summary>
    public static int[] NeutralTokens(ITokenizer tokenizer, int count)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var body = tokenizer.Encode(NeutralText);
        if (body.Length == 0) throw new InvalidRequestException("the tokenizer encodes the built-in text to nothing; use --init first-k.");
        var ids = new int[count];
        int i = 0;
        foreach (int s in tokenizer.StartTokens) { if (i == count) break; ids[i++] = s; }
        while (i < count) { ids[i] = body[(i - tokenizer.StartTokens.Count) % body.Length]; i++; }
        return ids;
    }

    /// <summary>KV of <paramref name="tokens"/> at positions 0..n-1, read straight from a cache of capacity n.</summary>
    public static KvPrefix Prefill(Model model, int[] tokens)
    {
        var c = model.Config;
        int n = tokens.Length; // KvCache refuses n ≤ 0 or n > context
        var cache = new KvCache(c, n);
        new Transformer(model, Math.Min(n, 256)).Forward([cache], [tokens], default);
        // A cache of capacity n has exactly the prefix layout [kv_heads, n, head_dim] per layer.
        return new KvPrefix(c.Layers, c.KvHeads, c.HeadDim, n, cache.Keys, cache.Values);
    }

    /// <summary>Throws a clear <see cref="InvalidRequestException"/> when p is not positive or exceeds the model's context.</summary>
    public static void CheckLength(Model model, int p)
    {
        ArgumentNullException.ThrowIfNull(model);
        int ctx = model.Config.MaxSeqLen;
        if (p <= 0) throw new InvalidRequestException($"a cartridge needs at least 1 slot, got p = {p}.");
        if (p >= ctx)
            throw new InvalidRequestException(
                $"a cartridge of p = {p} slots does not fit the model's context of {ctx} positions (training sequences need room after it); use --tokens well below {ctx}.");
    }

    /// <summary>SplitMix64 + Box–Muller: seedable and identical on every platform.</summary>
    sealed class Normal(ulong seed)
    {
        ulong _s = seed;
        double? _spare;
        ulong NextU64() { ulong z = _s += 0x9E3779B97F4A7C15UL; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL; z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL; return z ^ (z >> 31); }
        double Uniform() => ((NextU64() >> 11) + 0.5) / (1UL << 53);
        public double Next()
        {
            if (_spare is double s) { _spare = null; return s; }
            double r = Math.Sqrt(-2 * Math.Log(Uniform())), a = 2 * Math.PI * Uniform();
            _spare = r * Math.Sin(a);
            return r * Math.Cos(a);
        }
    }
}
