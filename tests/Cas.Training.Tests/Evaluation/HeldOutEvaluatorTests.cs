using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Training.Evaluation;
using Cas.Training.Tests.Trainer;
using Cas.Training.Tests.Training;

namespace Cas.Training.Tests.Evaluation;

public class HeldOutEvaluatorTests
{
    static readonly DocumentProbeOptions Probes = new()
    {
        ChunkTokens = 100, ExamplesPerChunk = 6, MinProbeTokens = 3, MaxProbeTokens = 8, ContinuationTokens = 12, GenerationBatch = 4,
        Split = ProbeSplit.HeldOut, Seed = 1000,
    };

    [Fact]
    public void PositionMetricsOfAHandMadeDistribution()
    {
        // q = softmax([0, 0, ln 2, −∞-ish]) = [1/4, 1/4, 1/2, ~0].
        float[] logits = [0f, 0f, MathF.Log(2f), -80f];
        double logZ = HeldOutEvaluator.LogSumExp(logits);
        Assert.Equal(Math.Log(2 + Math.Exp(logits[2]) + Math.Exp(-80)), logZ, 12);
        Assert.Equal(Math.Log(2), logZ - logits[2], 6); // NLL of token 2

        // Teacher equal to the student on its kept support: 0.
        Assert.Equal(0, HeldOutEvaluator.Kl(logits, logZ, [2, 0], [MathF.Log(0.5f), MathF.Log(0.25f)]), 6);
        // Teacher 0.7 on token 2 and 0.2 on token 1 (0.1 cut off): Σ p (log p − log q), not renormalised.
        double expected = 0.7 * Math.Log(0.7 / 0.5) + 0.2 * Math.Log(0.2 / 0.25);
        Assert.Equal(expected, HeldOutEvaluator.Kl(logits, logZ, [2, 1], [MathF.Log(0.7f), MathF.Log(0.2f)]), 6);
        // Next-token targets (probability 1) make KL the NLL.
        Assert.Equal(Math.Log(4), HeldOutEvaluator.Kl(logits, logZ, [1], [0f]), 6);

        Assert.Equal(0.75, HeldOutEvaluator.GapClosed(4.0, 2.0, 2.5), 12);
        Assert.True(double.IsNaN(HeldOutEvaluator.GapClosed(3.0, 3.0, 2.0)));
    }

    [Fact]
    public void ConditionsMatchAPlainPrefillOfContextPlusTokens()
    {
        var model = TrainerFixtures.Model(maxSeq: 64);
        int V = model.Config.VocabSize;
        int[] start = [1];
        int[][] contexts = [[1, 5, 6, 7], [1, 9, 9, 8, 7, 6]];
        // Example A: targets at 0, 1 and at its last position (an end-of-text draw: KL only). Example B: targets at 0 and 1.
        var a = new SparseTargets.Builder(4).Add(0, [11, 40], [MathF.Log(0.6f), MathF.Log(0.3f)]).Add(1, [12], [MathF.Log(0.9f)])
            .Add(3, [2, 13], [MathF.Log(0.5f), MathF.Log(0.5f)]).Build();
        var b = new SparseTargets.Builder(3).Add(0, [21], [0f]).Add(1, [22, 23, 24], [MathF.Log(0.4f), MathF.Log(0.3f), MathF.Log(0.2f)]).Build();
        var set = new EvalSet(contexts, start,
            [new EvalExample(new TrainingSequence([10, 11, 12, 13], a), 0), new EvalExample(new TrainingSequence([20, 21, 22], b), 1)], "hand-made");
        var ev = new HeldOutEvaluator(model);

        Check(ev.None(set), _ => start);
        Check(ev.Truncated(set, 3), c => contexts[c][..3]);
        Check(ev.Icl(set), c => contexts[c]);
        Check(ev.Truncated(set, 100), c => contexts[c]); // a budget beyond the context is the whole context

        void Check(ConditionResult r, Func<int, int[]> prefixTokens)
        {
            double nll = 0, kl = 0, slots = 0; int nllN = 0, klN = 0;
            foreach (var e in set.Examples)
            {
                int[] pre = prefixTokens(e.Context);
                int[] all = [.. pre, .. e.Sequence.Tokens];
                var cache = new KvCache(model.Config, all.Length);
                var logits = new float[all.Length * V];
                new Transformer(model).ForwardAll(cache, all, logits);
                slots += pre.Length;
                for (int t = 0; t < e.Sequence.Tokens.Length; t++)
                {
                    if (!e.Sequence.Targets.HasTarget(t)) continue;
                    var row = logits.AsSpan((pre.Length + t) * V, V).ToArray();
                    double z = Math.Log(row.Sum(x => Math.Exp(x)));
                    var ids = e.Sequence.Targets.IdsAt(t).ToArray(); var lps = e.Sequence.Targets.LogProbsAt(t).ToArray();
                    for (int j = 0; j < ids.Length; j++) kl += Math.Exp(lps[j]) * (lps[j] - (row[ids[j]] - z));
                    klN++;
                    if (t + 1 < e.Sequence.Tokens.Length) { nll += z - row[e.Sequence.Tokens[t + 1]]; nllN++; }
                }
            }
            Assert.Equal(4, nllN); Assert.Equal(5, klN);
            Assert.Equal(nllN, r.NllPositions); Assert.Equal(klN, r.KlPositions); Assert.Equal(2, r.Examples);
            Assert.Equal(nll / nllN, r.MeanNll, 4);
            Assert.Equal(1.0, r.Perplexity / Math.Exp(nll / nllN), 5); // a random model: perplexities are huge, compare relatively
            Assert.Equal(kl / klN, r.Kl, 4);
            Assert.Equal(slots / 2, r.KvSlots, 12);
        }
    }

