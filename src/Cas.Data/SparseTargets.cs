using Cas.Engine;

namespace Cas.Data;

/// <summary>
/// The teacher's sparse next-token distributions over a run of token positions, stored flat (column-wise, so a
/// trainer and the dataset codec use the arrays directly): position t (0..T-1) has either no entries (masked:
/// Offsets[t] == Offsets[t+1]) or the entries Ids/LogProbs[Offsets[t] .. Offsets[t+1]), each a token id and the
/// teacher's natural-log probability of it (typically the teacher's top-k, k ≤ 20, most probable first).
/// The probabilities are used as given (not renormalised). One type serves the dataset format (a message's targets,
/// one position per token) and training (a sequence's targets, position t predicting token t+1).
/// Invariants (checked on construction): offsets start at 0, never decrease and end at the entry count; ids are
/// non-negative; log-probs are not NaN, not +∞ and at most <see cref="MaxLogProb"/> (−∞, probability 0, is allowed:
/// it contributes nothing to the distillation loss). The dataset format stores at most <see cref="MaxK"/> entries
/// per position; the writer enforces that, not this type.
/// </summary>
public sealed class SparseTargets
{
    /// <summary>The largest k per position the dataset format can store (k is one byte there).</summary>
    public const int MaxK = 255;
    /// <summary>Largest accepted log-probability; log-softmax is ≤ 0 up to rounding.</summary>
    public const float MaxLogProb = 1e-3f;

    /// <param name="offsets">[T+1], non-decreasing, offsets[0] = 0, offsets[T] = ids.Length.</param>
    /// <param name="ids">[entries] token ids.</param>
    /// <param name="logProbs">[entries] teacher log-probabilities (≤ 0 up to rounding; −∞ allowed, NaN not).</param>
    public SparseTargets(int[] offsets, int[] ids, float[] logProbs)
    {
        ArgumentNullException.ThrowIfNull(offsets); ArgumentNullException.ThrowIfNull(ids); ArgumentNullException.ThrowIfNull(logProbs);
        if (offsets.Length < 1 || offsets[0] != 0)
            throw new InvalidRequestException("sparse targets: offsets must have T+1 entries starting at 0.");
        if (ids.Length != logProbs.Length)
            throw new InvalidRequestException($"sparse targets: {ids.Length} ids but {logProbs.Length} log-probs; they must pair up.");
        if (offsets[^1] != ids.Length)
            throw new InvalidRequestException($"sparse targets: the last offset is {offsets[^1]} but there are {ids.Length} entries.");
        for (int t = 0; t + 1 < offsets.Length; t++)
            if (offsets[t + 1] < offsets[t])
                throw new InvalidRequestException($"sparse targets: offsets decrease at position {t} ({offsets[t]} then {offsets[t + 1]}).");
        for (int i = 0; i < ids.Length; i++)
        {
            if (ids[i] < 0) throw new InvalidRequestException($"sparse targets: entry {i} has a negative token id {ids[i]}.");
            float lp = logProbs[i];
            if (float.IsNaN(lp) || lp > MaxLogProb)
                throw new InvalidRequestException($"sparse targets: entry {i} has log-prob {lp}; teacher log-probs must be ≤ 0 (−∞ allowed, NaN not).");
        }
        Offsets = offsets; Ids = ids; LogProbs = logProbs;
        for (int t = 0; t < Length; t++) if (offsets[t + 1] > offsets[t]) TargetPositions++;
    }

    public int[] Offsets { get; }
    public int[] Ids { get; }
    public float[] LogProbs { get; }

    /// <summary>T: the number of positions (equals the sequence's token count).</summary>
    public int Length => Offsets.Length - 1;

    /// <summary>How many positions have at least one entry (the loss is a mean over these).</summary>
    public int TargetPositions { get; }

    public bool HasTarget(int t) => Offsets[t + 1] > Offsets[t];
    public ReadOnlySpan<int> IdsAt(int t) => Ids.AsSpan(Offsets[t], Offsets[t + 1] - Offsets[t]);
    public ReadOnlySpan<float> LogProbsAt(int t) => LogProbs.AsSpan(Offsets[t], Offsets[t + 1] - Offsets[t]);

    /// <summary>k at position t: how many entries it has (0 when masked).</summary>
    public int K(int t) => Offsets[t + 1] - Offsets[t];

