using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;
using Cas.Training.Tests.Trainer;

namespace Cas.Training.Tests.Evaluation;

/// <summary>`cas eval` and `cas generate --cartridge` on the real stories260K model, through the CLI.</summary>
public class EvalCliTests
{
    [Fact]
    public void EvalPrintsTheFourConditionsAndAFirstKCartridgeEqualsTheTruncatedContext()
    {
        var (model, tok, mp, tp) = Stories260K.Load();
        string dir = TrainerFixtures.TempDir();
        string doc = Path.Combine(dir, "story.txt");
        string story = Stories260K.SampledStory(model, tok, 200, seed: 3);
        File.WriteAllText(doc, story);
        string cart = Path.Combine(dir, "firstk32.safetensors");
        int[] docTokens = [.. tok.StartTokens, .. tok.Encode(story)];
        Cartridge.ForModel(model, CartridgeInit.FirstK(model, docTokens, 32), CartridgeInitKind.FirstK).Save(cart);

        var (rc, stdout, stderr) = CasCli.Run("eval", "--model", mp, "--tokenizer", tp, "--cartridge", cart, "--data", doc,
            "--probes-per-chunk", "8", "--continuation-tokens", "32");
        Assert.True(rc == 0, stderr);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("cartridge_gap_closed=", lines[^1]);
        var kv = lines.Select(l => l.Split('=', 2)).ToDictionary(a => a[0], a => a[1]);
        double D(string k) => double.Parse(kv[k], CultureInfo.InvariantCulture);

        Assert.Equal("concat", kv["compose"]);
        Assert.Equal(8, D("examples"));
        Assert.Equal(32, D("p"));
        Assert.Equal(1, D("kv_slots_none"));
        Assert.Equal(32, D("kv_slots_truncated"));
        Assert.Equal(32, D("kv_slots_cartridge"));
        Assert.Equal(docTokens.Length, D("kv_slots_icl")); // one chunk: BOS + the whole story
        Assert.Equal(docTokens.Length - 1, D("chunk_tokens"));
        // first-k of 32 slots is the truncated context of 32 tokens: the same KV, read as a prefix instead of prefilled,
        // so equal up to float summation order (which BLAS kernel runs depends on the shape and on the machine):
        // 1e-5 relative on perplexity, 1e-5 absolute on KL, far above that rounding and far below any real difference.
        Assert.Equal(D("ppl_truncated"), D("ppl_cartridge"), 1e-5 * D("ppl_truncated"));
        Assert.Equal(D("kl_truncated"), D("kl_cartridge"), 1e-5);
        // The teacher read the story: in context the model is the teacher, and the story helps.
        Assert.True(Math.Abs(D("kl_icl")) < 1e-4, kv["kl_icl"]);
        Assert.True(D("ppl_icl") < D("ppl_none"), $"icl {kv["ppl_icl"]} none {kv["ppl_none"]}");
        Assert.True(D("kl_none") > 0.05, kv["kl_none"]);
        Assert.Equal(Math.Exp(D("nll_none")), D("ppl_none"), 4);
        double gap = (D("ppl_none") - D("ppl_cartridge")) / (D("ppl_none") - D("ppl_icl"));
        Assert.Equal(gap, D("cartridge_gap_closed"), 4);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void GenerateAfterAFirstKCartridgeContinuesLikeTheTextItself()
    {
        // The cartridge replaces "BOS + text": no BOS may follow it.
        var (model, tok, mp, tp) = Stories260K.Load();
        string dir = TrainerFixtures.TempDir();
        const string text = "Once upon a time, there was a little dog named Max. Max liked to run in the park.";
        int[] ids = [.. tok.StartTokens, .. tok.Encode(text)];
        Assert.Equal([.. ids, .. Prompting.EncodeContinuation(tok, "\n")], [.. tok.StartTokens, .. tok.Encode(text + "\n")]);
        string cart = Path.Combine(dir, "max.safetensors");
        Cartridge.ForModel(model, CartridgeInit.FirstK(model, ids, ids.Length), CartridgeInitKind.FirstK).Save(cart);

        var plain = CasCli.Run("generate", "--model", mp, "--tokenizer", tp, "--prompt", text + "\n", "--max-tokens", "40");
        var withCart = CasCli.Run("generate", "--model", mp, "--tokenizer", tp, "--prompt", "\n", "--max-tokens", "40", "--cartridge", cart);
        Assert.True(plain.Rc == 0, plain.Err);
        Assert.True(withCart.Rc == 0, withCart.Err);
        Assert.True(plain.Out.Trim().Length > 20, plain.Out);
        Assert.Equal(plain.Out, withCart.Out);

        var empty = CasCli.Run("generate", "--model", mp, "--tokenizer", tp, "--prompt", "", "--cartridge", cart);
        Assert.Equal(2, empty.Rc);
        Assert.Contains("must not be empty", empty.Err);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void GenerateComposesCartridgesAndTheOrderDoesNotMatter()
    {
        var (model, tok, mp, tp) = Stories260K.Load();
        string dir = TrainerFixtures.TempDir();
        int[] a = [.. tok.StartTokens, .. tok.Encode("Tom had a red ball. He threw it to his friend Sue.")];
        int[] b = [.. tok.StartTokens, .. tok.Encode("The cat sat on a big green mat and ate some fish.")];
        var pa = CartridgeInit.FirstK(model, a, a.Length); var pb = CartridgeInit.FirstK(model, b, b.Length);
        string fa = Path.Combine(dir, "a.safetensors"), fb = Path.Combine(dir, "b.safetensors");
        Cartridge.ForModel(model, pa, CartridgeInitKind.FirstK).Save(fa);
        Cartridge.ForModel(model, pb, CartridgeInitKind.FirstK).Save(fb);
        const string prompt = "\nOne day,";

        string Expected(params KvPrefix[] parts)
        {
            int[] ids = Prompting.EncodeContinuation(tok, prompt);
            var r = new Generator(new Transformer(model)).Generate([new GenerationRequest(ids, KvPrefix.Concat(parts))
            {
                MaxTokens = 30, StopTokens = [tok.EosId!.Value],
            }]);
            return tok.Decode([.. ids, .. r[0].Tokens])[tok.Decode(ids).Length..] + "\n";
        }

        var ab = CasCli.Run("generate", "--model", mp, "--tokenizer", tp, "--prompt", prompt, "--max-tokens", "30", "--cartridge", fa, "--cartridge", fb);
        var ba = CasCli.Run("generate", "--model", mp, "--tokenizer", tp, "--prompt", prompt, "--max-tokens", "30", "--cartridge", fb, "--cartridge", fa);
        Assert.True(ab.Rc == 0, ab.Err);
        Assert.True(ba.Rc == 0, ba.Err);
        Assert.Equal(Expected(pa, pb), ab.Out);
        Assert.Equal(Expected(pb, pa), ba.Out);
        // Keys are not re-rotated, so attention sees the same set of keys either way: the order does not matter
        // (up to float summation order; see eval/COMPOSITION.md).
        Assert.Equal(ab.Out, ba.Out);
        Assert.NotEqual(ab.Out, CasCli.Run("generate", "--model", mp, "--tokenizer", tp, "--prompt", prompt, "--max-tokens", "30", "--cartridge", fb).Out);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void ACartridgeOfAnotherModelIsRefusedWithAClearError()
    {
        var (model, tok, mp, tp) = Stories260K.Load();
        string dir = TrainerFixtures.TempDir();
        string doc = Path.Combine(dir, "story.txt");
        File.WriteAllText(doc, "Lily had a big red ball. She liked to play with it in the garden every day.");
        string other = new string('7', 64);
        var prefix = CartridgeInit.FirstK(model, [.. tok.StartTokens, .. tok.Encode("Lily had a ball.")], 4);
        string bad = Path.Combine(dir, "other.safetensors");
        new Cartridge(prefix, other) { ModelSource = "another-model.bin" }.Save(bad);

        var gen = CasCli.Run("generate", "--model", mp, "--tokenizer", tp, "--prompt", "Hi", "--cartridge", bad);
        Assert.Equal(2, gen.Rc);
        Assert.Contains("was trained for model 777777777777", gen.Err);
        Assert.Contains(Cartridge.ShortFingerprint(Cartridge.Fingerprint(model)), gen.Err);
        Assert.Equal("", gen.Out);

        var ev = CasCli.Run("eval", "--model", mp, "--tokenizer", tp, "--cartridge", bad, "--data", doc);
        Assert.Equal(2, ev.Rc);
        Assert.Contains("was trained for model 777777777777", ev.Err);

        var mode = CasCli.Run("eval", "--model", mp, "--tokenizer", tp, "--cartridge", bad, "--data", doc, "--compose", "sideways");
        Assert.Equal(2, mode.Rc);
        Assert.Contains("unknown --compose 'sideways'", mode.Err);

        var missing = CasCli.Run("eval", "--model", mp, "--tokenizer", tp, "--cartridge", Path.Combine(dir, "nope.safetensors"), "--data", doc);
        Assert.Equal(2, missing.Rc);
        Assert.Contains("does not exist", missing.Err);
        Directory.Delete(dir, true);
    }
}
