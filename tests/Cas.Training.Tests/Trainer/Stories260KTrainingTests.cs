using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Training.Tests.Trainer;

/// <summary>Training on the real pretrained stories260K model, in process and through the CLI (with a real kill -9).</summary>
public class Stories260KTrainingTests
{
    /// <summary>A story the model samples itself (deterministic for the seed): the document to train on.</summary>
    [Fact]
    public void DistillationClosesMostOfTheGapToTheTeacherOnHeldOutProbes()
    {
        var (model, tok, _, _) = Stories260K.Load();
        string story = Stories260K.SampledStory(model, tok);
        var probes = new DocumentProbeOptions { ExamplesPerChunk = 16, ContinuationTokens = 32 };
        var train = DocumentProbes.Build(model, tok, story, "story", probes);
        var held = DocumentProbes.Build(model, tok, story, "story", probes with { Split = ProbeSplit.HeldOut, ExamplesPerChunk = 8, Seed = 1000 });
        var cart = Cartridge.ForModel(model, CartridgeInit.RandomText(model, tok, 32), CartridgeInitKind.RandomText);
        var state = TrainingState.Start(cart, new TrainingOptions { Steps = 60, BatchSize = 4, LearningRate = 5e-2f }, train);
        var r = new CartridgeTrainer(model).Run(state, train, held);

        // Loss = teacher entropy on its support (the floor) + KL(teacher ‖ student): the KL part must mostly go.
        double klBefore = r.HeldOutInitial!.Value - held.LossFloor, klAfter = r.HeldOutFinal!.Value - held.LossFloor;
        Assert.True(klBefore > 0.1, $"held-out KL before training {klBefore}");
        Assert.True(klAfter < 0.5 * klBefore, $"held-out KL {klBefore:F4} → {klAfter:F4}");
        Assert.True(r.FinalLoss - train.LossFloor < 0.5 * (r.InitialLoss - train.LossFloor), $"train loss {r.InitialLoss} → {r.FinalLoss} (floor {train.LossFloor})");
    }

    [Fact]
    public void KilledCliRunResumesFromItsCheckpointAndEndsBitIdentical()
    {
        var (model, tok, modelPath, tokPath) = Stories260K.Load();
        var dir = TrainerFixtures.TempDir();
        string docPath = Path.Combine(dir, "story.txt");
        File.WriteAllText(docPath, Stories260K.SampledStory(model, tok));
        string[] Args(string outFile, bool resume) =>
        [
            "train", "--model", modelPath, "--tokenizer", tokPath, "--data", docPath, "--out", outFile, "--tokens", "16",
            "--steps", "100", "--batch", "4", "--checkpoint-every", "5", "--probes-per-chunk", "8", "--continuation-tokens", "24",
            "--held-out", "0", "--lr", "0.05", .. resume ? new[] { "--resume" } : [],
        ];

        // Uninterrupted reference run.
        string a = Path.Combine(dir, "a.safetensors");
        var (rcA, outA, errA) = CasCli.Run(Args(a, false));
        Assert.True(rcA == 0, errA);
        Assert.Contains("steps=100", outA);
        Assert.False(File.Exists(a + ".ckpt"));

        // Same run, killed (SIGKILL) once its checkpoint reaches step 10 or more.
        string b = Path.Combine(dir, "b.safetensors"), ckpt = b + ".ckpt";
        using (var proc = CasCli.Start(Args(b, false)))
        {
            var clock = Stopwatch.StartNew();
            while (CheckpointStep(ckpt) < 10)
            {
                if (proc.HasExited) Assert.Fail($"the run ended before it could be killed:\n{proc.StandardError.ReadToEnd()}");
                Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), "no checkpoint appeared within 60 s");
                Thread.Sleep(5);
            }
            proc.Kill(entireProcessTree: false); // SIGKILL: no chance to clean up
            proc.WaitForExit();
            Assert.NotEqual(0, proc.ExitCode);
        }
        Assert.False(File.Exists(b));
        int k = CheckpointStep(ckpt);
        Assert.InRange(k, 10, 95);
        Assert.Equal(0, k % 5);

        var (rcB, outB, errB) = CasCli.Run(Args(b, true));
        Assert.True(rcB == 0, errB);
        Assert.Contains($"resumed_from_step={k}", outB);
        Assert.Contains("steps=100", outB);
        Assert.Contains($"resuming from {ckpt} at step {k}/100", errB);
        Assert.False(File.Exists(ckpt));

        // Same final cartridge, value for value; same metadata apart from the creation time.
        using var fa = SafeTensorsFile.Open(a);
        using var fb = SafeTensorsFile.Open(b);
        Assert.Equal(fa.Tensors.Select(t => t.Name), fb.Tensors.Select(t => t.Name));
        foreach (var t in fa.Tensors) Assert.Equal(fa.ReadFloats(t.Name), fb.ReadFloats(t.Name));
        foreach (var kv in fa.Metadata.Where(kv => kv.Key != "cas.created")) Assert.Equal(kv.Value, fb.Metadata[kv.Key]);
        Assert.Equal("100", fb.Metadata["cas.steps"]);
        Assert.Equal(ModelFingerprint.Compute(model), fb.Metadata["cas.model.fingerprint"]);

        // Resuming against another model is refused clearly.
        string c = Path.Combine(dir, "c.safetensors");
        File.Copy(a, c + ".ckpt"); // a finished cartridge is not a checkpoint
        var (rcC, _, errC) = CasCli.Run(Args(c, true));
        Assert.Equal(2, rcC);
        Assert.Contains("not a training checkpoint", errC);
        Directory.Delete(dir, true);
    }

    /// <summary>Step of a checkpoint file, or −1 while there is none (the file appears atomically).</summary>
    static int CheckpointStep(string path)
    {
        if (!File.Exists(path)) return -1;
        try
        {
            using var f = SafeTensorsFile.Open(path);
            return int.Parse(f.Metadata["cas.checkpoint.step"], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or ModelFormatException) { return -1; } // replaced while opening
    }
}
