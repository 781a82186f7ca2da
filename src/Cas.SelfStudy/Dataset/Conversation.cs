using Cas.Engine;

namespace Cas.SelfStudy;

/// <summary>Who wrote a message. Stored as one byte (the numeric value) in the dataset format.</summary>
public enum MessageRole : byte
{
    System = 0,
    User = 1,
    Assistant = 2,
}

/// <summary>
/// Where a chunk came from. Offsets are half-open ranges [start, end). <see cref="TokenStart"/> and
/// <see cref="TokenEnd"/> are -1 when the chunk was cut by characters (no token offsets known).
/// Char offsets are UTF-16 code-unit offsets into <see cref="Cas.Resources.Document.Text"/>.
/// </summary>
public sealed record ChunkLocation(string DocumentId, int TokenStart, int TokenEnd, int CharStart, int CharEnd)
{
    /// <summary>True when the token offsets are known (the chunk was cut by tokens).</summary>
    public bool HasTokenOffsets => TokenStart >= 0;

    public override string ToString() => HasTokenOffsets
        ? $"{DocumentId} tokens [{TokenStart},{TokenEnd}) chars [{CharStart},{CharEnd})"
        : $"{DocumentId} chars [{CharStart},{CharEnd})";
}

/// <summary>
/// One message of a conversation: its text and the token ids the model saw or produced.
/// <see cref="Targets"/> holds the teacher's sparse top-k distribution for each token position
/// (normally only on assistant messages); when present it has exactly one position per token.
/// </summary>
public sealed record ConversationMessage(MessageRole Role, string Text, int[] Tokens, TopKTargets? Targets = null);

/// <summary>
/// One record of a self-study dataset: a conversation generated from one chunk of one document.
/// <see cref="Id"/> is unique within a dataset and deterministic for the sample it came from
/// (see <see cref="ConversationIds.For"/>). <see cref="ChunkText"/> may be empty when the writer
/// chose not to keep it.
/// </summary>
public sealed record Conversation(
    ulong Id,
    ChunkLocation Chunk,
    string ChunkText,
    SeedPromptKind SeedKind,
    string SeedPrompt,
    IReadOnlyList<ConversationMessage> Messages);

/// <summary>
/// The teacher's sparse next-token distributions for a run of token positions: for position p,
/// <c>K(p)</c> (token id, log-probability) pairs, typically the top-k in descending order.
/// Stored column-wise (all ids, then all log-probs, with start offsets per position) so a trainer
/// can use the arrays directly. k may differ per position and may be 0.
/// Invariants (checked on construction): offsets start at 0, never decrease, end at the entry
/// count; each k is at most <see cref="MaxK"/>; ids are non-negative; log-probs are not NaN and
/// not above <see cref="MaxLogProb"/> (a tiny positive slack allows for float rounding).
/// </summary>
public sealed class TopKTargets
{
    /// <summary>The largest k per position the dataset format can store (k is one byte).</summary>
    public const int MaxK = 255;
    /// <summary>Largest accepted log-probability; log-softmax is &lt;= 0 up to rounding.</summary>
    public const float MaxLogProb = 1e-3f;

    readonly int[] offsets;
    readonly int[] ids;
    readonly float[] logProbs;

    /// <summary>
    /// Wraps the three arrays (not copied): <paramref name="offsets"/> has Positions + 1 entries,
    /// position p owns entries [offsets[p], offsets[p+1]) of <paramref name="ids"/> and <paramref name="logProbs"/>.
    /// </summary>
    public TopKTargets(int[] offsets, int[] ids, float[] logProbs)
    {
        ArgumentNullException.ThrowIfNull(offsets);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(logProbs);
        if (offsets.Length == 0 || offsets[0] != 0)
            throw new InvalidRequestException("top-k targets: offsets must have Positions + 1 entries and start at 0.");
        if (ids.Length != logProbs.Length)
            throw new InvalidRequestException($"top-k targets: {ids.Length} ids but {logProbs.Length} log-probs; they must match.");
        if (offsets[^1] != ids.Length)
            throw new InvalidRequestException($"top-k targets: last offset is {offsets[^1]} but there are {ids.Length} entries.");
        for (int p = 0; p + 1 < offsets.Length; p++)
        {
            int k = offsets[p + 1] - offsets[p];
            if (k < 0 || k > MaxK)
                throw new InvalidRequestException($"top-k targets: position {p} has k = {k}; k must be in 0..{MaxK}.");
        }
        for (int i = 0; i < ids.Length; i++)
        {
            if (ids[i] < 0)
                throw new InvalidRequestException($"top-k targets: entry {i} has negative token id {ids[i]}.");
            float lp = logProbs[i];
            if (float.IsNaN(lp) || lp > MaxLogProb)
                throw new InvalidRequestException($"top-k targets: entry {i} has log-prob {lp}; log-probs must be <= 0 (and not NaN).");
        }
        this.offsets = offsets;
        this.ids = ids;
        this.logProbs = logProbs;
    }

    /// <summary>Targets with the same k at every position (as batched decoding produces them).</summary>
    public static TopKTargets FromFixedK(int positions, int k, int[] ids, float[] logProbs)
    {
        if (positions < 0 || k < 0 || k > MaxK)
            throw new InvalidRequestException($"top-k targets: positions = {positions}, k = {k}; need positions >= 0 and 0 <= k <= {MaxK}.");
        if (ids.Length != (long)positions * k || logProbs.Length != (long)positions * k)
            throw new InvalidRequestException($"top-k targets: expected {positions} x {k} entries, got {ids.Length} ids and {logProbs.Length} log-probs.");
        var off = new int[positions + 1];
        for (int p = 0; p <= positions; p++) off[p] = p * k;
        return new TopKTargets(off, ids, logProbs);
    }

    /// <summary>Number of token positions covered.</summary>
    public int Positions => offsets.Length - 1;
    /// <summary>Total (id, log-prob) pairs over all positions.</summary>
    public int TotalEntries => ids.Length;
    /// <summary>Mean k over positions (0 when there are no positions).</summary>
    public double MeanK => Positions == 0 ? 0 : (double)ids.Length / Positions;

    public int K(int position) => offsets[position + 1] - offsets[position];
    public ReadOnlySpan<int> Ids(int position) => ids.AsSpan(offsets[position], K(position));
    public ReadOnlySpan<float> LogProbs(int position) => logProbs.AsSpan(offsets[position], K(position));

    /// <summary>Start offset of each position's entries, plus the total at the end (Positions + 1 values).</summary>
    public ReadOnlySpan<int> Offsets => offsets;
    public ReadOnlySpan<int> AllIds => ids;
    public ReadOnlySpan<float> AllLogProbs => logProbs;

    /// <summary>Builds targets one position at a time.</summary>
    public sealed class Builder
    {
        readonly List<int> off = [0];
        readonly List<int> idList = [];
        readonly List<float> lpList = [];

        /// <summary>Adds the next position's pairs (ids and log-probs of equal length).</summary>
        public Builder Add(ReadOnlySpan<int> ids, ReadOnlySpan<float> logProbs)
        {
            if (ids.Length != logProbs.Length)
                throw new InvalidRequestException($"top-k targets: {ids.Length} ids but {logProbs.Length} log-probs at position {off.Count - 1}.");
            foreach (var id in ids) idList.Add(id);
            foreach (var lp in logProbs) lpList.Add(lp);
            off.Add(idList.Count);
            return this;
        }

        public TopKTargets Build() => new([.. off], [.. idList], [.. lpList]);
    }
}
