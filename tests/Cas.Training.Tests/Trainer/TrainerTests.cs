using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;

namespace Cas.Training.Tests.Trainer;

public class TrainerTests
{
    static readonly DocumentProbeOptions SmallProbes = new()
    {
        ChunkTokens = 100, ExamplesPerChunk = 12, MinProbeTokens = 3, MaxProbeTokens = 8, ContinuationTokens = 12, GenerationBatch = 12,
    };

    static (Model Model, TrainingExamples Data) RandomSetup(int count = 12, int seed = 1)
    {
        var model = TrainerFixtures.Model();
        var data = new TrainingExamples(TrainerFixtures.RandomExamples(count, model.Config.VocabSize, seed), ["random"], "random examples");
        return (model, data);
    }

    static Cartridge NewCartridge(Model model, int p = 8, int frozen = 1) =>
        Cartridge.ForModel(model, CartridgeInit.RandomText(model, new CharTokenizer(), p), CartridgeInitKind.RandomText, frozen);

    [Fact]
    public void DistillationLowersTrainAndHeldOutLossAndFrozenSlotsStayBitExact()
    {
        var model = TrainerFixtures.Model();
        var tok = new CharTokenizer();
        var train = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "story", SmallProbes);
        var heldOut = DocumentProbes.Build(model, tok, TrainerFixtures.Story, "story", SmallProbes with { Split = ProbeSplit.HeldOut, Seed = 99 });
        int[] doc = [1, .. tok.Encode(TrainerFixtures.Story)];
        var cart = Cartridge.ForModel(model, CartridgeInit.FirstK(model, doc, 10), CartridgeInitKind.FirstK, 2);
        var before = TrainerFixtures.Clone(cart.Prefix);
        var options = new TrainingOptions { Steps = 30, BatchSize = 4, LearningRate = 2e-2f, FrozenSlots = 2 };
        var state = TrainingState.Start(cart, options, train);
        var result = new CartridgeTrainer(model).Run(state, train, heldOut);

        Assert.True(result.Finished);
        Assert.Equal(30, result.Steps);
        Assert.Equal(30, state.Losses.Count);
        Assert.Equal(state.Losses[0], result.InitialLoss!.Value, 6);
        Assert.True(result.FinalLoss < 0.8 * result.InitialLoss, $"train loss {result.InitialLoss} → {result.FinalLoss}");
        // Held-out loss is measured before and after (whether it falls is checked on the real model, Stories260KTrainingTests).
        Assert.True(result.HeldOutInitial > 0 && double.IsFinite(result.HeldOutFinal!.Value));
        Assert.Equal(result.HeldOutInitial, state.HeldOutInitial);
        Assert.Equal(30, cart.StepsTrained);
        Assert.Equal(result.HeldOutFinal, cart.HeldOutLoss);

