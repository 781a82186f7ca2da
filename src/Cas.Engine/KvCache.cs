using Cas.Engine.Models;

namespace Cas.Engine;

/// <summary>
/// A KV prefix that was not computed from tokens (a cartridge, or several composed): per layer
/// K and V of shape [kv_heads, p, head_dim], keys already rotated for positions 0..p-1.
/// </summary>
public sealed class KvPrefix
{
    public KvPrefix(int layers, int kvHeads, int headDim, int length, float[][] keys, float[][] values)
    {
        if (keys.Length != layers || values.Length != layers)
            throw new ArgumentException($"prefix needs {layers} layers of keys and values, got {keys.Length} and {values.Length}.");
        int need = kvHeads * length * headDim;
        for (int l = 0; l < layers; l++)
            if (keys[l].Length != need || values[l].Length != need)
                throw new ArgumentException($"prefix layer {l}: K/V must hold kv_heads*p*head_dim = {kvHeads}*{length}*{headDim} = {need} floats, got {keys[l].Length} and {values[l].Length}.");
        Layers = layers; KvHeads = kvHeads; HeadDim = headDim; Length = length; Keys = keys; Values = values;
    }

    public int Layers { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    /// <summary>p: number of virtual token slots.</summary>
    public int Length { get; }
    public float[][] Keys { get; }   // [layer][kv_heads, p, head_dim]
    public float[][] Values { get; } // [layer][kv_heads, p, head_dim]

    public static KvPrefix Zeros(ModelConfig c, int length)
    {
        var k = new float[c.Layers][]; var v = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++) { k[l] = new float[c.KvHeads * length * c.HeadDim]; v[l] = new float[k[l].Length]; }
        return new KvPrefix(c.Layers, c.KvHeads, c.HeadDim, length, k, v);
    }

    /// <summary>
    /// Concatenates prefixes along the sequence axis in the given order. Keys are NOT re-rotated:
    /// each cartridge keeps the positions it was trained at (as the reference implementation does),
    /// so a cartridge means the same thing wherever it is placed.
    /// </summary>
    public static KvPrefix Concat(IReadOnlyList<KvPrefix> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("nothing to concatenate.");
        var f = parts[0];
        int total = 0;
        foreach (var p in parts)
        {
            if (p.Layers != f.Layers || p.KvHeads != f.KvHeads || p.HeadDim != f.HeadDim)
                throw new ArgumentException("prefixes to concatenate must have the same layers, kv_heads and head_dim.");
            total += p.Length;
        }
        var keys = new float[f.Layers][]; var values = new float[f.Layers][];
        for (int l = 0; l < f.Layers; l++)
        {
            keys[l] = new float[f.KvHeads * total * f.HeadDim];
            values[l] = new float[keys[l].Length];
            int at = 0;
            foreach (var p in parts)
            {
                for (int h = 0; h < f.KvHeads; h++)
                {
                    int n = p.Length * f.HeadDim;
                    Array.Copy(p.Keys[l], h * n, keys[l], (h * total + at) * f.HeadDim, n);
                    Array.Copy(p.Values[l], h * n, values[l], (h * total + at) * f.HeadDim, n);
                }
                at += p.Length;
            }
        }
        return new KvPrefix(f.Layers, f.KvHeads, f.HeadDim, total, keys, values);
    }
}

/// <summary>
/// The KV cache of one sequence: positions 0..Length-1 are, in order, an optional <see cref="ComposedPrefix"/> held by
/// reference (<see cref="Referenced"/>: resident cartridges' K/V, read in place and never copied), then this cache's
/// own slots — per layer K and V of shape [kv_heads, <see cref="Stride"/>, head_dim] — which start with an optional
/// copied <see cref="KvPrefix"/> and continue with token KV. Own slot s is slot Referenced.Length + s, after the prefix;
/// a token there has RoPE position Referenced.Positions + s (the same, unless the referenced prefix is placed
/// <see cref="Placement.Aligned"/>: see <see cref="PositionShift"/>). <see cref="Capacity"/> counts positions (referenced + own); the own arrays hold
/// only Capacity − Referenced.Length slots. Capacity is decided once, at construction.
/// </summary>
public sealed class KvCache
{
    public KvCache(ModelConfig config, int capacity, KvPrefix? prefix = null) : this(config, capacity, ComposedPrefix.Empty, prefix) { }

    /// <summary>
    /// A cache that attends to <paramref name="referenced"/> (kept by reference: the caller keeps its parts alive and
    /// unchanged while the cache is used) and holds only the sequence's own token KV: <paramref name="capacity"/>
    /// positions in all, capacity − referenced.Length of them allocated here.
    /// </summary>
    public KvCache(ModelConfig config, int capacity, ComposedPrefix referenced) : this(config, capacity, referenced, null) { }

