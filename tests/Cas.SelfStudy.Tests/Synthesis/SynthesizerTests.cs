using Cas.Engine;
using Cas.Resources;

namespace Cas.SelfStudy.Tests.Synthesis;

/// <summary>Self-study on stories260K (a real base model) with base-model framing.</summary>
public class SynthesizerTests
{
    static SelfStudySynthesizer Synth(SelfStudyOptions options, List<Document>? docs = null)
    {
        var (model, tok) = Kit.Stories();
        return new SelfStudySynthesizer(model, tok, null, docs ?? Kit.StoryDocuments(), options);
    }

    [Fact]
    public void SameSeedGivesIdenticalBytes()
    {
        using var dir = new TempDir();
        var a = Kit.RunToFile(Synth(Kit.SmallOptions()), dir.File("a.casds"));
        var b = Kit.RunToFile(Synth(Kit.SmallOptions()), dir.File("b.casds"));
        Assert.Equal(a, b);
        var c = Kit.RunToFile(Synth(Kit.SmallOptions() with { Seed = 8 }), dir.File("c.casds"));
        Assert.NotEqual(a, c);
    }

    [Fact]
    public void RecordsFollowTheRunLayout()
    {
        var o = Kit.SmallOptions();
        var records = Kit.RunToList(Synth(o));
        Assert.Equal(12, records.Count);
        var chunker = Synth(o).Chunker;
        var mix = o.SeedPrompts;
        for (int i = 0; i < records.Count; i++)
        {
            var c = records[i];
            Assert.Equal(ConversationIds.For(o.Seed, i), c.Id);
            // Conversations i share chunk i / ConversationsPerChunk, and the seed prompt is the mix's choice for i.
            var chunk = chunker.SampleAt(o.Seed, i / o.ConversationsPerChunk);
            Assert.Equal(chunk.Location, c.Chunk);
            Assert.Equal(chunk.Text, c.ChunkText);
            var seed = mix.SampleAt(o.Seed, i);
            Assert.Equal(seed.Kind, c.SeedKind);
            Assert.Equal(seed.Text, c.SeedPrompt);
            Assert.Equal([MessageRole.User, MessageRole.Assistant], c.Messages.Select(m => m.Role));
            Assert.Null(c.Messages[0].Targets);
            Assert.InRange(c.Messages[1].Tokens.Length, 1, o.AnswerAgent.MaxTokens);
            Assert.InRange(c.Chunk.TokenEnd - c.Chunk.TokenStart, o.MinChunkTokens, o.MaxChunkTokens);
        }
    }

    [Fact]
    public void StudentSequenceExcludesTheChunkAndEndsWithTheTeachersExactIds()
    {
        var (model, tok) = Kit.Stories();
        var o = Kit.SmallOptions(6) with { Rounds = 2 };
        var records = Kit.RunToList(Synth(o));
        var framing = new BaseSynthesisFraming(tok);
        Assert.NotEmpty(records);
        foreach (var c in records)
        {
            var student = Kit.StudentSequence(c);
            string text = tok.Decode(student);
            // No chunk, no passage framing: the conversation starts at the user turn.
            Assert.StartsWith("User: ", tok.Decode(c.Messages[0].Tokens));
            Assert.DoesNotContain(c.ChunkText.Trim(), text);
            Assert.DoesNotContain("<passage>", text);
            Assert.Equal(c.Messages[^1].Tokens, student[^c.Messages[^1].Tokens.Length..]);
            // The teacher run from scratch on chunk prefix + student sequence reproduces every answer id
            // (B is greedy) and every stored log-prob: the targets belong to exactly these tokens.
            Kit.CheckAgainstTeacher(model, framing.TeacherPrefix(c.ChunkText), c);
        }
        // Two rounds where the context allowed: a second user turn starts on a new line.
        var two = records.Where(r => r.Messages.Count == 4).ToList();
        Assert.NotEmpty(two);
        Assert.All(two, c => Assert.StartsWith("\nUser: ", tok.Decode(c.Messages[2].Tokens)));
    }

    [Fact]
    public void SharingTheChunkPrefixGivesTheSameAnswersAndTargets()
    {
        var shared = Kit.RunToList(Synth(Kit.SmallOptions()));
        var whole = Kit.RunToList(Synth(Kit.SmallOptions() with { SharePrefix = false }));
        Kit.SameRecords(shared, whole, logProbTolerance: 1e-4);
    }

    [Fact]
    public void ConcurrencyChangesNoTokenAndAtMostTheLastBitsOfLogProbs()
    {
        // Default BLAS choice: the batch size picks the kernel, so only rounding may differ.
        var one = Kit.RunToList(Synth(Kit.SmallOptions() with { Concurrency = 1 }));
        var eight = Kit.RunToList(Synth(Kit.SmallOptions() with { Concurrency = 8 }));
        Kit.SameRecords(one, eight, logProbTolerance: 1e-4);
    }

