using System.Globalization;
using System.Text;

namespace Cas.Data;

/// <summary>
/// Summary numbers of a dataset, for <c>cas dataset stats FILE</c>. Computed in one streaming pass.
/// Token counts are over message token ids; target numbers over positions that carry top-k targets.
/// </summary>
public sealed record DatasetStats
{
    public long Conversations { get; init; }
    public long Messages { get; init; }
    /// <summary>Token ids over all messages.</summary>
    public long TotalTokens { get; init; }
    /// <summary>Token ids over assistant messages.</summary>
    public long AssistantTokens { get; init; }
    /// <summary>Positions with top-k targets.</summary>
    public long TargetPositions { get; init; }
    /// <summary>(id, log-prob) pairs over all positions.</summary>
    public long TargetEntries { get; init; }
    /// <summary>Mean k over target positions (0 when there are none).</summary>
    public double MeanK => TargetPositions == 0 ? 0 : (double)TargetEntries / TargetPositions;
    /// <summary>Smallest and largest k seen (0 when there are no target positions).</summary>
    public int MinK { get; init; }
    public int MaxK { get; init; }
    public IReadOnlyDictionary<SeedPromptKind, long> BySeedKind { get; init; } = new Dictionary<SeedPromptKind, long>();
    public IReadOnlyDictionary<string, long> ByDocument { get; init; } = new Dictionary<string, long>();
    /// <summary>File facts (from <see cref="Compute(string, DatasetReadOptions?)"/>; defaults otherwise).</summary>
    public long FileBytes { get; init; }
    public uint Version { get; init; }
    public IReadOnlyDictionary<string, string> Metadata { get; init; } = new Dictionary<string, string>();
    public TornTail? TornTail { get; init; }

    /// <summary>
    /// Streams the file once. By default a torn tail is reported in <see cref="TornTail"/> rather than
    /// thrown (stats of a crashed run are still useful); corruption throws.
    /// </summary>
    public static DatasetStats Compute(string path, DatasetReadOptions? options = null)
    {
        using var r = DatasetReader.Open(path, options ?? new DatasetReadOptions(StopAtTornTail: true));
        var s = Compute(r.ReadAll());
        return s with { FileBytes = r.FileLength, Version = r.Version, Metadata = r.Metadata, TornTail = r.TornTail };
    }

    /// <summary>Stats of any sequence of conversations.</summary>
    public static DatasetStats Compute(IEnumerable<Conversation> conversations)
    {
        long convs = 0, msgs = 0, tokens = 0, asst = 0, positions = 0, entries = 0;
        int minK = int.MaxValue, maxK = 0;
        var byKind = new Dictionary<SeedPromptKind, long>();
        var byDoc = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var c in conversations)
        {
            convs++;
            byKind[c.SeedKind] = byKind.GetValueOrDefault(c.SeedKind) + 1;
            byDoc[c.Chunk.DocumentId] = byDoc.GetValueOrDefault(c.Chunk.DocumentId) + 1;
            foreach (var m in c.Messages)
            {
                msgs++;
                tokens += m.Tokens.Length;
                if (m.Role == MessageRole.Assistant) asst += m.Tokens.Length;
                if (m.Targets is not { } t) continue;
                positions += t.Length;
                entries += t.TotalEntries;
                for (int p = 0; p < t.Length; p++)
                {
                    int k = t.K(p);
                    if (k < minK) minK = k;
                    if (k > maxK) maxK = k;
                }
            }
        }
        return new DatasetStats
        {
            Conversations = convs, Messages = msgs, TotalTokens = tokens, AssistantTokens = asst,
            TargetPositions = positions, TargetEntries = entries,
            MinK = positions == 0 ? 0 : minK, MaxK = maxK, BySeedKind = byKind, ByDocument = byDoc,
        };
    }

    /// <summary>A human-readable report; documents sorted by count (then id), at most <paramref name="maxDocuments"/> listed.</summary>
    public string Format(int maxDocuments = 20)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        if (Version != 0) sb.Append(ci, $"format version   {Version}\n");
        if (FileBytes != 0) sb.Append(ci, $"file size        {FileBytes:N0} bytes\n");
        foreach (var (k, v) in Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            sb.Append(ci, $"meta {k,-11} {v}\n");
        sb.Append(ci, $"conversations    {Conversations:N0}\n");
        sb.Append(ci, $"messages         {Messages:N0}\n");
        sb.Append(ci, $"tokens           {TotalTokens:N0} (assistant {AssistantTokens:N0})\n");
        sb.Append(ci, $"target positions {TargetPositions:N0}\n");
        sb.Append(ci, $"top-k entries    {TargetEntries:N0} (mean k {MeanK:F2}, min {MinK}, max {MaxK})\n");
        if (TornTail is { } t) sb.Append(ci, $"TORN TAIL        {t} - resume the writer to repair\n");
        sb.Append("by seed kind:\n");
        foreach (var kind in SeedPromptKinds.All)
        {
            long n = BySeedKind.GetValueOrDefault(kind);
            if (n == 0) continue;
            sb.Append(ci, $"  {SeedPromptKinds.Name(kind),-14} {n,10:N0}  {100.0 * n / Math.Max(1, Conversations),5:F1}%\n");
        }
        sb.Append(ci, $"by document ({ByDocument.Count:N0}):\n");
        foreach (var (doc, n) in ByDocument.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).Take(maxDocuments))
            sb.Append(ci, $"  {n,10:N0}  {doc}\n");
        if (ByDocument.Count > maxDocuments) sb.Append(ci, $"  ... and {ByDocument.Count - maxDocuments:N0} more\n");
        return sb.ToString();
    }
}
