using Cas.Engine;

namespace Cas.SelfStudy.Tests.Synthesis;

public class TeacherTopKTests
{
    static (int[] Ids, float[] LogProbs) Select(float[] logits, int maxK = 20, double mass = 0.99)
    {
        var ids = new int[maxK];
        var lps = new float[maxK];
        int k = TeacherTopK.Select(logits, maxK, mass, ids, lps);
        return (ids[..k], lps[..k]);
    }

    /// <summary>The rule written out the slow way: sort everything in double, keep until the mass or the count.</summary>
    static List<(int Id, double LogProb)> Reference(float[] logits, int maxK, double mass)
    {
        var lsm = Kit.ReferenceLogSoftmax(logits);
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).ToList();
        var kept = new List<(int, double)>();
        double cum = 0;
        foreach (var i in order)
        {
            if (kept.Count == maxK) break;
            kept.Add((i, lsm[i]));
            cum += Math.Exp(lsm[i]);
            if (cum >= mass) break;
        }
        return kept;
    }

    [Fact]
    public void MatchesTheReferenceRuleOnRandomLogits()
    {
        var rng = new DeterministicRng(3);
        int cutByMass = 0, cutByCount = 0;
        for (int trial = 0; trial < 300; trial++)
        {
            int vocab = 30 + rng.NextInt(500);
            double scale = 0.5 + rng.NextDouble() * 4;
            var logits = new float[vocab];
            for (int i = 0; i < vocab; i++) logits[i] = (float)((rng.NextDouble() - 0.5) * scale);
            // A few "hot" tokens well above the rest: from one dominant token to more than twenty plausible ones.
            int hot = rng.NextInt(0, 30);
            for (int h = 0; h < hot; h++) logits[rng.NextInt(vocab)] = (float)(8 + rng.NextDouble() * 6);
            int maxK = trial % 3 == 0 ? 5 : 20;
            var (ids, lps) = Select(logits, maxK);
            var want = Reference(logits, maxK, 0.99);
            Assert.Equal(want.Select(w => w.Id).ToArray(), ids);
            for (int e = 0; e < ids.Length; e++) Assert.True(Math.Abs(want[e].LogProb - lps[e]) < 1e-5, $"entry {e}: {lps[e]} vs {want[e].LogProb}");
            if (ids.Length < maxK) cutByMass++; else cutByCount++;
        }
        // Both ways of ending the list were exercised.
        Assert.True(cutByMass > 20 && cutByCount > 20, $"mass cuts {cutByMass}, count cuts {cutByCount}");
    }

    [Fact]
    public void PeakedDistributionKeepsOneEntry()
    {
        var logits = new float[100];
        logits[42] = 10f; // p(42) = e^10 / (e^10 + 99) ≈ 0.9955
        var (ids, lps) = Select(logits);
        Assert.Equal([42], ids);
        Assert.True(Math.Abs(-Math.Log(1 + 99 * Math.Exp(-10)) - lps[0]) < 1e-6, $"{lps[0]}");
    }

    [Fact]
    public void KeepsEntriesUntilTheCumulativeReachesTheMass()
    {
        // Probabilities 0.5, 0.3, 0.15, 0.04, 0.01: cumulative 0.5, 0.8, 0.95, 0.99, 1 -> four entries at mass 0.985.
        double[] p = [0.5, 0.3, 0.15, 0.04, 0.01];
        var logits = p.Select(x => (float)Math.Log(x)).ToArray();
        var (ids, lps) = Select(logits, mass: 0.985);
        Assert.Equal([0, 1, 2, 3], ids);
        for (int e = 0; e < 4; e++) Assert.True(Math.Abs(Math.Log(p[e]) - lps[e]) < 1e-5, $"entry {e}: {lps[e]}");
        Assert.Equal([0, 1, 2], Select(logits, mass: 0.9).Ids);
        Assert.Equal([0, 1, 2, 3, 4], Select(logits, mass: 1.0).Ids);
        Assert.Equal([0, 1], Select(logits, maxK: 2).Ids);
    }

    [Fact]
    public void FlatDistributionIsCutAtMaxK()
    {
        var (ids, lps) = Select(new float[1000]);
        // All equal: the 20 smallest ids, each log(1/1000).
        Assert.Equal(Enumerable.Range(0, 20).ToArray(), ids);
        Assert.All(lps, lp => Assert.True(Math.Abs(-Math.Log(1000) - lp) < 1e-5, $"{lp}"));
    }

    [Fact]
    public void IsStableForHugeLogits()
    {
        // exp(3000) overflows even a double; the shifted log-softmax does not.
        var logits = new float[] { 3000f, 2999f, 2990f, -3000f, float.NegativeInfinity };
        var (ids, lps) = Select(logits);
        Assert.Equal([0, 1], ids);
        double lse = 3000 + Math.Log(1 + Math.Exp(-1) + Math.Exp(-10));
        Assert.True(Math.Abs(3000 - lse - lps[0]) < 1e-5, $"{lps[0]} vs {3000 - lse}");
        Assert.True(Math.Abs(2999 - lse - lps[1]) < 1e-5, $"{lps[1]} vs {2999 - lse}");
        Assert.All(lps, lp => Assert.True(float.IsFinite(lp) && lp <= 0));
    }

    [Fact]
    public void ShiftingAllLogitsChangesNothing()
    {
        var rng = new DeterministicRng(9);
        var logits = new float[200];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(rng.NextDouble() * 8);
        var a = Select(logits);
        var b = Select(logits.Select(x => x + 500f).ToArray());
        Assert.Equal(a.Ids, b.Ids);
        for (int e = 0; e < a.Ids.Length; e++) Assert.True(Math.Abs(a.LogProbs[e] - b.LogProbs[e]) < 1e-3, $"entry {e}");
    }

    [Fact]
    public void RefusesBrokenLogitsAndArguments()
    {
        var ids = new int[20];
        var lps = new float[20];
        var e = Assert.Throws<InvalidRequestException>(() => TeacherTopK.Select([0f, float.NaN, 1f], 20, 0.99, ids, lps));
        Assert.Contains("NaN", e.Message);
        Assert.Throws<InvalidRequestException>(() => TeacherTopK.Select([float.NegativeInfinity, float.NegativeInfinity], 20, 0.99, ids, lps));
        Assert.Throws<ArgumentOutOfRangeException>(() => TeacherTopK.Select([1f], 0, 0.99, ids, lps));
        Assert.Throws<ArgumentOutOfRangeException>(() => TeacherTopK.Select([1f], 20, 1.5, ids, lps));
        Assert.Throws<ArgumentException>(() => TeacherTopK.Select([1f], 20, 0.99, new int[5], lps));
    }
}
