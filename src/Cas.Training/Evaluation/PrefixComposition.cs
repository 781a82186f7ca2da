using Cas.Engine;
using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Training.Evaluation;

/// <summary>
/// How several cartridges are put in front of the tokens. The product composes with <see cref="KvPrefix.Concat"/>
/// (<see cref="CompositionMode.Concat"/>: keys keep the positions they were trained at). The alternative,
/// <see cref="CompositionMode.ReRotate"/>, rotates each cartridge's keys by the number of slots in front of it, as if it
/// had been computed at its new place; it exists so evaluations can measure the difference (eval/COMPOSITION.md).
/// </summary>
public enum CompositionMode { Concat, ReRotate }

public static class PrefixComposition
{
    /// <summary>The parts concatenated in order; with <see cref="CompositionMode.ReRotate"/> part i's keys are first rotated by Σ_{j&lt;i} p_j.</summary>
    public static KvPrefix Compose(ModelConfig config, IReadOnlyList<KvPrefix> parts, CompositionMode mode)
    {
        ArgumentNullException.ThrowIfNull(config); ArgumentNullException.ThrowIfNull(parts);
        if (parts.Count == 0) throw new InvalidRequestException("nothing to compose: give at least one cartridge.");
        if (mode == CompositionMode.Concat) return parts.Count == 1 ? parts[0] : KvPrefix.Concat(parts);
        var moved = new KvPrefix[parts.Count];
        int before = 0;
        for (int i = 0; i < parts.Count; i++) { moved[i] = Rotate(config, parts[i], before); before += parts[i].Length; }
        return moved.Length == 1 ? moved[0] : KvPrefix.Concat(moved);
    }

    /// <summary>
    /// A copy of <paramref name="prefix"/> with every key rotated by <paramref name="delta"/> more positions
    /// (RoPE composes: R(pos + δ) = R(δ)·R(pos)); values are shared, not copied.
    /// </summary>
    public static KvPrefix Rotate(ModelConfig config, KvPrefix prefix, int delta)
    {
        ArgumentNullException.ThrowIfNull(config); ArgumentNullException.ThrowIfNull(prefix);
        if (prefix.HeadDim != config.HeadDim) throw new ArgumentException("the prefix does not belong to this model (head_dim differs).", nameof(prefix));
        if (delta == 0) return prefix;
        var rope = new Rope(config);
        int hd = config.HeadDim;
        var cos = new float[hd / 2]; var sin = new float[hd / 2];
        rope.Angles(delta, cos, sin);
        var keys = new float[prefix.Layers][];
        for (int l = 0; l < prefix.Layers; l++)
        {
            keys[l] = (float[])prefix.Keys[l].Clone();
            for (int row = 0; row < prefix.KvHeads * prefix.Length; row++) rope.Rotate(keys[l].AsSpan(row * hd, hd), cos, sin);
        }
        return new KvPrefix(prefix.Layers, prefix.KvHeads, hd, prefix.Length, keys, prefix.Values);
    }
}
