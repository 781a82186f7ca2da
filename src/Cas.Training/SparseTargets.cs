using Cas.Engine;

namespace Cas.Training;

/// <summary>
/// Distillation targets of one sequence, stored flat: position t (0..T-1) predicts the NEXT token and has
/// either no target (masked: Offsets[t] == Offsets[t+1]) or the entries Ids/LogProbs[Offsets[t] .. Offsets[t+1]),
/// each a token id and the teacher's log-probability of it (typically the teacher's top-k, k ≤ 20).
/// The teacher probabilities are used as given (not renormalised).
/// </summary>
public sealed class SparseTargets
{
    /// <param name="offsets">[T+1], non-decreasing, offsets[0] = 0, offsets[T] = ids.Length.</param>
    /// <param name="ids">[entries] token ids.</param>
    /// <param name="logProbs">[entries] teacher log-probabilities (finite, ≤ 0 up to rounding).</param>
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
            if (!float.IsFinite(lp) || lp > 1e-3f)
                throw new InvalidRequestException($"sparse targets: entry {i} has log-prob {lp}; teacher log-probs must be finite and ≤ 0.");
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

    /// <summary>Builds targets position by position (positions in increasing order; skipped ones are masked).</summary>
    public sealed class Builder(int length)
    {
        readonly int[] _offsets = new int[length + 1];
        readonly List<int> _ids = new();
        readonly List<float> _logProbs = new();
        int _next;

        public Builder Add(int position, ReadOnlySpan<int> ids, ReadOnlySpan<float> logProbs)
        {
            if (position < _next || position >= length)
                throw new ArgumentOutOfRangeException(nameof(position), $"positions must increase and lie in [0, {length}); got {position} after {_next - 1}.");
            if (ids.Length != logProbs.Length) throw new ArgumentException("ids and logProbs must have the same length.");
            for (int t = _next; t < position; t++) _offsets[t + 1] = _ids.Count;
            foreach (var id in ids) _ids.Add(id);
            foreach (var lp in logProbs) _logProbs.Add(lp);
            _offsets[position + 1] = _ids.Count;
            _next = position + 1;
            return this;
        }

        public SparseTargets Build()
        {
            for (int t = _next; t < length; t++) _offsets[t + 1] = _ids.Count;
            return new SparseTargets((int[])_offsets.Clone(), _ids.ToArray(), _logProbs.ToArray());
        }
    }
}

/// <summary>
/// One training sequence: the input tokens the student sees after the cartridge, and per position the
/// distillation targets for the next token.
/// </summary>
public sealed record TrainingSequence
{
    public TrainingSequence(int[] Tokens, SparseTargets Targets)
    {
        ArgumentNullException.ThrowIfNull(Tokens); ArgumentNullException.ThrowIfNull(Targets);
        if (Targets.Length != Tokens.Length)
            throw new InvalidRequestException($"training sequence: {Tokens.Length} tokens but targets for {Targets.Length} positions; they must match.");
        this.Tokens = Tokens; this.Targets = Targets;
    }

    public int[] Tokens { get; }
    public SparseTargets Targets { get; }

    public void Deconstruct(out int[] tokens, out SparseTargets targets) { tokens = Tokens; targets = Targets; }

    /// <summary>A sequence trained on its own next tokens (NTP), optionally only for positions in [start, end).</summary>
    public static TrainingSequence NextToken(int[] tokens, int start = 0, int end = int.MaxValue) =>
        new(tokens, SparseTargets.NextToken(tokens, start, end));
}
