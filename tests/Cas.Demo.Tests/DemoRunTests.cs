using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Jobs;
using Cas.Store;
using Cas.Tests.Common;
using Cas.Training;

namespace Cas.Demo.Tests;

/// <summary>
/// The README demo's library entry point on a tiny setting (stories260K from ../shared, skipped when absent): the collection
/// is created, its cartridges are stored, answers come back through gRPC for cas and rag with their accounting, and a
/// second run on the same data folder trains nothing.
/// </summary>
public sealed class DemoRunTests : IDisposable
{
    readonly string root = Path.Combine(Path.GetTempPath(), "cas-demo-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    static string Sample => Path.Combine(TestPaths.RepoRoot, "eval", "demo", "stories.jsonl");

    DemoOptions Tiny(string? datasets) => new()
    {
        DataDir = root,
        ModelPath = TestPaths.RequireShared("models/stories260K/stories260K.bin"),
        TokenizerPath = TestPaths.RequireShared("models/stories260K/tok512.bin"),
        DatasetsDir = datasets, SamplePath = Sample,
        Documents = 3, Questions = 2, MaxTokens = 8,
        Training = new CasTrainingOptions
        {
            Compression = 10, Resident = 3, MaxDistractors = 2, Steps = 2, BatchSize = 4,
            Probes = new DocumentProbeOptions { ExamplesPerChunk = 4, ContinuationTokens = 16, ChunkTokens = 0 },
        },
    };

    [Fact]
    public async Task SampleEndToEndThenCached()
    {
        var o = Tiny(datasets: null);
        var events = new List<DemoEvent>();
        var first = await DemoRun.ExecuteAsync(o, new SyncProgress<DemoEvent>(events.Add), TestContext.Current.CancellationToken);

        // The collection and its cartridges.
        Assert.Equal("sample", first.Source);
        Assert.StartsWith("demo-sample-", first.Collection);
        Assert.Equal(3, first.Documents);
        Assert.Equal(3, first.DocumentsAdded);
        Assert.True(first.Trained);
        Assert.Equal(3, first.Training.Trained);
        using (var catalog = new CollectionCatalog(root))
        using (var store = new FasterCartridgeStore(root))
        {
            var info = catalog.Get(first.Collection);
            Assert.Equal(3, info.Documents);
            var status = catalog.Status(first.Collection, store);
            Assert.All(status, s => Assert.Equal(CartridgeState.Fresh, s.State));
            var stored = store.List(first.Collection + "/");
            Assert.Equal(3, stored.Count);
            Assert.All(stored, c => Assert.Equal(1, c.Version));
            Assert.Equal(stored.Sum(c => c.Length), first.CartridgeSlotsTotal);
        }
        Assert.Contains(events, e => e is DemoTraining { Event: CasJobDocumentDone });

        // Answers through gRPC: two questions, each with cartridges and with RAG.
        Assert.Equal(4, first.Answers.Count);
        Assert.Equal(["cas", "rag", "cas", "rag"], first.Answers.Select(a => a.Mode));
        Assert.Equal(4, events.OfType<DemoAnswered>().Count());
        ITokenizer tok = TokenizerLoader.Load(o.TokenizerPath);
        foreach (var a in first.Answers)
        {
            Assert.InRange(a.CompletionTokens, 1, o.MaxTokens);
            Assert.NotEmpty(a.Text);
            Assert.NotEmpty(a.Documents);
            Assert.True(a.TotalMs > 0 && a.ClientMs > 0);
            Assert.Equal(a.CompletionTokens == o.MaxTokens ? "length" : a.FinishReason, a.FinishReason);
            if (a.Mode == "cas")
            {
                // Only the question is prefilled; the composed cartridges' slots are attended (at most every stored one).
                Assert.InRange(a.CartridgeSlots, 1, first.CartridgeSlotsTotal);
                Assert.True(a.PromptTokens <= tok.Encode("\nQuestion: " + a.Question + "\nAnswer:").Length + 1, $"cas prompt {a.PromptTokens} tokens holds more than the question");
            }
            else
            {
                Assert.Equal(0, a.CartridgeSlots);
                var cas = first.Answers.Single(x => x.Mode == "cas" && x.QuestionIndex == a.QuestionIndex);
                Assert.True(a.PromptTokens > cas.PromptTokens + 50, $"rag pasted no chunks: {a.PromptTokens} vs {cas.PromptTokens}");
            }
        }
        // The sample's first two stories ask about Lily and Ben: BM25 finds each gold document for both modes.
        Assert.All(first.Answers, a => Assert.True(a.GoldUsed, $"{a.Mode} answer to '{a.Question}' did not use {a.GoldDocumentId}: {string.Join(",", a.Documents)}"));

        // Second run: same data folder, nothing added or trained, the same cartridges (version 1) and the same greedy answers.
        var second = await DemoRun.ExecuteAsync(o, null, TestContext.Current.CancellationToken);
        Assert.Equal(first.Collection, second.Collection);
        Assert.Equal(0, second.DocumentsAdded);
        Assert.False(second.Trained);
        Assert.Equal(0, second.Training.Trained);
        Assert.Equal(0, second.Training.Steps);
        Assert.Equal(3, second.DocumentsFresh);
        Assert.Equal(first.Answers.Select(a => a.Text), second.Answers.Select(a => a.Text));
        using (var store = new FasterCartridgeStore(root))
            Assert.All(store.List(first.Collection + "/"), c => Assert.Equal(1, c.Version));
    }

    [Fact]
    public async Task DatasetsWhenPresent()
    {
        string datasets = TestPaths.RequireShared("datasets/squality/train.jsonl");
        var o = Tiny(Path.GetDirectoryName(Path.GetDirectoryName(datasets))) with { Questions = 1 };
        var r = await DemoRun.ExecuteAsync(o, null, TestContext.Current.CancellationToken);
        Assert.Equal("squality", r.Source);
        Assert.Equal(3, r.DocumentsFresh);
        Assert.Equal(["cas", "rag"], r.Answers.Select(a => a.Mode));
        Assert.All(r.Answers, a => Assert.True(a.CompletionTokens > 0));
    }

    [Fact]
    public void PassagesFitAndEndAtSentences()
    {
        ITokenizer tok = TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin"));
        var corpus = DemoCorpus.Load(null, Sample, tok, documents: 6, maxTokens: 60);
        Assert.Equal(6, corpus.Documents.Count);
        foreach (var d in corpus.Documents)
        {
            Assert.InRange(tok.Encode(d.Document.Text).Length, 1, 60);
            Assert.Matches(@"[.!?][""”’')]?$", d.Document.Text);
            Assert.Equal(2, d.Questions.Count);
        }
        // One question per document in turn, then the second of each.
        var q = corpus.Questions(8);
        Assert.Equal(corpus.Documents.Select(d => d.Document.Id).Concat(corpus.Documents.Take(2).Select(d => d.Document.Id)), q.Select(x => x.GoldDocumentId));

        Assert.Equal("Once upon a time.", DemoCorpus.StripFrontMatter("Produced by X\n[Transcriber's Note: a\n note]\n Once   upon\n a time."));
        var dup = new DemoCorpus("x", "x", [
            new DemoDocument(new Cas.Resources.Document("a", "t", "s", Cas.Resources.Document.NoMetadata, []), ["What is the plot of the story?", "Who is A?"]),
            new DemoDocument(new Cas.Resources.Document("b", "t", "s", Cas.Resources.Document.NoMetadata, []), ["What is the plot of the story?"])]);
        Assert.Equal([("What is the plot of the story?", "a"), ("Who is A?", "a")], dup.Questions(3));
    }

    [Fact]
    public void SplitCoversTheTextInPassagesThatFit()
    {
        ITokenizer tok = TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin"));
        string text = string.Join("\n\n", File.ReadLines(Sample).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("input").GetString()))
            + " " + new string('x', 300) + " and a sentence without an end " + string.Join(" ", Enumerable.Repeat("word", 200));
        foreach (int max in new[] { 16, 40, 200 })
        {
            var parts = DemoCorpus.Split(text, tok, max).ToList();
            Assert.All(parts, p => Assert.InRange(tok.Encode(p).Length, 1, max));
            // Nothing dropped or reordered (a word longer than a passage is cut between characters, so compare without spaces).
            Assert.Equal(System.Text.RegularExpressions.Regex.Replace(text, @"\s+", ""), string.Concat(parts).Replace(" ", ""));
        }
        // Without words longer than a passage, the passages joined by spaces are exactly the whitespace-collapsed text.
        string stories = text[..text.IndexOf(" xxx", StringComparison.Ordinal)];
        Assert.Equal(System.Text.RegularExpressions.Regex.Replace(stories, @"\s+", " ").Trim(), string.Join(" ", DemoCorpus.Split(stories, tok, 40)));
        // With room for several sentences, every passage ends at a sentence end (the sample's stories end with one).
        Assert.All(DemoCorpus.Split(stories, tok, 200), p => Assert.Matches(@"[.!?][""”’')]?$", p));
        Assert.Empty(DemoCorpus.Split("  \n ", tok, 10));
    }
}