    [Fact]
    public void KlEqualsTheTrainingLossMinusTheTeacherEntropy()
    {
        // CartridgeBackprop.Loss runs the training layout (prefix read in place, batch-packed attention) rather than the
        // evaluator's KV caches: mean −Σ p log q per target position.
        var model = TrainerFixtures.Model(maxSeq: 64);
        var c = model.Config;
        var prefix = TrainingBenchmark.RandomPrefix(c, 7, new Random(3), 0.7f);
        var list = TrainerFixtures.RandomExamples(6, c.VocabSize, seed: 11);
        var examples = new TrainingExamples(list, ["random"], "random");
        var set = new EvalSet([[1]], [1], list.Select(s => new EvalExample(s, 0)).ToArray(), "random");
        var r = new HeldOutEvaluator(model).WithPrefix(set, prefix);
        float loss = new CartridgeBackprop(model, training: false).Loss(prefix, list);
        Assert.Equal(loss - examples.LossFloor, r.Kl, 4);
        Assert.Equal(7, r.KvSlots);
        Assert.True(r.Kl > 0.1, $"random targets should be far from the model: KL {r.Kl}");
    }

    [Fact]
    public void InContextKlIsZeroAgainstTheTeachersOwnTargetsAndEachExampleGetsItsChunk()
    {
        var model = TrainerFixtures.Model(maxSeq: 512);
        var tok = new CharTokenizer();
        var probes = DocumentProbes.BuildSet(model, tok, TrainerFixtures.Story, "story", Probes);
        Assert.Equal(3, probes.Chunks.Count); // the story is cut into 3 chunks: per-example contexts matter
        Assert.Equal(probes.Examples.Count, probes.ChunkOf.Length);
        Assert.Equal(Enumerable.Range(0, 3).SelectMany(ci => Enumerable.Repeat(ci, 6)), probes.ChunkOf);
        Assert.Equal(tok.Encode(TrainerFixtures.Story), probes.Chunks.SelectMany(ch => ch));
        Assert.Equal([1, .. probes.Chunks[1]], probes.TeacherContext(7));

        var set = EvalSet.FromProbes(probes);
        var ev = new HeldOutEvaluator(model);
        var icl = ev.Icl(set);
        var none = ev.None(set);
        Assert.True(Math.Abs(icl.Kl) < 1e-5, $"KL with the teacher's own context {icl.Kl}");
        Assert.True(none.Kl > 1e3 * Math.Abs(icl.Kl) && none.Kl > 1e-3, $"KL without context {none.Kl}");
        // The wrong chunk in context is not the teacher: shifting every example to the next chunk gives a clear KL.
        var wrong = ev.Evaluate(set, "wrong-chunk", ci => CartridgeInit.Prefill(model, set.Contexts[(ci + 1) % 3]));
        Assert.True(wrong.Kl > 1e3 * Math.Abs(icl.Kl), $"KL with another chunk {wrong.Kl}");
        // One slot of truncated context is the start token alone: the no-context condition.
        var t1 = ev.Truncated(set, 1);
        Assert.Equal(none.Perplexity, t1.Perplexity);
        Assert.Equal(none.Kl, t1.Kl);
        Assert.Equal(1, none.KvSlots);
        Assert.Equal(1 + probes.Chunks.Average(ch => ch.Length), icl.KvSlots, 9);
    }

