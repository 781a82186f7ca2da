using Cas.Engine;
using Cas.Engine.Tokenizers;

namespace Cas.SelfStudy.Tests.Synthesis;

/// <summary>The synthesis-run API: sizes derived from the model's context, explicit sizes kept, a whole run on stories260K.</summary>
public class SynthesisRunTests
{
    static SynthesisRunOptions Options(string output, params string[] resources) => new()
    {
        Resources = resources, OutputPath = output, Conversations = 4, Settings = new SelfStudyOptions { Concurrency = 4 },
    };

    [Fact]
    public void Sizes_not_given_fit_a_small_context_and_reach_the_papers_where_the_context_allows()
    {
        var (model, tok) = Kit.Stories();
        var o = Options("x.casds", "text:x.txt");
        var (userOverhead, teacherOverhead) = SelfStudySynthesizer.PromptOverheads(SynthesisFraming.Create(ChatFormatKind.Plain, tok), tok, SeedPromptMix.Uniform);

        // stories260K: 512 positions. Limits are a share of the context; the chunk takes what the prompts and the
        // generated tokens leave, so the first round fits exactly.
        var small = SynthesisRun.Plan(model.Config, tok, ChatFormatKind.Plain, o);
        Assert.Equal((32, 64), (small.MaxUserTokens, small.MaxAnswerTokens));
        Assert.Equal(512 - Math.Max(userOverhead + 32, teacherOverhead + 32 + 64), small.MaxChunkTokens);
        Assert.Equal(small.MaxChunkTokens / 2, small.MinChunkTokens);
        Assert.Equal(["max_user_tokens", "max_answer_tokens", "chunk_tokens", "min_chunk_tokens"], small.Derived);
        Assert.StartsWith($"chose min_chunk_tokens={small.MinChunkTokens}, chunk_tokens={small.MaxChunkTokens}, max_user_tokens=32, max_answer_tokens=64", small.Describe());

        // A long context gets the paper-sized defaults.
        var large = SynthesisRun.Plan(model.Config with { MaxSeqLen = 8192 }, tok, ChatFormatKind.Plain, o);
        Assert.Equal((512, 2048, 128, 256), (large.MinChunkTokens, large.MaxChunkTokens, large.MaxUserTokens, large.MaxAnswerTokens));

        // Given values are kept as they are (the synthesizer refuses ones that do not fit, saying what would).
        var given = SynthesisRun.Plan(model.Config, tok, ChatFormatKind.Plain, o with { MaxChunkTokens = 100, MaxAnswerTokens = 16 });
        Assert.Equal((50, 100, 32, 16), (given.MinChunkTokens, given.MaxChunkTokens, given.MaxUserTokens, given.MaxAnswerTokens));
        Assert.Contains("chunk_tokens=100 (given)", given.Describe());
        Assert.Contains("max_answer_tokens=16 (given)", given.Describe());
        Assert.DoesNotContain("max_user_tokens=32 (given)", given.Describe());

        // Limits so large that no chunk fits: a clear error.
        var e = Assert.Throws<InvalidRequestException>(() => SynthesisRun.Plan(model.Config, tok, ChatFormatKind.Plain, o with { MaxAnswerTokens = 500 }));
        Assert.Contains("--max-answer-tokens", e.Message);
    }

    [Fact]
    public void A_run_with_defaults_on_stories260K_writes_the_dataset_and_reports_its_choices()
    {
        var (model, tok) = Kit.Stories();
        using var dir = new TempDir();
        var docs = Kit.StoryDocuments(1, sentences: 60);
        string doc = dir.File("story.txt");
        File.WriteAllText(doc, docs[0].Text);
        var notes = new List<string>();
        long lastDone = -1;
        var progress = new SyncProgress<SynthesisRunEvent>(e =>
        {
            if (e is SynthesisRunNote n) notes.Add(n.Text);
            else if (e is SynthesisRunProgress p) lastDone = p.Progress.AlreadyPresent + p.Progress.Done;
        });
        var r = SynthesisRun.Execute(model, tok, Options(dir.File("ds.casds"), "text:" + doc), progress, TestContext.Current.CancellationToken);

        Assert.Equal("base", r.Framing);
        Assert.Equal(1, r.Documents);
        Assert.Equal(4, r.DatasetConversations);
        Assert.Equal(4, lastDone);
        Assert.Contains(notes, n => n == "framing: base model (plain text)");
        Assert.Contains(notes, n => n == r.Plan.Describe());
        using (var reader = DatasetReader.Open(r.OutputPath))
        {
            Assert.Equal($"{r.Plan.MinChunkTokens}:{r.Plan.MaxChunkTokens}", reader.Metadata["chunk_tokens"]);
            foreach (var c in reader.ReadAll())
                Assert.True(c.Messages.Single(m => m.Role == MessageRole.Assistant).Tokens.Length <= r.Plan.MaxAnswerTokens);
        }

        // Resuming a complete dataset adds nothing; a resource that yields nothing is refused before any work.
        var again = SynthesisRun.Execute(model, tok, Options(dir.File("ds.casds"), "text:" + doc) with { Resume = true }, cancel: TestContext.Current.CancellationToken);
        Assert.Equal(0, again.Summary.Written);
        Assert.Equal(4, again.Summary.AlreadyPresent);
        File.WriteAllText(dir.File("empty.txt"), "");
        Assert.Throws<InvalidRequestException>(() => SynthesisRun.Execute(model, tok, Options(dir.File("e.casds"), "text:" + dir.File("empty.txt")), cancel: TestContext.Current.CancellationToken));
        Assert.False(File.Exists(dir.File("e.casds")));
    }
}
