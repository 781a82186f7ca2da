using Cas.Engine;

namespace Cas.SelfStudy.Tests;

/// <summary>
/// The one targets type (Cas.Data.SparseTargets) that the dataset format and training share: its invariants, its two
/// builders, and that what training builds goes through the dataset codec unchanged.
/// </summary>
public class SparseTargetsTests
{
    [Fact]
    public void Invariants_are_checked_on_construction()
    {
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([], [], []));                   // no T+1 offsets
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([1, 1], [5], [0f]));             // offsets[0] ≠ 0
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 2], [1], [0f]));             // last offset ≠ entries
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [1, 2], [0f]));          // ids and log-probs unpaired
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 2, 1], [1, 2], [0f, 0f]));   // decreasing
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [-1], [0f]));            // negative id
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [1], [float.NaN]));
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [1], [float.PositiveInfinity]));
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [1], [SparseTargets.MaxLogProb * 2]));
        // Rounding slack above 0 and probability 0 (−∞, which datasets may store) are accepted.
        var t = new SparseTargets([0, 0, 2], [5, 9], [float.NegativeInfinity, SparseTargets.MaxLogProb]);
        Assert.Equal(2, t.Length);
        Assert.Equal(1, t.TargetPositions);
        Assert.False(t.HasTarget(0));
        Assert.True(t.HasTarget(1));
    }

    [Fact]
    public void Accessors_agree_with_the_flat_arrays()
    {
        var t = new SparseTargets([0, 3, 3, 4], [7, 1, 2, 9], [-0.1f, -1f, -3f, 0f]);
        Assert.Equal(3, t.Length);
        Assert.Equal([3, 0, 1], Enumerable.Range(0, 3).Select(t.K));
        Assert.Equal(4, t.TotalEntries);
        Assert.Equal(4 / 3.0, t.MeanK, 12);
        Assert.Equal(2, t.TargetPositions);
        Assert.Equal([7, 1, 2], t.IdsAt(0).ToArray());
        Assert.Equal([-0.1f, -1f, -3f], t.LogProbsAt(0).ToArray());
        Assert.True(t.IdsAt(1).IsEmpty);
        Assert.Equal([9], t.IdsAt(2).ToArray());
        Assert.Equal(0, SparseTargets.None(0).MeanK);
    }

    [Fact]
    public void The_positional_and_the_appending_builder_give_the_same_targets()
    {
        // Positional (training): positions skipped are masked, the length is padded.
        var positional = new SparseTargets.Builder(4).Add(1, [3, 4], [-0.5f, -1f]).Add(2, [8], [-0.1f]).Build();
        // Appending (datasets): one Add per position, empty for a masked one.
        var appending = new SparseTargets.Builder().Add([], []).Add([3, 4], [-0.5f, -1f]).Add([8], [-0.1f]).Add([], []).Build();
        Assert.Equal(positional.Offsets, appending.Offsets);
        Assert.Equal(positional.Ids, appending.Ids);
        Assert.Equal(positional.LogProbs, appending.LogProbs);
        Assert.Equal([0, 0, 2, 3, 3], positional.Offsets);
        Assert.Throws<ArgumentOutOfRangeException>(() => new SparseTargets.Builder(3).Add(2, [1], [0f]).Add(1, [1], [0f]));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SparseTargets.Builder(2).Add(2, [1], [0f]));
        Assert.Throws<InvalidRequestException>(() => new SparseTargets.Builder().Add([1, 2], [0f]));

        var fixedK = SparseTargets.FromFixedK(2, 2, [1, 2, 3, 4], [-0.1f, -2f, -0.3f, -1.5f]);
        Assert.Equal([0, 2, 4], fixedK.Offsets);
        Assert.Throws<InvalidRequestException>(() => SparseTargets.FromFixedK(2, 2, [1, 2, 3], [0f, 0f, 0f]));

        var ntp = SparseTargets.NextToken([10, 11, 12]);
        Assert.Equal([0, 1, 2, 2], ntp.Offsets);
        Assert.Equal([11, 12], ntp.Ids);
        Assert.Equal([0f, 0f], ntp.LogProbs);
    }

    [Fact]
    public void Targets_built_for_training_round_trip_through_the_dataset_format()
    {
        using var dir = new TempDir();
        var targets = new SparseTargets.Builder(3).Add(0, [5, 6], [-0.2f, -1.8f]).Add(2, [7], [float.NegativeInfinity]).Build();
        var c = new Conversation(42, new ChunkLocation("doc", 0, 3, 0, 9), "chunk", SeedPromptKind.Question, "ask",
            [new ConversationMessage(MessageRole.User, "u", [1, 2]), new ConversationMessage(MessageRole.Assistant, "abc", [5, 6, 7], targets)]);
        string path = dir.File("t.casds");
        using (var w = DatasetWriter.Open(path, resume: false, Make.NoSync)) w.Append(c);
        var back = Make.ReadAll(path).Single().Messages[1].Targets!;
        Assert.Equal(targets.Offsets, back.Offsets);
        Assert.Equal(targets.Ids, back.Ids);
        Assert.Equal(targets.LogProbs, back.LogProbs);
    }
}
