namespace Cas.SelfStudy.Tests;

public class StatsShowTests : IDisposable
{
    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    static Conversation Conv(ulong id, SeedPromptKind kind, string doc, int[] user, int[] answer, int[] ks)
    {
        var b = new SparseTargets.Builder();
        for (int p = 0; p < ks.Length; p++)
            b.Add(Enumerable.Range(0, ks[p]).Select(j => answer[p] + j).ToArray(), Enumerable.Range(0, ks[p]).Select(j => -0.25f * (j + 1)).ToArray());
        return new Conversation(id, new ChunkLocation(doc, 0, 10, 0, 40), "chunk text", kind, "seed",
            [new ConversationMessage(MessageRole.User, "q", user), new ConversationMessage(MessageRole.Assistant, "a", answer, b.Build())]);
    }

    [Fact]
    public void Stats_count_exactly()
    {
        var path = dir.File("s.casds");
        using (var w = DatasetWriter.Open(path, resume: false, Make.NoSync with { Metadata = new Dictionary<string, string> { ["model"] = "m1" } }))
        {
            w.Append(Conv(1, SeedPromptKind.Question, "d1", [1, 2, 3], [65, 66], [3, 1]));
            w.Append(Conv(2, SeedPromptKind.Question, "d2", [4], [67, 68, 69], [2, 2, 0]));
            w.Append(Conv(3, SeedPromptKind.Creative, "d1", [5, 6], [70], [5]));
        }
        var s = DatasetStats.Compute(path);
        Assert.Equal(3, s.Conversations);
        Assert.Equal(6, s.Messages);
        Assert.Equal(3 + 2 + 1 + 3 + 2 + 1, s.TotalTokens);
        Assert.Equal(6, s.AssistantTokens);
        Assert.Equal(6, s.TargetPositions);
        Assert.Equal(13, s.TargetEntries);
        Assert.Equal(13 / 6.0, s.MeanK, 12);
        Assert.Equal((0, 5), (s.MinK, s.MaxK));
        Assert.Equal(2, s.BySeedKind[SeedPromptKind.Question]);
        Assert.Equal(1, s.BySeedKind[SeedPromptKind.Creative]);
        Assert.False(s.BySeedKind.ContainsKey(SeedPromptKind.Generic));
        Assert.Equal(2, s.ByDocument["d1"]);
        Assert.Equal(1, s.ByDocument["d2"]);
        Assert.Equal(new FileInfo(path).Length, s.FileBytes);
        Assert.Null(s.TornTail);
        string text = s.Format();
        Assert.Contains("conversations    3\n", text);
        Assert.Contains("mean k 2.17, min 0, max 5", text);
        Assert.Contains("meta model", text);
        Assert.Contains("  question                2   66.7%\n", text);
        Assert.Contains("           2  d1\n", text);

        // Torn tail: stats of the complete records, and the tail reported.
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^3]);
        var torn = DatasetStats.Compute(path);
        Assert.Equal(2, torn.Conversations);
        Assert.NotNull(torn.TornTail);
        Assert.Contains("TORN TAIL", torn.Format());
    }

    [Fact]
    public void Stats_of_an_empty_dataset_are_zero()
    {
        var path = dir.File("e.casds");
        using (DatasetWriter.Open(path, resume: false, Make.NoSync)) { }
        var s = DatasetStats.Compute(path);
        Assert.Equal((0L, 0L, 0.0, 0, 0), (s.Conversations, s.TotalTokens, s.MeanK, s.MinK, s.MaxK));
        Assert.Contains("conversations    0", s.Format());
    }

    [Fact]
    public void Show_renders_conversations_with_decoded_targets()
    {
        var path = dir.File("show.casds");
        using (var w = DatasetWriter.Open(path, resume: false, Make.NoSync))
        {
            w.Append(Conv(10, SeedPromptKind.Question, "d1", [72, 105], [65, 10], [3, 1]));
            w.Append(Conv(11, SeedPromptKind.UseCase, "d2", [1], [80], [2]));
            w.Append(Conv(12, SeedPromptKind.Generic, "d3", [1], [81], [1]));
        }
        string withTok = DatasetShow.Format(path, new DatasetShowOptions { Count = 1, Tokenizer = new CharTokenizer(), TopKShown = 2 });
        Assert.Contains("=== #0 id 000000000000000a  question  d1 tokens [0,10) chars [0,40)", withTok);
        Assert.Contains("[assistant] (2 tokens)", withTok);
        Assert.Contains("     0 'A'              | 'A' -0.250 'B' -0.500 (+1)\n", withTok);
        Assert.Contains("     1 '\\n'             | '\\n' -0.250\n", withTok);
        Assert.DoesNotContain("id 000000000000000b", withTok);

        string noTok = DatasetShow.Format(path, new DatasetShowOptions { Count = 5, Skip = 1, ShowChunk = true });
        Assert.Contains("=== #1 id 000000000000000b  use_case", noTok);
        Assert.Contains("=== #2 id 000000000000000c  generic", noTok);
        Assert.DoesNotContain("#0 ", noTok);
        Assert.Contains("#80 -0.250 #81 -0.500", noTok);
        Assert.Contains("chunk:\n    chunk text", noTok);

        Assert.Contains("no conversations after the first 3", DatasetShow.Format(path, new DatasetShowOptions { Skip = 5 }));
    }
}