    KvCache(ModelConfig config, int capacity, ComposedPrefix referenced, KvPrefix? prefix)
    {
        ArgumentNullException.ThrowIfNull(referenced);
        int r = referenced.Length, p = r + (prefix?.Length ?? 0);
        if (capacity <= 0) throw new InvalidRequestException($"KV cache capacity must be positive, got {capacity}.");
        if (capacity > config.MaxSeqLen)
            throw new InvalidRequestException($"prefix + tokens need {capacity} positions but the model's context is {config.MaxSeqLen}; shorten the prompt, lower --max-tokens or use a smaller cartridge.");
        if (p > capacity) throw new InvalidRequestException($"prefix of {p} slots does not fit a cache of {capacity} positions.");
        if (r == capacity) throw new InvalidRequestException($"a cache of {capacity} positions after a {r}-slot composed prefix has no room for a token.");
        if (prefix != null) CheckShape(config, prefix);
        foreach (var part in referenced.Parts) CheckShape(config, part);
        Config = config; Capacity = capacity; KvHeads = config.KvHeads; HeadDim = config.HeadDim;
        Referenced = referenced; Stride = capacity - r;
        Keys = new float[config.Layers][]; Values = new float[config.Layers][];
        for (int l = 0; l < config.Layers; l++)
        {
            Keys[l] = GC.AllocateUninitializedArray<float>(KvHeads * Stride * HeadDim);
            Values[l] = GC.AllocateUninitializedArray<float>(KvHeads * Stride * HeadDim);
        }
        PrefixLength = Length = r;
        if (prefix != null) SetPrefix(prefix);
    }

    static void CheckShape(ModelConfig config, KvPrefix prefix)
    {
        if (prefix.Layers != config.Layers || prefix.KvHeads != config.KvHeads || prefix.HeadDim != config.HeadDim)
            throw new InvalidRequestException($"prefix shape (layers {prefix.Layers}, kv_heads {prefix.KvHeads}, head_dim {prefix.HeadDim}) does not match the model (layers {config.Layers}, kv_heads {config.KvHeads}, head_dim {config.HeadDim}).");
    }

    public ModelConfig Config { get; }
    /// <summary>Positions the sequence may use: referenced prefix + own slots.</summary>
    public int Capacity { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    /// <summary>Positions in use (prefix + tokens); the next token's position.</summary>
    public int Length { get; private set; }
    /// <summary>Prefix positions (referenced and copied).</summary>
    public int PrefixLength { get; private set; }
    /// <summary>
    /// Slot index − RoPE position of every token slot: 0, except after a referenced prefix placed
    /// <see cref="Placement.Aligned"/>, whose tokens start at position max p_i although they sit after all Σp_i slots.
    /// </summary>
    public int PositionShift => Referenced.Length - Referenced.Positions;
    /// <summary>The cartridges attended to in place (positions 0..Referenced.Length-1); empty when none.</summary>
    public ComposedPrefix Referenced { get; }
    /// <summary>Own slots per KV head in <see cref="Keys"/>/<see cref="Values"/>: Capacity − Referenced.Length.</summary>
    public int Stride { get; }
    /// <summary>Bytes of this cache's own K/V arrays (what the sequence costs beyond the cartridges it references).</summary>
    public long Bytes => 2L * Config.Layers * KvHeads * Stride * HeadDim * sizeof(float);
    public float[][] Keys { get; }   // [layer][kv_heads, Stride, head_dim]: own slots only
    public float[][] Values { get; } // [layer][kv_heads, Stride, head_dim]

    /// <summary>Drops all token KV, keeping the prefix.</summary>
    public void Reset() => Length = PrefixLength;

    /// <summary>Drops token KV after <paramref name="length"/> slots (≥ prefix length).</summary>
    public void Truncate(int length)
    {
        if (length < PrefixLength || length > Length) throw new ArgumentOutOfRangeException(nameof(length));
        Length = length;
    }

    void SetPrefix(KvPrefix prefix)
    {
        int p = prefix.Length, hd = HeadDim;
        for (int l = 0; l < Config.Layers; l++)
            for (int h = 0; h < KvHeads; h++)
            {
                Array.Copy(prefix.Keys[l], h * p * hd, Keys[l], h * Stride * hd, p * hd);
                Array.Copy(prefix.Values[l], h * p * hd, Values[l], h * Stride * hd, p * hd);
            }
        PrefixLength = Length = Referenced.Length + p;
    }

    /// <summary>
    /// Copies another cache's contents (prefix and tokens) into this one, e.g. to fork a shared prompt. Both must
    /// reference the same composed prefix (the same parts), which is shared, not copied.
    /// </summary>
    public void CopyFrom(KvCache other)
    {
        if (other.Length > Capacity) throw new InvalidRequestException($"cannot fork a cache of {other.Length} slots into one of capacity {Capacity}.");
        if (!Referenced.SameParts(other.Referenced))
            throw new InvalidRequestException("cannot fork a cache that references other cartridges than this one; make the fork with the same composed prefix.");
        int hd = HeadDim, own = other.Length - other.Referenced.Length;
        for (int l = 0; l < Config.Layers; l++)
            for (int h = 0; h < KvHeads; h++)
            {
                Array.Copy(other.Keys[l], h * other.Stride * hd, Keys[l], h * Stride * hd, own * hd);
                Array.Copy(other.Values[l], h * other.Stride * hd, Values[l], h * Stride * hd, own * hd);
            }
        PrefixLength = other.PrefixLength; Length = other.Length;
    }

    /// <summary>Reserves <paramref name="n"/> slots for new tokens; returns the first one's position.</summary>
    internal int Append(int n)
    {
        if (Length + n > Capacity)
            throw new InvalidRequestException($"sequence needs {Length + n} positions but its KV cache holds {Capacity} (model context {Config.MaxSeqLen}); shorten the prompt or lower --max-tokens.");
        int start = Length; Length += n; return start;
    }
}