        int p = 10, hd = model.Config.HeadDim;
        for (int l = 0; l < model.Config.Layers; l++)
            for (int h = 0; h < model.Config.KvHeads; h++)
            {
                var frozenK = before.Keys[l].AsSpan(h * p * hd, 2 * hd).ToArray();
                Assert.Equal(frozenK, cart.Prefix.Keys[l].AsSpan(h * p * hd, 2 * hd).ToArray());
                Assert.Equal(before.Values[l].AsSpan(h * p * hd, 2 * hd).ToArray(), cart.Prefix.Values[l].AsSpan(h * p * hd, 2 * hd).ToArray());
                Assert.NotEqual(before.Keys[l].AsSpan((h * p + 2) * hd, 8 * hd).ToArray(), cart.Prefix.Keys[l].AsSpan((h * p + 2) * hd, 8 * hd).ToArray());
                Assert.NotEqual(before.Values[l].AsSpan((h * p + 2) * hd, 8 * hd).ToArray(), cart.Prefix.Values[l].AsSpan((h * p + 2) * hd, 8 * hd).ToArray());
            }
    }

    [Fact]
    public void AccumulatedMicroBatchesGiveTheSameUpdateAsOneBatch()
    {
        var (model, data) = RandomSetup();
        var a = NewCartridge(model); var b = NewCartridge(model);
        var one = TrainingState.Start(a, new TrainingOptions { Steps = 3, BatchSize = 4, Accumulate = 1, ClipNorm = 0 }, data);
        var acc = TrainingState.Start(b, new TrainingOptions { Steps = 3, BatchSize = 2, Accumulate = 2, ClipNorm = 0 }, data);
        var trainer = new CartridgeTrainer(model);
        trainer.Run(one, data);
        trainer.Run(acc, data);
        for (int s = 0; s < 3; s++) Assert.Equal(one.Losses[s], acc.Losses[s], 1e-5f);
        for (int l = 0; l < model.Config.Layers; l++)
            for (int i = 0; i < a.Prefix.Keys[l].Length; i++)
            {
                Assert.Equal(a.Prefix.Keys[l][i], b.Prefix.Keys[l][i], 2e-5f);
                Assert.Equal(a.Prefix.Values[l][i], b.Prefix.Values[l][i], 2e-5f);
            }

        // The loss of a step is the mean per target token over the whole accumulated batch, not a mean of means.
        var cursor = new DataCursor(0, 0);
        var order = new DataOrder(data.Count, 1);
        var first = Enumerable.Range(0, 4).Select(_ => data[order.Next(ref cursor)]).ToList();
        var fresh = NewCartridge(model);
        var bp = new CartridgeBackprop(model, 64, training: false);
        double sum = 0; int targets = 0;
        foreach (var ex in first) { bp.Loss(fresh.Prefix, [ex]); sum += bp.LastLossSum; targets += ex.Targets.TargetPositions; }
        Assert.Equal(sum / targets, acc.Losses[0], 1e-5);
    }

    [Fact]
    public void ResumingFromACheckpointRepeatsTheUninterruptedRunBitForBit()
    {
        var (model, data) = RandomSetup(count: 10);
        var options = new TrainingOptions { Steps = 12, BatchSize = 3, Accumulate = 2, LearningRate = 5e-2f, CheckpointEvery = 4, Schedule = LrScheduleKind.Cosine };
        var dir = TrainerFixtures.TempDir();
        var trainer = new CartridgeTrainer(model);

        var whole = NewCartridge(model);
        var wholeState = TrainingState.Start(whole, options, data);
        trainer.Run(wholeState, data, checkpointPath: Path.Combine(dir, "whole.ckpt"));

        // Dies after step 7: the last checkpoint holds step 4; steps 5-7 are lost and redone.
        string ckpt = Path.Combine(dir, "run.ckpt");
        var cut = TrainingState.Start(NewCartridge(model), options, data);
        var partial = trainer.Run(cut, data, checkpointPath: ckpt, stopAfterStep: 7);
        Assert.False(partial.Finished);
        Assert.Equal(7, partial.Steps);

        var resumed = TrainingState.LoadCheckpoint(ckpt, model);
        Assert.Equal(4, resumed.Step);
        Assert.Equal(wholeState.Losses.Take(4), resumed.Losses);
        Assert.Equal(0, resumed.Options.CheckpointEvery); // not stored: the resuming run says how often
        resumed.ContinueWith(options, data);
        Assert.Equal(4, resumed.Options.CheckpointEvery);
        trainer.Run(resumed, data, checkpointPath: ckpt);

        Assert.Equal(12, resumed.Step);
        Assert.Equal(wholeState.Losses, resumed.Losses);
        Assert.Equal(wholeState.Cursor, resumed.Cursor);
        for (int l = 0; l < model.Config.Layers; l++)
        {
            Assert.Equal(whole.Prefix.Keys[l], resumed.Cartridge.Prefix.Keys[l]);
            Assert.Equal(whole.Prefix.Values[l], resumed.Cartridge.Prefix.Values[l]);
        }
        for (int a = 0; a < wholeState.Parameters.Count; a++)
        {
            Assert.Equal(wholeState.Optimizer.M[a], resumed.Optimizer.M[a]);
            Assert.Equal(wholeState.Optimizer.V[a], resumed.Optimizer.V[a]);
        }
        Assert.Equal(whole.FinalLoss, resumed.Cartridge.FinalLoss);

        // A checkpoint is also a loadable cartridge.
        var asCartridge = Cartridge.Load(ckpt, model);
        Assert.Equal(12, asCartridge.StepsTrained);
        Assert.Equal(whole.Prefix.Keys[0], asCartridge.Prefix.Keys[0]);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void ResumeRefusesOtherSettingsOtherDataAndAnotherModel()
    {
        var (model, data) = RandomSetup();
        var options = new TrainingOptions { Steps = 4, BatchSize = 2, CheckpointEvery = 2 };
        var dir = TrainerFixtures.TempDir();
        string ckpt = Path.Combine(dir, "c.ckpt");
        new CartridgeTrainer(model).Run(TrainingState.Start(NewCartridge(model), options, data), data, checkpointPath: ckpt, stopAfterStep: 2);
        var state = TrainingState.LoadCheckpoint(ckpt, model);

        // Checkpoint frequency may change; anything that changes the result may not.
        state.EnsureSameRun(options with { CheckpointEvery = 1 }, data);
        var e = Assert.Throws<InvalidRequestException>(() => state.EnsureSameRun(options with { LearningRate = 0.05f, BatchSize = 3 }, data));
        Assert.Contains("LearningRate 0.02 (now 0.05)", e.Message);
        Assert.Contains("BatchSize 2 (now 3)", e.Message);
        var other = new TrainingExamples(TrainerFixtures.RandomExamples(12, model.Config.VocabSize, seed: 2), ["random"], "other");
        Assert.Contains("other training data", Assert.Throws<InvalidRequestException>(() => state.EnsureSameRun(options, other)).Message);
        Assert.Throws<InvalidRequestException>(() => new CartridgeTrainer(model).Run(state, other));

        var e2 = Assert.Throws<CartridgeMismatchException>(() => TrainingState.LoadCheckpoint(ckpt, TrainerFixtures.Model(seed: 77)));
        Assert.StartsWith("cannot resume", e2.Message);

        // A plain cartridge is not a checkpoint.
        string plain = Path.Combine(dir, "plain.safetensors");
        NewCartridge(model).Save(plain);
        Assert.Contains("not a training checkpoint", Assert.Throws<CartridgeFormatException>(() => TrainingState.LoadCheckpoint(plain, model)).Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void ProgressIsReportedEveryStepAndCheckpointsOnSchedule()
    {
        var (model, data) = RandomSetup();
        var dir = TrainerFixtures.TempDir();
        string ckpt = Path.Combine(dir, "c.ckpt");
        var seen = new List<TrainingProgress>();
        var options = new TrainingOptions { Steps = 6, BatchSize = 2, CheckpointEvery = 4 };
        var r = new CartridgeTrainer(model).Run(TrainingState.Start(NewCartridge(model), options, data), data, checkpointPath: ckpt, progress: seen.Add);
        Assert.Equal(Enumerable.Range(1, 6), seen.Select(s => s.Step));
        Assert.All(seen, s => Assert.Equal(6, s.TotalSteps));
        Assert.Equal([false, false, false, true, false, false], seen.Select(s => s.Checkpointed));
        Assert.Equal(TimeSpan.Zero, seen[^1].Eta);
        Assert.All(seen, s => Assert.True(s.TokensPerSecond > 0 && s.GradNorm > 0));
        var schedule = options.CreateSchedule();
        for (int i = 0; i < 6; i++) Assert.Equal(schedule.At(i), seen[i].LearningRate);
        Assert.Equal(4, TrainingState.LoadCheckpoint(ckpt, model).Step);
        Assert.True(r.Tokens > 0);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void ExcessLossIsTheLossAboveTheTeachersEntropy()
    {
        var (model, data) = RandomSetup(count: 6);
        var seen = new List<TrainingProgress>();
        // One batch = every example once, so the batch's teacher entropy is the data's loss floor.
        new CartridgeTrainer(model).Run(TrainingState.Start(NewCartridge(model), new TrainingOptions { Steps = 2, BatchSize = 6 }, data), data, progress: seen.Add);
        double floor = 0;
        for (int i = 0; i < data.Count; i++)
            foreach (float lp in data[i].Targets.LogProbs) floor -= Math.Exp(lp) * lp;
        floor /= data.TargetPositions;
        Assert.Equal(floor, data.LossFloor, 1e-12);
        Assert.All(seen, p => Assert.Equal(floor, p.Loss - p.ExcessLoss, 1e-5));

        var ntp = new TrainingExamples([TrainingSequence.NextToken([3, 4, 5, 6, 7, 8])], ["x"], "ntp");
        Assert.Equal(0, ntp.LossFloor);
        seen.Clear();
        new CartridgeTrainer(model).Run(TrainingState.Start(NewCartridge(model), new TrainingOptions { Steps = 1, BatchSize = 1 }, ntp), ntp, progress: seen.Add);
        Assert.Equal(seen[0].Loss, seen[0].ExcessLoss, 1e-6);
    }

    [Fact]
    public void CancellationWritesACheckpointFirst()
    {
        var (model, data) = RandomSetup();
        var dir = TrainerFixtures.TempDir();
        string ckpt = Path.Combine(dir, "c.ckpt");
        using var cts = new CancellationTokenSource();
        var state = TrainingState.Start(NewCartridge(model), new TrainingOptions { Steps = 50, BatchSize = 2 }, data);
        Assert.Throws<OperationCanceledException>(() => new CartridgeTrainer(model).Run(state, data, checkpointPath: ckpt,
            progress: p => { if (p.Step == 3) cts.Cancel(); }, cancel: cts.Token));
        Assert.Equal(3, TrainingState.LoadCheckpoint(ckpt, model).Step);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void DivergenceAndOversizedExamplesAreReported()
    {
        var (model, data) = RandomSetup();
        var cart = NewCartridge(model);
        cart.Prefix.Keys[1][cart.Prefix.HeadDim * 3] = float.NaN; // a trainable slot
        var state = TrainingState.Start(cart, new TrainingOptions { Steps = 3, BatchSize = 2 }, data);
        var e = Assert.Throws<TrainingDivergedException>(() => new CartridgeTrainer(model).Run(state, data));
        Assert.Contains("step 1", e.Message);

        var longOnes = new TrainingExamples(TrainerFixtures.RandomExamples(3, model.Config.VocabSize, 1, minLen: 155, maxLen: 155), ["x"], "long");
        var s2 = TrainingState.Start(NewCartridge(model), new TrainingOptions { Steps = 3, BatchSize = 2 }, longOnes);
        var e2 = Assert.Throws<InvalidRequestException>(() => new CartridgeTrainer(model).Run(s2, longOnes));
        Assert.Contains("context is 160", e2.Message);

        Assert.Contains("empty", Assert.Throws<InvalidRequestException>(() => new TrainingExamples([TrainingSequence.NextToken([5])], ["x"], "one token")).Message);
    }
}
