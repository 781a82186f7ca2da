namespace Cas.Engine;

/// <summary>Where a composed prefix's tokens start, relative to its parts (whose keys are never moved).</summary>
public enum Placement
{
    /// <summary>Tokens start at position Σp_i, after every part (as <see cref="KvPrefix.Concat"/> lays them out): the reference's choice.</summary>
    Concat,
    /// <summary>
    /// Tokens start at position max p_i: every part is at the distance from the tokens it has when it is alone (each
    /// part still keeps positions 0..p_i−1), so the parts compete on content, not on distance.
    /// </summary>
    Aligned,
}

/// <summary>
/// The prefix one sequence attends to: an ordered list of references to cartridges' KV (nothing is copied).
/// Keys are not re-rotated: each part keeps the positions 0..p_i−1 it was trained at, and the sequence's tokens start
/// at position <see cref="Positions"/>: Σp_i by default (as with <see cref="KvPrefix.Concat"/>, which builds the same
/// prefix as one copy for a KV cache), max p_i with <see cref="Placement.Aligned"/>. Slots (the causal mask, the
/// cache's layout) always count all Σp_i prefix slots; only the tokens' RoPE positions differ.
/// Sequences of a training batch may each have their own composed prefix; parts shared between sequences (the same
/// <see cref="KvPrefix"/> object) share their gradient (see <see cref="KvGradient"/>).
/// </summary>
public sealed class ComposedPrefix
{
    public ComposedPrefix(IReadOnlyList<KvPrefix> parts, Placement placement = Placement.Concat)
    {
        ArgumentNullException.ThrowIfNull(parts);
        var copy = new KvPrefix[parts.Count];
        int length = 0;
        for (int i = 0; i < copy.Length; i++)
        {
            var p = parts[i] ?? throw new ArgumentException($"prefix part {i} is null.", nameof(parts));
            if (i > 0 && (p.Layers != copy[0].Layers || p.KvHeads != copy[0].KvHeads || p.HeadDim != copy[0].HeadDim))
                throw new InvalidRequestException($"prefix part {i} has shape (layers {p.Layers}, kv_heads {p.KvHeads}, head_dim {p.HeadDim}) but part 0 has (layers {copy[0].Layers}, kv_heads {copy[0].KvHeads}, head_dim {copy[0].HeadDim}); composed cartridges must belong to the same model.");
            copy[i] = p; length += p.Length;
        }
        Parts = copy; Length = length; Placement = placement;
        int most = 0;
        foreach (var p in copy) most = Math.Max(most, p.Length);
        Positions = placement == Placement.Aligned ? most : length;
    }

    /// <summary>The parts in attention order (slot order).</summary>
    public IReadOnlyList<KvPrefix> Parts { get; }
    /// <summary>Σ p_i: the number of prefix slots.</summary>
    public int Length { get; }
    public Placement Placement { get; }
    /// <summary>The RoPE position of the first token: Σ p_i (<see cref="Placement.Concat"/>) or max p_i (<see cref="Placement.Aligned"/>).</summary>
    public int Positions { get; }

    /// <summary>No prefix at all.</summary>
    public static ComposedPrefix Empty { get; } = new([]);

    public static ComposedPrefix Of(params KvPrefix[] parts) => new(parts);

    /// <summary>True when both list the same KV objects in the same order (so they can share attention products).</summary>
    public bool SameParts(ComposedPrefix other)
    {
        if (ReferenceEquals(this, other)) return true;
        if (other.Parts.Count != Parts.Count) return false;
        for (int i = 0; i < Parts.Count; i++) if (!ReferenceEquals(Parts[i], other.Parts[i])) return false;
        return true;
    }
}

/// <summary>
/// d loss / d (K, V) of one cartridge, shapes as the cartridge: [layer][kv_heads, p, head_dim]. A training call adds
/// into it the gradient from every sequence whose prefix contains <see cref="Of"/>; cartridges without a gradient in
/// the call are frozen (read, never written).
/// </summary>
public sealed class KvGradient
{
    /// <summary>Zeroed buffers for <paramref name="of"/>.</summary>
    public KvGradient(KvPrefix of) : this(of, Alloc(of), Alloc(of)) { }

    /// <summary>Wraps existing buffers (e.g. views into an optimizer's parameter gradients).</summary>
    public KvGradient(KvPrefix of, float[][] keys, float[][] values)
    {
        ArgumentNullException.ThrowIfNull(of); ArgumentNullException.ThrowIfNull(keys); ArgumentNullException.ThrowIfNull(values);
        if (keys.Length != of.Layers || values.Length != of.Layers)
            throw new ArgumentException($"dKeys and dValues need one array per layer ({of.Layers}).");
        int need = of.KvHeads * of.Length * of.HeadDim;
        for (int l = 0; l < of.Layers; l++)
            if (keys[l].Length != need || values[l].Length != need)
                throw new ArgumentException($"gradient layer {l}: dK/dV must hold kv_heads*p*head_dim = {need} floats like the prefix.");
        Of = of; Keys = keys; Values = values;
    }

    public KvPrefix Of { get; }
    public float[][] Keys { get; }   // [layer][kv_heads, p, head_dim]
    public float[][] Values { get; } // [layer][kv_heads, p, head_dim]

    public void Clear()
    {
        foreach (var a in Keys) Array.Clear(a);
        foreach (var a in Values) Array.Clear(a);
    }

    static float[][] Alloc(KvPrefix p)
    {
        var a = new float[p.Layers][];
        for (int l = 0; l < p.Layers; l++) a[l] = new float[p.KvHeads * p.Length * p.HeadDim];
        return a;
    }
}

/// <summary>
/// One sequence of a training (or loss) batch: its prefix, its tokens (at positions Prefix.Length, …), and per
/// position the sparse next-token targets, stored flat: position t has the entries
/// [TargetOffsets[t], TargetOffsets[t+1]) of TargetIds / TargetLogProbs (none: masked). The decoder takes plain arrays
/// so it needs no training types.
/// </summary>
public readonly record struct PrefixedSequence(ComposedPrefix Prefix, int[] Tokens, int[] TargetOffsets, int[] TargetIds, float[] TargetLogProbs)
{
    public bool HasTarget(int t) => TargetOffsets[t + 1] > TargetOffsets[t];
    public ReadOnlySpan<int> IdsAt(int t) => TargetIds.AsSpan(TargetOffsets[t], TargetOffsets[t + 1] - TargetOffsets[t]);
    public ReadOnlySpan<float> LogProbsAt(int t) => TargetLogProbs.AsSpan(TargetOffsets[t], TargetOffsets[t + 1] - TargetOffsets[t]);
}