    /// <summary>Total (id, log-prob) entries over all positions.</summary>
    public int TotalEntries => Ids.Length;

    /// <summary>Mean k over all positions, masked ones included (0 when there are no positions).</summary>
    public double MeanK => Length == 0 ? 0 : (double)Ids.Length / Length;

    /// <summary>Targets with the same k at every position (as batched decoding produces them); the arrays are not copied.</summary>
    public static SparseTargets FromFixedK(int positions, int k, int[] ids, float[] logProbs)
    {
        if (positions < 0 || k < 0)
            throw new InvalidRequestException($"sparse targets: positions = {positions}, k = {k}; both must be ≥ 0.");
        if (ids.Length != (long)positions * k || logProbs.Length != (long)positions * k)
            throw new InvalidRequestException($"sparse targets: expected {positions} x {k} entries, got {ids.Length} ids and {logProbs.Length} log-probs.");
        var off = new int[positions + 1];
        for (int p = 0; p <= positions; p++) off[p] = p * k;
        return new SparseTargets(off, ids, logProbs);
    }

    /// <summary>No targets at any of T positions.</summary>
    public static SparseTargets None(int length) => new(new int[length + 1], [], []);

    /// <summary>
    /// Next-token (NTP) targets: position t targets tokens[t+1] with log-prob 0 (probability 1), for t in
    /// [start, end) ∩ [0, T-1) — the last token has nothing to predict.
    /// </summary>
    public static SparseTargets NextToken(ReadOnlySpan<int> tokens, int start = 0, int end = int.MaxValue)
    {
        int T = tokens.Length;
        if (start < 0) throw new ArgumentOutOfRangeException(nameof(start), "start must be ≥ 0.");
        int last = Math.Min(end, T - 1);
        var offsets = new int[T + 1];
        var ids = new List<int>(Math.Max(0, last - start));
        for (int t = 0; t < T; t++)
        {
            if (t >= start && t < last) ids.Add(tokens[t + 1]);
            offsets[t + 1] = ids.Count;
        }
        return new SparseTargets(offsets, ids.ToArray(), new float[ids.Count]);
    }

    /// <summary>
    /// Builds targets position by position. With a length, positions are given explicitly (increasing; skipped ones
    /// are masked, and Build pads to the length). Without one, <see cref="Add(ReadOnlySpan{int}, ReadOnlySpan{float})"/>
    /// appends the next position and the targets end at the last one added.
    /// </summary>
    public sealed class Builder
    {
        readonly int _length; // -1: grows with Add
        readonly List<int> _offsets = [0];
        readonly List<int> _ids = new();
        readonly List<float> _logProbs = new();

        public Builder(int length)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(length);
            _length = length;
        }

        public Builder() => _length = -1;

        /// <summary>Positions given so far (the next position <see cref="Add(ReadOnlySpan{int}, ReadOnlySpan{float})"/> fills).</summary>
        int Next => _offsets.Count - 1;

        public Builder Add(int position, ReadOnlySpan<int> ids, ReadOnlySpan<float> logProbs)
        {
            if (position < Next || (_length >= 0 && position >= _length))
                throw new ArgumentOutOfRangeException(nameof(position), $"positions must increase and lie in [0, {(_length >= 0 ? _length : int.MaxValue)}); got {position} after {Next - 1}.");
            if (ids.Length != logProbs.Length) throw new ArgumentException("ids and logProbs must have the same length.");
            while (Next < position) _offsets.Add(_ids.Count);
            foreach (var id in ids) _ids.Add(id);
            foreach (var lp in logProbs) _logProbs.Add(lp);
            _offsets.Add(_ids.Count);
            return this;
        }

        /// <summary>Adds the next position's entries (ids and log-probs of equal length).</summary>
        public Builder Add(ReadOnlySpan<int> ids, ReadOnlySpan<float> logProbs)
        {
            if (ids.Length != logProbs.Length)
                throw new InvalidRequestException($"sparse targets: {ids.Length} ids but {logProbs.Length} log-probs at position {Next}.");
            return Add(Next, ids, logProbs);
        }

        public SparseTargets Build()
        {
            var offsets = new List<int>(_offsets);
            while (_length >= 0 && offsets.Count - 1 < _length) offsets.Add(_ids.Count);
            return new SparseTargets([.. offsets], [.. _ids], [.. _logProbs]);
        }
    }
}
