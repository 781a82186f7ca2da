using Cas.Engine;

namespace Cas.Training;

/// <summary>Training examples from a self-study dataset (<c>.casds</c>, see src/Cas.Data/DATASET_FORMAT.md).</summary>
public static class DatasetExamples
{
    /// <summary>
    /// The student's view of one conversation: its messages' tokens concatenated (they follow the cartridge directly;
    /// the chunk is never seen). A message with targets contributes, for each of its tokens, the teacher's distribution
    /// for that token as the target of the position before it. Entries with probability 0 (log-prob −∞) are dropped.
    /// Sequences longer than <paramref name="maxLength"/> are cut (positions kept up to the cut).
    /// </summary>
    public static TrainingSequence FromConversation(Conversation conversation, int maxLength = int.MaxValue)
    {
        ArgumentNullException.ThrowIfNull(conversation);
        if (maxLength <= 0) throw new ArgumentOutOfRangeException(nameof(maxLength));
        int total = 0;
        foreach (var m in conversation.Messages) total += m.Tokens.Length;
        int n = Math.Min(total, maxLength);
        var tokens = new int[n];
        var b = new SparseTargets.Builder(n);
        var ids = new List<int>(32); var lps = new List<float>(32);
        int at = 0;
        foreach (var m in conversation.Messages)
        {
            if (m.Targets is { } tg)
            {
                if (tg.Length != m.Tokens.Length)
                    throw new InvalidRequestException($"conversation {conversation.Id}: a {m.Role} message has {m.Tokens.Length} tokens but targets for {tg.Length} positions.");
                for (int p = 0; p < tg.Length; p++)
                {
                    int pos = at + p - 1; // the position that predicts token at+p
                    if (pos < 0) continue;
                    if (pos >= n) break;
                    ids.Clear(); lps.Clear();
                    var pi = tg.IdsAt(p); var pl = tg.LogProbsAt(p);
                    for (int j = 0; j < pi.Length; j++)
                        if (float.IsFinite(pl[j])) { ids.Add(pi[j]); lps.Add(Math.Min(pl[j], 0f)); }
                    if (ids.Count > 0) b.Add(pos, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(ids), System.Runtime.InteropServices.CollectionsMarshal.AsSpan(lps));
                }
            }
            int take = Math.Min(m.Tokens.Length, n - at);
            if (take > 0) m.Tokens.AsSpan(0, take).CopyTo(tokens.AsSpan(at));
            at += m.Tokens.Length;
            if (at > n) break; // position n-1 may still predict the first token past the cut
        }
        return new TrainingSequence(tokens, b.Build());
    }

    /// <summary>
    /// Reads every complete record of a dataset (a torn tail left by an interrupted writer is ignored and reported in
    /// the description). Token ids must be below <paramref name="vocabSize"/>; sequences are cut to <paramref name="maxLength"/>.
    /// </summary>
    public static TrainingExamples Load(string path, int vocabSize, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var reader = DatasetReader.Open(path, new DatasetReadOptions(StopAtTornTail: true));
        var items = new List<TrainingSequence>();
        var docs = new List<string>();
        var seenDocs = new HashSet<string>(StringComparer.Ordinal);
        int cut = 0;
        foreach (var conv in reader.ReadAll())
        {
            var seq = FromConversation(conv, maxLength);
            foreach (int t in seq.Tokens) CheckId(t);
            foreach (int t in seq.Targets.Ids) CheckId(t);
            int total = 0;
            foreach (var m in conv.Messages) total += m.Tokens.Length;
            if (total > maxLength) cut++;
            items.Add(seq);
            if (seenDocs.Add(conv.Chunk.DocumentId)) docs.Add(conv.Chunk.DocumentId);

            void CheckId(int id)
            {
                if ((uint)id >= (uint)vocabSize)
                    throw new InvalidRequestException($"{path}: conversation {conv.Id} uses token id {id}, outside this model's vocabulary of {vocabSize}; the dataset was made with another tokenizer or model.");
            }
        }
        if (items.Count == 0) throw new InvalidRequestException($"the dataset {path} holds no conversations; there is nothing to train on.");
        string desc = $"{Path.GetFileName(path)}: {items.Count} conversations from {docs.Count} document(s)";
        if (cut > 0) desc += $", {cut} cut to {maxLength} tokens";
        if (reader.TornTail is { } tail) desc += $", {tail} ignored";
        return new TrainingExamples(items, docs, desc);
    }
}
