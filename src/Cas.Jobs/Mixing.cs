using Cas.Training;

namespace Cas.Jobs;

/// <summary>
/// Dynamic distractor mixing (CAS): with probability P_iso an example sees its gold cartridge alone; otherwise the gold
/// and k ~ U(1, K) distinct distractors drawn from the other resident cartridges, in a shuffled order (keys are not
/// re-rotated: each cartridge keeps the positions it was trained at). A pure function of (seed, step, slot), so a
/// resumed job draws exactly what the uninterrupted one drew.
/// </summary>
public static class DistractorMixing
{
    /// <summary>
    /// The prefix order for one example: document indices, the gold among them. <paramref name="candidates"/> are the
    /// other cartridges that may be drawn (the gold must not be among them); <paramref name="lengthOf"/> gives p of a
    /// document; distractors are dropped from the end of the draw until Σp ≤ <paramref name="room"/> (the context left
    /// after the example).
    /// </summary>
    public static int[] Plan(int gold, IReadOnlyList<int> candidates, Func<int, int> lengthOf, int room,
        double pIso, int maxDistractors, ulong seed, long step, int slot)
    {
        ArgumentNullException.ThrowIfNull(candidates); ArgumentNullException.ThrowIfNull(lengthOf);
        var rng = new SplitMix64(SplitMix64.Mix(seed ^ SplitMix64.Mix((ulong)step * 0x9E3779B97F4A7C15UL + (ulong)slot + 0xD1B54A32D192ED03UL)));
        bool isolated = rng.NextDouble() < pIso;
        if (isolated || maxDistractors == 0 || candidates.Count == 0) return [gold];
        int k = 1 + (int)rng.NextBelow((ulong)maxDistractors);
        k = Math.Min(k, candidates.Count);
        // k distinct candidates: a partial Fisher–Yates over a copy.
        var pool = candidates.ToArray();
        for (int i = 0; i < k; i++)
        {
            int j = i + (int)rng.NextBelow((ulong)(pool.Length - i));
            (pool[i], pool[j]) = (pool[j], pool[i]);
        }
        int used = lengthOf(gold);
        int fit = 0;
        while (fit < k && used + lengthOf(pool[fit]) <= room) used += lengthOf(pool[fit++]);
        var order = new int[fit + 1];
        order[0] = gold;
        Array.Copy(pool, 0, order, 1, fit);
        for (int i = order.Length - 1; i > 0; i--)
        {
            int j = (int)rng.NextBelow((ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    /// <summary>
    /// Splits the batch (sequence indices) into groups such that within a group no cartridge is both a gold (getting
    /// a gradient) and a distractor of another sequence (which must not add to it). Greedy, in order; deterministic.
    /// </summary>
    public static List<List<int>> FrozenDistractorGroups(IReadOnlyList<int> golds, IReadOnlyList<int[]> orders)
    {
        var groups = new List<(List<int> Seqs, HashSet<int> Golds, HashSet<int> Distractors)>();
        for (int s = 0; s < golds.Count; s++)
        {
            var dis = orders[s].Where(c => c != golds[s]).ToHashSet();
            var home = groups.FirstOrDefault(g => !g.Distractors.Contains(golds[s]) && !dis.Overlaps(g.Golds));
            if (home.Seqs == null) { home = (new List<int>(), new HashSet<int>(), new HashSet<int>()); groups.Add(home); }
            home.Seqs.Add(s); home.Golds.Add(golds[s]); home.Distractors.UnionWith(dis);
        }
        return groups.Select(g => g.Seqs).ToList();
    }
}

/// <summary>How far one document's training has come (what rotation ranks by).</summary>
public readonly record struct TrainingProgressOf(int Document, long GoldSeen, long Target)
{
    /// <summary>GoldSeen / Target; 0 for a document whose data is not made yet (it has not trained).</summary>
    public double Fraction => Target <= 0 ? 0 : (double)GoldSeen / Target;
}

/// <summary>
/// Rotation of the resident set: n = round(φ·B) of the resident cartridges go out — the most trained first — and as
/// many of the waiting ones come in — the least trained first; ties go to the lower document index. Never more than
/// are waiting, and never more than B resident.
/// </summary>
public static class Rotation
{
    public static (int[] Out, int[] In) Choose(IReadOnlyList<TrainingProgressOf> resident, IReadOnlyList<TrainingProgressOf> waiting, int capacity, double fraction)
    {
        ArgumentNullException.ThrowIfNull(resident); ArgumentNullException.ThrowIfNull(waiting);
        int free = Math.Max(0, capacity - resident.Count);
        int swap = Math.Min((int)Math.Round(fraction * capacity, MidpointRounding.AwayFromZero), resident.Count);
        swap = Math.Max(0, Math.Min(swap, waiting.Count - free));
        var outs = resident.OrderByDescending(r => r.Fraction).ThenBy(r => r.Document).Take(swap).Select(r => r.Document).ToArray();
        var ins = waiting.OrderBy(w => w.Fraction).ThenBy(w => w.Document).Take(swap + Math.Min(free, waiting.Count)).Select(w => w.Document).ToArray();
        return (outs, ins);
    }
}
