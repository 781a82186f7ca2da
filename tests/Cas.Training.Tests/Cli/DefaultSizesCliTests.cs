using Cas.Tests.Common;
using Cas.Training.Tests.Trainer;

namespace Cas.Training.Tests.Cli;

/// <summary>
/// The commands a new user types, on stories260K (context 512) with no size flags: synthesize, train and eval work and
/// each says in one line which sizes it chose; explicit flags win; a given size that cannot fit is a clear error.
/// </summary>
public class DefaultSizesCliTests
{
    [Fact]
    public void Synthesize_train_and_eval_derive_their_sizes_from_a_small_context()
    {
        var (model, tok, modelPath, tokPath) = Stories260K.Load();
        var dir = TrainerFixtures.TempDir();
        string doc = Path.Combine(dir, "story.txt");
        File.WriteAllText(doc, Stories260K.SampledStory(model, tok));

        // The command (fewer conversations): it failed with "need about 1005 positions" before.
        string ds = Path.Combine(dir, "ds.casds");
        var (rc, o, err) = CasCli.Run("synthesize", "--model", modelPath, "--tokenizer", tokPath, "--resource", "text:" + doc,
            "--out", ds, "--conversations", "4");
        Assert.True(rc == 0, err);
        Assert.Single(Lines(err), l => l.StartsWith("chose min_chunk_tokens=", StringComparison.Ordinal) && l.EndsWith("for the model's context of 512", StringComparison.Ordinal));
        Assert.Contains("max_user_tokens=32\n", o);
        Assert.Contains("max_answer_tokens=64\n", o);
        Assert.Contains("dataset_conversations=4\n", o);

        // Explicit flags win, exactly.
        (rc, o, err) = CasCli.Run("synthesize", "--model", modelPath, "--resource", "text:" + doc, "--out", Path.Combine(dir, "ds2.casds"),
            "--conversations", "2", "--chunk-tokens", "120", "--min-chunk-tokens", "100", "--max-answer-tokens", "16");
        Assert.True(rc == 0, err);
        Assert.Contains("chunk_tokens=100:120\n", o);
        Assert.Contains("max_answer_tokens=16\n", o);
        Assert.Contains("chose min_chunk_tokens=100 (given), chunk_tokens=120 (given), max_user_tokens=32, max_answer_tokens=16 (given)", err);

        // train: no --tokens, no --chunk-tokens (short run: --steps and --probes-per-chunk are not sizes).
        string cart = Path.Combine(dir, "story.safetensors");
        (rc, o, err) = CasCli.Run("train", "--model", modelPath, "--data", doc, "--out", cart, "--steps", "2", "--probes-per-chunk", "4", "--held-out", "0");
        Assert.True(rc == 0, err);
        Assert.Single(Lines(err), l => l == "chose p=128, chunk_tokens=400 for the model's context of 512");
        Assert.Contains("p=128\n", o);
        Assert.Contains("chunk_tokens=400\n", o);

        // Given sizes win; one that cannot fit says what does.
        (rc, o, err) = CasCli.Run("train", "--model", modelPath, "--data", doc, "--out", Path.Combine(dir, "b.safetensors"), "--tokens", "16",
            "--chunk-tokens", "200", "--steps", "1", "--probes-per-chunk", "2", "--held-out", "0");
        Assert.True(rc == 0, err);
        Assert.Contains("chose p=16 (given), chunk_tokens=200 (given)", err);
        Assert.Contains("chunk_tokens=200\n", o);
        (rc, _, err) = CasCli.Run("train", "--model", modelPath, "--data", doc, "--out", Path.Combine(dir, "c.safetensors"), "--chunk-tokens", "600");
        Assert.Equal(2, rc);
        Assert.Contains("--chunk-tokens 429 or less", err);

        // eval: the same chunk rule as training.
        (rc, o, err) = CasCli.Run("eval", "--model", modelPath, "--cartridge", cart, "--data", doc, "--probes-per-chunk", "2");
        Assert.True(rc == 0, err);
        Assert.Single(Lines(err), l => l == "chose chunk_tokens=400 for the model's context of 512");
        Assert.Contains("cartridge_gap_closed=", o);
        Directory.Delete(dir, true);
    }

    static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