    [Fact]
    public void BadInputIsRefusedWithClearErrors()
    {
        var (model, tok) = Kit.Stories();
        var docs = Kit.StoryDocuments();
        var o = Kit.SmallOptions();

        // A resource that yields no documents (an empty file) leaves nothing to synthesize from.
        using var dir = new TempDir();
        File.WriteAllText(dir.File("empty.txt"), "  \n");
        var report = new ResourceReport();
        var none = ResourceSpec.Parse("text:" + dir.File("empty.txt")).Read(report).ToList();
        Assert.Equal(1, report.EmptyDocumentsSkipped);
        var e = Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, none, o));
        Assert.Contains("no documents", e.Message);

        e = Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, docs, o with { Conversations = 0 }));
        Assert.Contains("conversations", e.Message);
        Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, docs, o with { Conversations = -5 }));

        Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, docs, o with { MinChunkTokens = 50, MaxChunkTokens = 40 }));

        // Chunks that cannot fit stories260K's 512-token context with the prompts and answers.
        e = Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, docs, o with { MinChunkTokens = 400, MaxChunkTokens = 500 }));
        Assert.Contains("--chunk-tokens", e.Message);
        Assert.Contains("512", e.Message);

        Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, docs, o with { TopK = 0 }));
        Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, docs, o with { Concurrency = 0 }));
        Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, null, docs, o with { UserAgent = o.UserAgent with { Temperature = -1 } }));
        e = Assert.Throws<InvalidRequestException>(() => new SelfStudySynthesizer(model, tok, Cas.Engine.Tokenizers.ChatFormatKind.Llama2, docs, o));
        Assert.Contains("llama2", e.Message);
    }
}

/// <summary>Tests that need batch-independent kernels (they switch the process-wide BLAS backend).</summary>
[Collection(GlobalBlasCollection.Name)]
public class SynthesizerExactTests
{
    static SelfStudySynthesizer Synth(SelfStudyOptions options)
    {
        var (model, tok) = Kit.Stories();
        return new SelfStudySynthesizer(model, tok, null, Kit.StoryDocuments(), options);
    }

    [Fact]
    public void ConcurrencyOneAndEightGiveIdenticalBytes()
    {
        using var blas = new ManagedBlas();
        using var dir = new TempDir();
        var one = Kit.RunToFile(Synth(Kit.SmallOptions() with { Concurrency = 1 }), dir.File("c1.casds"));
        var eight = Kit.RunToFile(Synth(Kit.SmallOptions() with { Concurrency = 8 }), dir.File("c8.casds"));
        Assert.Equal(one, eight);
    }

    [Fact]
    public void ResumingAnInterruptedRunGivesTheUninterruptedFile()
    {
        using var blas = new ManagedBlas();
        using var dir = new TempDir();
        var o = Kit.SmallOptions(14) with { Concurrency = 4 };
        var whole = Kit.RunToFile(Synth(o), dir.File("whole.casds"));

        // Cancel once 6 conversations are written: the run stops in the wave after (8 written).
        string path = dir.File("resumed.casds");
        var first = Synth(o);
        using (var cts = new CancellationTokenSource())
        using (var w = DatasetWriter.Open(path, resume: false, Kit.WriterOptions(first)))
        {
            int written = 0;
            Assert.Throws<OperationCanceledException>(() => first.Run(w.Contains, c =>
            {
                w.Append(c);
                if (++written == 6) cts.Cancel();
            }, cancel: cts.Token));
            Assert.Equal(8, w.Count);
        }
        // A crash in the middle of the last record: cut its last bytes.
        using (var f = new FileStream(path, FileMode.Open)) f.SetLength(f.Length - 7);

        var second = Synth(o);
        SynthesisSummary summary;
        using (var w = DatasetWriter.Open(path, resume: true, Kit.WriterOptions(second)))
        {
            Assert.NotNull(w.RepairedTornTail);
            Assert.Equal(7, w.ExistingCount);
            summary = second.WriteTo(w, cancel: TestContext.Current.CancellationToken);
        }
        Assert.Equal(7, summary.AlreadyPresent);
        Assert.Equal(7, summary.Written);
        Assert.Equal(whole, File.ReadAllBytes(path));

        // Resuming a finished dataset does nothing; asking for more continues it.
        using (var w = DatasetWriter.Open(path, resume: true, Kit.WriterOptions(Synth(o))))
            Assert.Equal(0, Synth(o).WriteTo(w, cancel: TestContext.Current.CancellationToken).Written);
        using (var w = DatasetWriter.Open(path, resume: true, Kit.WriterOptions(Synth(o))))
            Assert.Equal(2, Synth(o with { Conversations = 16 }).WriteTo(w, cancel: TestContext.Current.CancellationToken).Written);
        Assert.Equal(16, ReadIds(path).Distinct().Count());

        // A run with other settings cannot continue this file.
        var e = Assert.Throws<DatasetException>(() => DatasetWriter.Open(path, resume: true, Kit.WriterOptions(Synth(o with { Rounds = 2 }))));
        Assert.Contains("rounds", e.Message);
    }

    static List<ulong> ReadIds(string path) => Make.ReadAll(path).Select(c => c.Id).ToList();
}