    [Fact]
    public void FirstKCartridgeOfTheWholeChunkEqualsInContext()
    {
        var model = TrainerFixtures.Model(maxSeq: 512);
        var tok = new CharTokenizer();
        var probes = DocumentProbes.BuildSet(model, tok, TrainerFixtures.Story, "story", Probes with { ChunkTokens = 400, ExamplesPerChunk = 8 });
        Assert.Single(probes.Chunks);
        var set = EvalSet.FromProbes(probes);
        int[] context = set.Contexts[0];

        // Through a saved and re-loaded cartridge file, as `cas eval` uses it.
        string dir = TrainerFixtures.TempDir();
        string path = Path.Combine(dir, "whole.safetensors");
        Cartridge.ForModel(model, CartridgeInit.FirstK(model, context, context.Length), CartridgeInitKind.FirstK).Save(path);
        var cart = Cartridge.Load(path, model);
        var report = new HeldOutEvaluator(model).Run(set, cart.Prefix);
        Assert.Equal(report.Icl.Perplexity, report.Cartridge.Perplexity);
        Assert.Equal(report.Icl.Kl, report.Cartridge.Kl);
        Assert.Equal(1.0, report.GapClosed);
        // The truncated condition has the same budget, which here is the whole context.
        Assert.Equal(report.Icl.Perplexity, report.Truncated.Perplexity);
        Assert.Equal(context.Length, report.Cartridge.KvSlots);
        Assert.True(report.None.Perplexity != report.Icl.Perplexity);

        // A first-k cartridge of fewer slots is exactly the truncated context of that budget.
        var small = CartridgeInit.FirstK(model, context, 40);
        var r40 = new HeldOutEvaluator(model).Run(set, small);
        Assert.Equal(r40.Truncated.Perplexity, r40.Cartridge.Perplexity);
        Assert.Equal(r40.Truncated.Kl, r40.Cartridge.Kl);
        Assert.Equal(40, r40.Truncated.KvSlots);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void ConditionsThatDoNotFitTheContextAreRefusedClearly()
    {
        var model = Tiny.Create(Architecture.Llama, RopeStyle.Halves); // context 64
        var seq = TrainingSequence.NextToken(Enumerable.Range(3, 30).ToArray());
        var set = new EvalSet([[1, .. Enumerable.Range(3, 40)]], [1], [new EvalExample(seq, 0)], "long");
        var e = Assert.Throws<InvalidRequestException>(() => new HeldOutEvaluator(model).Icl(set));
        Assert.Contains("condition icl", e.Message);
        Assert.Contains("71 positions", e.Message);
        Assert.Throws<InvalidRequestException>(() => new EvalSet([[1]], [1], [], "empty"));
    }
}

public class PrefixCompositionTests
{
    [Theory]
    [InlineData(RopeStyle.Halves)]
    [InlineData(RopeStyle.Interleaved)]
    public void ReRotatedSlicesOfOnePrefillReproduceItAndConcatIsTheEngines(RopeStyle rope)
    {
        var model = Tiny.Create(Architecture.Llama, rope);
        var c = model.Config;
        int[] text = [.. Enumerable.Range(0, 30).Select(i => (i * 17 + 5) % c.VocabSize)];
        var joint = CartridgeInit.Prefill(model, text[..20]);
        // Slots 8..19 as a cartridge trained at positions 0..11 would hold them.
        var a = CartridgeInit.Prefill(model, text[..8]);
        var b = PrefixComposition.Rotate(c, Slice(joint, 8, 12), -8);
        var q = text[20..];
        var want = Forward(model, joint, q);
        Assert.True(MaxDiff(want, Forward(model, PrefixComposition.Compose(c, [a, b], CompositionMode.ReRotate), q)) < 1e-4f);
        Assert.True(MaxDiff(want, Forward(model, PrefixComposition.Compose(c, [a, b], CompositionMode.Concat), q)) > 1e-3f);
        var concat = PrefixComposition.Compose(c, [a, b], CompositionMode.Concat);
        var engine = KvPrefix.Concat([a, b]);
        for (int l = 0; l < c.Layers; l++) { Assert.Equal(engine.Keys[l], concat.Keys[l]); Assert.Equal(engine.Values[l], concat.Values[l]); }
        // Rotating there and back is the identity up to rounding; a single part is never moved.
        var back = PrefixComposition.Rotate(c, PrefixComposition.Rotate(c, a, 37), -37);
        for (int l = 0; l < c.Layers; l++) Assert.True(MaxDiff(a.Keys[l], back.Keys[l]) < 1e-5f);
        Assert.Same(a, PrefixComposition.Compose(c, [a], CompositionMode.ReRotate));
    }

    static KvPrefix Slice(KvPrefix p, int start, int length)
    {
        var k = new float[p.Layers][]; var v = new float[p.Layers][];
        for (int l = 0; l < p.Layers; l++)
        {
            k[l] = new float[p.KvHeads * length * p.HeadDim]; v[l] = new float[k[l].Length];
            for (int h = 0; h < p.KvHeads; h++)
            {
                Array.Copy(p.Keys[l], (h * p.Length + start) * p.HeadDim, k[l], h * length * p.HeadDim, length * p.HeadDim);
                Array.Copy(p.Values[l], (h * p.Length + start) * p.HeadDim, v[l], h * length * p.HeadDim, length * p.HeadDim);
            }
        }
        return new KvPrefix(p.Layers, p.KvHeads, p.HeadDim, length, k, v);
    }

    static float[] Forward(Model model, KvPrefix prefix, int[] tokens)
    {
        var cache = new KvCache(model.Config, prefix.Length + tokens.Length, prefix);
        var logits = new float[tokens.Length * model.Config.VocabSize];
        new Transformer(model).ForwardAll(cache, tokens, logits);
        return logits;
    }

    static float MaxDiff(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max();
}
