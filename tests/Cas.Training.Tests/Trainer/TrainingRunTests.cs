using Cas.Engine;
using Cas.Engine.Models;

namespace Cas.Training.Tests.Trainer;

/// <summary>The training-run API used directly (what the CLI, the service and jobs call), on the real stories260K.</summary>
public class TrainingRunTests
{
    static TrainingRunOptions Small(string doc, string output) => new()
    {
        DataPath = doc, OutputPath = output, CartridgeTokens = 16, Steps = 12, BatchSize = 4, CheckpointEvery = 3,
        HeldOutProbesPerChunk = 0, Probes = new DocumentProbeOptions { ExamplesPerChunk = 8, ContinuationTokens = 16 },
    };

    [Fact]
    public void A_cancelled_run_resumes_from_its_checkpoint_and_ends_with_the_same_bytes()
    {
        var (model, tok, _, _) = Stories260K.Load();
        var dir = TrainerFixtures.TempDir();
        string doc = Path.Combine(dir, "story.txt");
        File.WriteAllText(doc, Stories260K.SampledStory(model, tok));

        // Uninterrupted.
        string a = Path.Combine(dir, "a.safetensors");
        var events = new List<TrainingRunEvent>();
        var ra = TrainingRun.Execute(model, tok, Small(doc, a), new SyncProgress<TrainingRunEvent>(events.Add));
        Assert.Equal(12, ra.Steps);
        Assert.Equal(0, ra.ResumedFromStep);
        Assert.True(File.Exists(a));
        Assert.False(File.Exists(a + ".ckpt"));
        Assert.Equal(12, events.OfType<TrainingRunStep>().Count());
        Assert.Contains(events, e => e is TrainingRunNote n && n.Text.StartsWith("chose p=16 (given), chunk_tokens=", StringComparison.Ordinal));
        Assert.Single(events.OfType<TrainingRunStarted>());
        Assert.Contains(events.OfType<TrainingRunDataProgress>(), p => p.Phase == "teacher" && p.Done == p.Total);

        // The same run, cancelled once step 7 is reported: the trainer writes a checkpoint and throws.
        string b = Path.Combine(dir, "b.safetensors");
        using (var cts = new CancellationTokenSource())
        {
            Assert.ThrowsAny<OperationCanceledException>(() => TrainingRun.Execute(model, tok, Small(doc, b),
                new SyncProgress<TrainingRunEvent>(e => { if (e is TrainingRunStep { Step.Step: 7 }) cts.Cancel(); }), cts.Token));
        }
        Assert.False(File.Exists(b));
        Assert.True(File.Exists(b + ".ckpt"));
        File.Copy(b + ".ckpt", Path.Combine(dir, "c.safetensors.ckpt")); // for the mismatched resume below

        // Resumed: starts where the checkpoint is and ends bit-identical to the uninterrupted run.
        var resumed = new List<TrainingRunEvent>();
        var rb = TrainingRun.Execute(model, tok, Small(doc, b) with { Resume = true }, new SyncProgress<TrainingRunEvent>(resumed.Add));
        Assert.InRange(rb.ResumedFromStep, 6, 8);
        Assert.Equal(12, rb.Steps);
        Assert.Equal(rb.ResumedFromStep, resumed.OfType<TrainingRunStarted>().Single().ResumedFromStep);
        Assert.Contains(resumed, e => e is TrainingRunNote n && n.Text.StartsWith("resuming from", StringComparison.Ordinal));
        Assert.False(File.Exists(b + ".ckpt"));
        using (var fa = SafeTensorsFile.Open(a))
        using (var fb = SafeTensorsFile.Open(b))
        {
            Assert.Equal(fa.Tensors.Select(t => t.Name), fb.Tensors.Select(t => t.Name));
            foreach (var t in fa.Tensors) Assert.Equal(fa.ReadFloats(t.Name), fb.ReadFloats(t.Name));
            foreach (var kv in fa.Metadata.Where(kv => kv.Key != "cas.created")) Assert.Equal(kv.Value, fb.Metadata[kv.Key]);
        }

        // A resume with another p is refused, saying what to use.
        var e = Assert.Throws<InvalidRequestException>(() => TrainingRun.Execute(model, tok,
            Small(doc, Path.Combine(dir, "c.safetensors")) with { Resume = true, CartridgeTokens = 8 }));
        Assert.Contains("--tokens 16", e.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Sizes_are_derived_from_the_context_unless_given_and_given_sizes_must_fit()
    {
        var (model, tok, _, _) = Stories260K.Load();
        var dir = TrainerFixtures.TempDir();
        string doc = Path.Combine(dir, "story.txt");
        File.WriteAllText(doc, "Once upon a time there was a cat. The cat liked milk.");
        var o = new TrainingRunOptions { DataPath = doc, OutputPath = Path.Combine(dir, "x.safetensors") };

        // Derived: p = context / 4 = 128; the chunk is the default 400, which stories260K's 512 positions still hold
        // next to a 16-token probe and a 64-token continuation.
        var plan = TrainingRun.Plan(model, tok, o);
        Assert.Equal(128, plan.CartridgeTokens);
        Assert.Equal(DocumentProbes.DefaultChunkTokens, plan.ChunkTokens);
        Assert.Equal(["p", "chunk_tokens"], plan.Derived);
        Assert.Equal("chose p=128, chunk_tokens=400 for the model's context of 512", plan.Describe());

        // A longer continuation leaves less room: the derived chunk shrinks to what fits.
        var longer = o with { Probes = o.Probes with { ContinuationTokens = 200 } };
        int room = DocumentProbes.ChunkRoom(model.Config, tok, longer.Probes);
        Assert.True(room < DocumentProbes.DefaultChunkTokens);
        Assert.Equal(room, TrainingRun.Plan(model, tok, longer).ChunkTokens);

        // Given values win, exactly; one that cannot fit is an error naming the largest that does.
        var given = TrainingRun.Plan(model, tok, o with { CartridgeTokens = 32, ChunkTokens = 100 });
        Assert.Equal((32, 100), (given.CartridgeTokens, given.ChunkTokens));
        Assert.Empty(given.Derived);
        Assert.Equal("chose p=32 (given), chunk_tokens=100 (given) for the model's context of 512", given.Describe());
        var e = Assert.Throws<InvalidRequestException>(() => TrainingRun.Plan(model, tok, longer with { ChunkTokens = room + 1 }));
        Assert.Contains($"--chunk-tokens {room} or less", e.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Options_are_checked_before_any_work()
    {
        string missing = Path.Combine(Path.GetTempPath(), "no-such-" + Guid.NewGuid().ToString("N") + ".txt");
        var o = new TrainingRunOptions { DataPath = missing, OutputPath = "x.safetensors" };
        Assert.Contains("does not exist", Assert.Throws<InvalidRequestException>(o.Validate).Message);
        Assert.Throws<InvalidRequestException>(() => (o with { Steps = 3, Epochs = 1 }).Validate());
        Assert.Throws<InvalidRequestException>(() => (o with { LearningRate = 0 }).Validate());
        Assert.Throws<InvalidRequestException>(() => (o with { ChunkTokens = 0 }).Validate());
        // The recipe measured in eval/reports/DEFAULT_RECIPE.md is what a bare options record gives.
        Assert.Equal(TrainingRunOptions.DefaultProbesPerChunk, o.Probes.ExamplesPerChunk);
        Assert.Equal(TrainingRunOptions.DefaultLearningRate, o.LearningRate);
        Assert.Null(o.Steps);
        Assert.Null(o.Epochs);
    }
}
