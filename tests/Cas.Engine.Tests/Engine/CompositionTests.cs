using Cas.Engine.Cartridges;
using Cas.Engine.Compute;
using Cas.Engine.Models;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Engine;

/// <summary>
/// Composition = <see cref="KvPrefix.Concat"/> without re-rotating keys: each cartridge keeps the positions it was
/// trained at and new tokens start at position Σp. See eval/COMPOSITION.md for the choice and the figures measured here.
/// </summary>
public class CompositionTests(ITestOutputHelper output)
{
    /// <summary>A prefix whose every float says where it lives: tag·1000 + layer·100 + head·10 + slot + d/100.</summary>
    static KvPrefix Numbered(ModelConfig c, int p, int tag)
    {
        var k = new float[c.Layers][]; var v = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            k[l] = new float[c.KvHeads * p * c.HeadDim]; v[l] = new float[k[l].Length];
            for (int h = 0; h < c.KvHeads; h++)
                for (int s = 0; s < p; s++)
                    for (int d = 0; d < c.HeadDim; d++)
                    {
                        float x = tag * 1000 + l * 100 + h * 10 + s + d / 100f;
                        k[l][(h * p + s) * c.HeadDim + d] = x; v[l][(h * p + s) * c.HeadDim + d] = -x;
                    }
        }
        return new KvPrefix(c.Layers, c.KvHeads, c.HeadDim, p, k, v);
    }

    [Fact]
    public void ConcatPutsEachPartsSlotsInOrderUnchanged()
    {
        var c = TinyModels.Config();
        var a = Numbered(c, 3, 1); var b = Numbered(c, 5, 2);
        foreach (var (parts, name) in new[] { (new[] { a, b }, "A+B"), (new[] { b, a }, "B+A") })
        {
            var ab = KvPrefix.Concat(parts);
            Assert.Equal(8, ab.Length);
            for (int l = 0; l < c.Layers; l++)
                for (int h = 0; h < c.KvHeads; h++)
                    for (int s = 0; s < 8; s++)
                    {
                        var (part, slot) = s < parts[0].Length ? (parts[0], s) : (parts[1], s - parts[0].Length);
                        var want = part.Keys[l].AsSpan((h * part.Length + slot) * c.HeadDim, c.HeadDim).ToArray();
                        var got = ab.Keys[l].AsSpan((h * 8 + s) * c.HeadDim, c.HeadDim).ToArray();
                        Assert.True(want.SequenceEqual(got), $"{name} keys l{l} h{h} s{s}");
                        want = part.Values[l].AsSpan((h * part.Length + slot) * c.HeadDim, c.HeadDim).ToArray();
                        got = ab.Values[l].AsSpan((h * 8 + s) * c.HeadDim, c.HeadDim).ToArray();
                        Assert.True(want.SequenceEqual(got), $"{name} values l{l} h{h} s{s}");
                    }
        }
        var other = KvPrefix.Zeros(TinyModels.Config() with { KvHeads = 1, Heads = 2 }, 2);
        Assert.Throws<ArgumentException>(() => KvPrefix.Concat([a, other]));
    }

    [Theory]
    [InlineData(Architecture.Llama, RopeStyle.Halves)]
    [InlineData(Architecture.Llama, RopeStyle.Interleaved)]
    [InlineData(Architecture.Qwen3, RopeStyle.Halves)]
    public void EitherOrderDecodesLikeACacheHoldingThatExactPrefix(Architecture arch, RopeStyle rope)
    {
        var model = TinyModels.Create(arch, rope, seed: 4);
        var c = model.Config;
        var a = CartridgeInit.Prefill(model, TinyModels.Tokens(6, c.VocabSize, 1));
        var b = CartridgeInit.Prefill(model, TinyModels.Tokens(9, c.VocabSize, 2));
        int[] prompt = TinyModels.Tokens(4, c.VocabSize, 3);
        var gen = new Generator(new Transformer(model));
        var decoded = new Dictionary<string, (int[] Tokens, float[] Logits)>();

        foreach (var (first, second, name) in new[] { (a, b, "A+B"), (b, a, "B+A") })
        {
            var composed = KvPrefix.Concat([first, second]);
            // The generator with the composed prefix, keeping the logits of every step.
            var logits = new List<float[]>();
            var r = gen.Generate([new GenerationRequest(prompt, composed) { MaxTokens = 8 }], (_, _, l) => logits.Add(l.ToArray()));
            Assert.Equal(8, r[0].Tokens.Length);

            // Reference: a cache holding the same slots, written here by hand, then prompt + generated tokens at once.
            var hand = HandConcat(c, first, second);
            var cache = new KvCache(c, 15 + prompt.Length + 8, hand);
            int[] all = [.. prompt, .. r[0].Tokens[..^1]];
            var refLogits = new float[all.Length * c.VocabSize];
            new Transformer(model).ForwardAll(cache, all, refLogits);
            Assert.Equal(15 + all.Length, cache.Length); // new tokens occupy positions 15, 16, …
            for (int step = 0; step < 8; step++)
            {
                var want = refLogits.AsSpan((prompt.Length - 1 + step) * c.VocabSize, c.VocabSize);
                Assert.True(MaxAbsDiff(want, logits[step]) < 1e-4f, $"{name} step {step}: {MaxAbsDiff(want, logits[step])}");
            }
            decoded[name] = (r[0].Tokens, refLogits);
        }

        // Without re-rotation attention sees the same set of (key, value) pairs either way, and softmax attention does
        // not care about slot order: the two orders agree up to float summation order.
        Assert.Equal(decoded["A+B"].Tokens, decoded["B+A"].Tokens);
        Assert.True(MaxAbsDiff(decoded["A+B"].Logits, decoded["B+A"].Logits) < 1e-4f);

        // The alternative (rotate the later cartridge's keys by the length in front of it) makes the order matter.
        var abRot = KvPrefix.Concat([a, Rotated(c, b, a.Length)]);
        var baRot = KvPrefix.Concat([b, Rotated(c, a, b.Length)]);
        float[] Logits(KvPrefix p)
        {
            var cache = new KvCache(c, p.Length + prompt.Length, p);
            var l = new float[prompt.Length * c.VocabSize];
            new Transformer(model).ForwardAll(cache, prompt, l);
            return l;
        }
        Assert.True(MaxAbsDiff(Logits(abRot), Logits(baRot)) > 1e-3f);
    }

    [Fact]
    public void ReRotatedSlicesOfOnePrefillReproduceItExactly()
    {
        // The tiny-model version of the measurement below: positions of new tokens continue at Σp.
        var model = TinyModels.Create(seed: 9);
        var c = model.Config;
        int[] text = TinyModels.Tokens(30, c.VocabSize, 5);
        var joint = CartridgeInit.Prefill(model, text[..20]);
        var a = Slice(joint, 0, 8);
        var bStored = Rotated(c, Slice(joint, 8, 12), -8); // as a cartridge trained at positions 0..11 would hold it
        var q = text[20..];
        var want = Forward(model, joint, q);
        Assert.True(MaxAbsDiff(want, Forward(model, KvPrefix.Concat([a, Rotated(c, bStored, 8)]), q)) < 1e-4f);
        Assert.True(MaxAbsDiff(want, Forward(model, KvPrefix.Concat([a, bStored]), q)) > 1e-3f);
        Assert.True(MaxAbsDiff(Forward(model, CartridgeInit.Prefill(model, text[..8]), q), Forward(model, a, q)) < 1e-5f);
    }

    /// <summary>
    /// On stories260K: a story split into span 1 (BOS + 63 tokens) and span 2 (the next 64), then 64 query tokens.
    /// Reference: prefilling both spans. Measured: composing span 1's KV with span 2's KV (stored at positions 0..63 as a
    /// cartridge would be) with and without re-rotating span 2 by +64, span 2 prefilled alone (a cartridge that never saw
    /// span 1), and span 2 dropped. Prints the figures quoted in eval/COMPOSITION.md.
    /// </summary>
    [Fact]
    public void NoReRotationCostIsMeasuredAgainstPrefillingBothSpans()
    {
        var model = ModelLoader.Load(TestPaths.RequireShared("models/stories260K/stories260K.bin"));
        var c = model.Config;
        var story = new Generator(new Transformer(model)).Generate([new GenerationRequest([1]) { MaxTokens = 191 }])[0].Tokens;
        Assert.Equal(191, story.Length);
        int[] text = [1, .. story];
        const int n1 = 64, n2 = 64;
        int[] q = text[(n1 + n2)..];
        var joint = CartridgeInit.Prefill(model, text[..(n1 + n2)]);
        var a = Slice(joint, 0, n1);
        var bInContext = Rotated(c, Slice(joint, n1, n2), -n1);                   // span 2's KV given span 1, stored at 0..63
        var bAlone = CartridgeInit.Prefill(model, [1, .. text[n1..(n1 + n2 - 1)]]); // first-k of span 2 alone (BOS + 63)

        var reference = Forward(model, joint, q);
        var rows = new (string Name, KvPrefix Prefix)[]
        {
            ("both spans prefilled (reference)", joint),
            ("span 2 given span 1, re-rotated +64", KvPrefix.Concat([a, Rotated(c, bInContext, n1)])),
            ("span 2 given span 1, not re-rotated", KvPrefix.Concat([a, bInContext])),
            ("span 2 given span 1, not re-rotated, order B+A", KvPrefix.Concat([bInContext, a])),
            ("span 2 prefilled alone, re-rotated +64", KvPrefix.Concat([a, Rotated(c, bAlone, n1)])),
            ("span 2 prefilled alone, not re-rotated", KvPrefix.Concat([a, bAlone])),
            ("span 1 only (span 2 dropped)", a),
        };
        var results = new Dictionary<string, (double Ppl, double Kl, float MaxDiff)>();
        output.WriteLine("| composition | query ppl | KL(reference ‖ it) | max |Δlogit| |");
        output.WriteLine("|---|---|---|---|");
        foreach (var (name, prefix) in rows)
        {
            var logits = Forward(model, prefix, q);
            var (ppl, kl) = PplAndKl(reference, logits, q, c.VocabSize);
            float diff = MaxAbsDiff(reference, logits);
            results[name] = (ppl, kl, diff);
            output.WriteLine($"| {name} | {ppl:F4} | {kl:F5} | {diff:F4} |");
        }

        var exact = results["span 2 given span 1, re-rotated +64"];
        var plain = results["span 2 given span 1, not re-rotated"];
        var swapped = results["span 2 given span 1, not re-rotated, order B+A"];
        var aloneRot = results["span 2 prefilled alone, re-rotated +64"];
        var alone = results["span 2 prefilled alone, not re-rotated"];
        var dropped = results["span 1 only (span 2 dropped)"];
        // Re-rotation reproduces the prefill (float rounding only).
        Assert.True(exact.MaxDiff < 2e-3f && exact.Kl < 1e-6, $"re-rotated: {exact}");
        // Without it the model is measurably different from the prefill, but far closer than without span 2 at all.
        Assert.True(plain.Kl > 1e-3, $"not re-rotated: {plain}");
        Assert.True(plain.Kl < 0.5 * dropped.Kl, $"not re-rotated {plain.Kl} vs span 2 dropped {dropped.Kl}");
        // Order does not matter without re-rotation.
        Assert.True(Math.Abs(swapped.Kl - plain.Kl) < 1e-5 && swapped.MaxDiff - plain.MaxDiff < 1e-3f, $"B+A {swapped} vs A+B {plain}");
        // KV prefilled from span 2 alone (a first-k cartridge that never saw span 1): re-rotation also brings it much
        // closer, since text KV is exact for the positions it was computed at.
        Assert.True(aloneRot.Kl > exact.Kl && aloneRot.Kl < 0.5 * alone.Kl, $"alone: re-rotated {aloneRot}, not {alone}");
        Assert.True(alone.Kl < 0.5 * dropped.Kl, $"alone, not re-rotated {alone.Kl} vs dropped {dropped.Kl}");
    }

    // ------------------------------------------------------------------------------------------------

    static KvPrefix HandConcat(ModelConfig c, KvPrefix x, KvPrefix y)
    {
        int p = x.Length + y.Length, hd = c.HeadDim;
        var k = new float[c.Layers][]; var v = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            k[l] = new float[c.KvHeads * p * hd]; v[l] = new float[k[l].Length];
            for (int h = 0; h < c.KvHeads; h++)
                for (int s = 0; s < p; s++)
                    for (int d = 0; d < hd; d++)
                    {
                        var (src, slot) = s < x.Length ? (x, s) : (y, s - x.Length);
                        k[l][(h * p + s) * hd + d] = src.Keys[l][(h * src.Length + slot) * hd + d];
                        v[l][(h * p + s) * hd + d] = src.Values[l][(h * src.Length + slot) * hd + d];
                    }
        }
        return new KvPrefix(c.Layers, c.KvHeads, hd, p, k, v);
    }

    static KvPrefix Slice(KvPrefix p, int start, int length)
    {
        int hd = p.HeadDim;
        var k = new float[p.Layers][]; var v = new float[p.Layers][];
        for (int l = 0; l < p.Layers; l++)
        {
            k[l] = new float[p.KvHeads * length * hd]; v[l] = new float[k[l].Length];
            for (int h = 0; h < p.KvHeads; h++)
            {
                Array.Copy(p.Keys[l], (h * p.Length + start) * hd, k[l], h * length * hd, length * hd);
                Array.Copy(p.Values[l], (h * p.Length + start) * hd, v[l], h * length * hd, length * hd);
            }
        }
        return new KvPrefix(p.Layers, p.KvHeads, hd, length, k, v);
    }

    /// <summary>The prefix with every key rotated by <paramref name="delta"/> more positions (RoPE: R(pos+δ) = R(δ)·R(pos)).</summary>
    static KvPrefix Rotated(ModelConfig c, KvPrefix p, int delta)
    {
        var rope = new Rope(c);
        var cos = new float[c.HeadDim / 2]; var sin = new float[c.HeadDim / 2];
        rope.Angles(delta, cos, sin);
        var k = new float[p.Layers][];
        for (int l = 0; l < p.Layers; l++)
        {
            k[l] = (float[])p.Keys[l].Clone();
            for (int row = 0; row < p.KvHeads * p.Length; row++) rope.Rotate(k[l].AsSpan(row * c.HeadDim, c.HeadDim), cos, sin);
        }
        return new KvPrefix(p.Layers, p.KvHeads, p.HeadDim, p.Length, k, p.Values);
    }

    static float[] Forward(Model model, KvPrefix prefix, int[] tokens)
    {
        var cache = new KvCache(model.Config, prefix.Length + tokens.Length, prefix);
        var logits = new float[tokens.Length * model.Config.VocabSize];
        new Transformer(model).ForwardAll(cache, tokens, logits);
        return logits;
    }

    /// <summary>Perplexity of tokens[1..] and mean KL(reference ‖ x) over all positions (full softmax).</summary>
    static (double Ppl, double Kl) PplAndKl(float[] reference, float[] x, int[] tokens, int vocab)
    {
        double nll = 0, kl = 0;
        int n = tokens.Length;
        for (int t = 0; t < n; t++)
        {
            var r = reference.AsSpan(t * vocab, vocab); var s = x.AsSpan(t * vocab, vocab);
            double zr = LogSumExp(r), zs = LogSumExp(s);
            for (int j = 0; j < vocab; j++)
            {
                double lr = r[j] - zr;
                kl += Math.Exp(lr) * (lr - (s[j] - zs));
            }
            if (t + 1 < n) nll += zs - s[tokens[t + 1]];
        }
        return (Math.Exp(nll / (n - 1)), kl / n);
    }

    static double LogSumExp(ReadOnlySpan<float> v)
    {
        double max = double.NegativeInfinity;
        foreach (float x in v) max = Math.Max(max, x);
        double sum = 0;
        foreach (float x in v) sum += Math.Exp(x - max);
        return max + Math.Log(sum);
    }

    static float MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        float m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }
}
