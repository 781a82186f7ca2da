using Cas.Engine;
using Cas.SelfStudy;

namespace Cas.Training.Tests.Trainer;

public class DatasetExamplesTests
{
    static Conversation Sample(ulong id, string doc = "doc-1")
    {
        // user [10, 11, 12] (no targets), assistant [20, 21] with targets for both tokens.
        var user = new ConversationMessage(MessageRole.User, "q", [10, 11, 12]);
        var targets = new SparseTargets([0, 2, 3], [20, 25, 21], [-0.1f, -2.5f, float.NegativeInfinity]);
        var targets2 = new SparseTargets([0, 2, 3], [20, 25, 21], [-0.1f, -2.5f, -0.01f]);
        var asst = new ConversationMessage(MessageRole.Assistant, "a", [20, 21], id == 99 ? targets : targets2);
        return new Conversation(id, new ChunkLocation(doc, 0, 5, 0, 20), "", SeedPromptKind.Question, "ask", [user, asst]);
    }

    [Fact]
    public void AssistantTargetsMoveToThePositionBeforeTheirToken()
    {
        var seq = DatasetExamples.FromConversation(Sample(1));
        Assert.Equal([10, 11, 12, 20, 21], seq.Tokens);
        Assert.False(seq.Targets.HasTarget(0)); Assert.False(seq.Targets.HasTarget(1));
        Assert.Equal([20, 25], seq.Targets.IdsAt(2).ToArray());   // position 2 (token 12) predicts token 20
        Assert.Equal([-0.1f, -2.5f], seq.Targets.LogProbsAt(2).ToArray());
        Assert.Equal([21], seq.Targets.IdsAt(3).ToArray());
        Assert.False(seq.Targets.HasTarget(4));

        // −∞ entries (probability 0) are dropped; a position left empty has no target.
        var inf = DatasetExamples.FromConversation(Sample(99));
        Assert.False(inf.Targets.HasTarget(3));
        Assert.Equal(1, inf.Targets.TargetPositions);

        // Cut to 3 tokens: position 2 keeps its target (it only needs tokens ≤ 2).
        var cut = DatasetExamples.FromConversation(Sample(1), maxLength: 3);
        Assert.Equal([10, 11, 12], cut.Tokens);
        Assert.Equal([20, 25], cut.Targets.IdsAt(2).ToArray());
    }

    [Fact]
    public void LoadReadsEveryConversationAndChecksTheVocabulary()
    {
        var dir = TrainerFixtures.TempDir();
        string path = Path.Combine(dir, "d.casds");
        using (var w = DatasetWriter.Open(path, resume: false, new DatasetWriterOptions { Fsync = false }))
        {
            w.Append(Sample(1, "doc-1"));
            w.Append(Sample(2, "doc-2"));
            w.Append(Sample(3, "doc-1"));
        }
        var data = DatasetExamples.Load(path, vocabSize: 100, maxLength: 64);
        Assert.Equal(3, data.Count);
        Assert.Equal(["doc-1", "doc-2"], data.DocumentIds);
        Assert.Equal(6, data.TargetPositions);
        Assert.Contains("3 conversations from 2 document(s)", data.Description);

        var e = Assert.Throws<InvalidRequestException>(() => DatasetExamples.Load(path, vocabSize: 21, maxLength: 64));
        Assert.Contains("token id 21", e.Message);

        string empty = Path.Combine(dir, "e.casds");
        DatasetWriter.Open(empty, resume: false, new DatasetWriterOptions { Fsync = false }).Dispose();
        Assert.Contains("holds no conversations", Assert.Throws<InvalidRequestException>(() => DatasetExamples.Load(empty, 100, 64)).Message);
        Directory.Delete(dir, true);
    }
}
