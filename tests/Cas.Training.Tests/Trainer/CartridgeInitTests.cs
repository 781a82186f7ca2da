using Cas.Engine;
using Cas.Engine.Cartridges;

namespace Cas.Training.Tests.Trainer;

public class CartridgeInitTests
{
    [Fact]
    public void FirstKPrefixContinuesExactlyLikeTheFullPrefill()
    {
        var model = TrainerFixtures.Model();
        var tok = new CharTokenizer();
        int[] doc = [1, .. tok.Encode(TrainerFixtures.Story)];
        int p = 20, n = 50, vocab = model.Config.VocabSize;

        var prefix = CartridgeInit.FirstK(model, doc, p);
        Assert.Equal(p, prefix.Length);

        // Logits of tokens p..n-1 after the cartridge == logits of the same tokens when all n are prefilled.
        var t = new Transformer(model);
        var full = new float[n * vocab];
        t.ForwardAll(new KvCache(model.Config, n), doc[..n], full);
        var rest = new float[(n - p) * vocab];
        t.ForwardAll(new KvCache(model.Config, n, prefix), doc[p..n], rest);
        for (int i = 0; i < rest.Length; i++) Assert.Equal(full[p * vocab + i], rest[i], 1e-4f);
    }

    [Fact]
    public void ShortDocumentsAndOversizedCartridgesGetClearErrors()
    {
        var model = TrainerFixtures.Model(maxSeq: 160);
        var tok = new CharTokenizer();
        var e = Assert.Throws<InvalidRequestException>(() => CartridgeInit.FirstK(model, [1, 5, 6, 7], 10));
        Assert.Contains("document has 4", e.Message);
        Assert.Contains("--tokens 4", e.Message);
        foreach (var kind in Enum.GetValues<CartridgeInitKind>())
        {
            var big = Assert.Throws<InvalidRequestException>(() => CartridgeInit.Create(kind, model, tok, new int[400], 160));
            Assert.Contains("context of 160", big.Message);
            Assert.Throws<InvalidRequestException>(() => CartridgeInit.Create(kind, model, tok, new int[400], 0));
        }
    }

    [Fact]
    public void RandomTextIsTheKvOfTheBuiltInTextAndIsCausal()
    {
        var model = TrainerFixtures.Model();
        var tok = new CharTokenizer();
        var ids = CartridgeInit.NeutralTokens(tok, 300);
        Assert.Equal(300, ids.Length);
        Assert.Equal(1, ids[0]);
        Assert.Equal(tok.Encode(CartridgeInit.NeutralText[..40]), ids[1..41]);
        // The text repeats once exhausted.
        int len = tok.Encode(CartridgeInit.NeutralText).Length;
        var longer = CartridgeInit.NeutralTokens(tok, len + 6);
        Assert.Equal(longer[1..6], longer[(1 + len)..(6 + len)]);

        var a = CartridgeInit.RandomText(model, tok, 12);
        var b = CartridgeInit.RandomText(model, tok, 30);
        var direct = CartridgeInit.Prefill(model, ids[..12]);
        int hd = model.Config.HeadDim;
        for (int l = 0; l < model.Config.Layers; l++)
        {
            Assert.Equal(direct.Keys[l], a.Keys[l]);
            for (int h = 0; h < model.Config.KvHeads; h++)
                for (int i = 0; i < 12 * hd; i++)
                {
                    Assert.Equal(a.Keys[l][h * 12 * hd + i], b.Keys[l][h * 30 * hd + i], 1e-5f);
                    Assert.Equal(a.Values[l][h * 12 * hd + i], b.Values[l][h * 30 * hd + i], 1e-5f);
                }
        }
    }

    [Fact]
    public void RandomMatchesTheMeasuredStatisticsAndKeepsARealSinkSlot()
    {
        var model = TrainerFixtures.Model();
        var tok = new CharTokenizer();
        var c = model.Config;
        int p = 100, hd = c.HeadDim, n = Math.Min(c.MaxSeqLen, 256);
        var x = CartridgeInit.Random(model, tok, p, seed: 1);
        var y = CartridgeInit.Random(model, tok, p, seed: 1);
        var z = CartridgeInit.Random(model, tok, p, seed: 2);
        var real = CartridgeInit.Prefill(model, CartridgeInit.NeutralTokens(tok, n));
        Assert.Equal(x.Keys[1], y.Keys[1]);
        Assert.NotEqual(x.Keys[1], z.Keys[1]);
        for (int l = 0; l < c.Layers; l++)
            for (int h = 0; h < c.KvHeads; h++)
                foreach (var (gen, meas) in new[] { (x.Keys[l], real.Keys[l]), (x.Values[l], real.Values[l]) })
                {
                    // Slot 0 is the real first token (BOS).
                    Assert.Equal(meas.AsSpan(h * n * hd, hd).ToArray(), gen.AsSpan(h * p * hd, hd).ToArray());
                    var m = meas.AsSpan((h * n + 1) * hd, (n - 1) * hd).ToArray();
                    var g = gen.AsSpan((h * p + 1) * hd, (p - 1) * hd).ToArray();
                    double mm = m.Average(v => (double)v), ms = Math.Sqrt(m.Average(v => (v - mm) * (v - mm)));
                    double gm = g.Average(v => (double)v), gs = Math.Sqrt(g.Average(v => (v - gm) * (v - gm)));
                    Assert.InRange(gm, mm - 5 * ms / Math.Sqrt(g.Length), mm + 5 * ms / Math.Sqrt(g.Length));
                    Assert.InRange(gs / ms, 0.85, 1.15);
                }
    }
}
