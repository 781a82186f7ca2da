using Cas.Engine;
using Cas.Service;

namespace Cas.Eval.Tests;

/// <summary>The headline comparison (interpolated curves), recall and the summaries on hand-made numbers.</summary>
public sealed class HeadlineTests
{
    static CurvePoint P(double t, double q) => new(t, q);

    [Fact]
    public void EqualQualityRatioInterpolatesBothCurves()
    {
        // cas reaches 0.6 at 20 → 0.8 at 40; rag 0.2 at 100 → 0.6 at 200 → 0.9 at 400. Best both reach: 0.8.
        // cas needs 40 tokens; rag crosses 0.8 on its 200→400 segment at 200 + 200·(0.2/0.3) = 333.33.
        var h = Headline.Compare([P(20, 0.6), P(40, 0.8)], [P(200, 0.6), P(100, 0.2), P(400, 0.9)]);
        Assert.Equal(HeadlineKind.EqualQuality, h.Kind);
        Assert.Equal(0.8, h.AtQuality, 12);
        Assert.Equal(40, h.CasTokens, 9);
        Assert.Equal(200 + 200 * (0.2 / 0.3), h.RagTokens, 9);
        Assert.Equal((200 + 200 * (0.2 / 0.3)) / 40, h.Value, 9);
        Assert.StartsWith("prompt_token_ratio_rag_over_cas=8.333", h.KeyValue());
    }

    [Fact]
    public void EqualQualityWhenRagIsBetterGivesARatioBelowOne()
    {
        // rag's best (0.5) is below cas's best (0.9): Q = 0.5; rag needs 50 (its first point), cas 10 + 10·(0.5−0.1)/(0.9−0.1) = 15.
        var h = Headline.Compare([P(10, 0.1), P(20, 0.9)], [P(50, 0.5), P(80, 0.4)]);
        Assert.Equal(HeadlineKind.EqualQuality, h.Kind);
        Assert.Equal(15, h.CasTokens, 9);
        Assert.Equal(50, h.RagTokens, 9);
        Assert.Equal(50 / 15.0, h.Value, 9);
    }

    [Fact]
    public void DisjointQualitiesGiveTheDifferenceAtEqualTokens()
    {
        // cas 0.1..0.2 over 20..100 tokens, rag 0.5..0.7 over 50..300: no common quality; both cover 50..100 → T = 100.
        // cas(100) = 0.2, rag(100) = 0.5 + 0.2·(50/250) = 0.54 → −0.34.
        var h = Headline.Compare([P(20, 0.1), P(100, 0.2)], [P(50, 0.5), P(300, 0.7)]);
        Assert.Equal(HeadlineKind.EqualTokens, h.Kind);
        Assert.Equal(100, h.AtTokens, 12);
        Assert.Equal(0.2 - 0.54, h.Value, 12);
        Assert.StartsWith("gap_closed_difference_cas_minus_rag_at_equal_tokens=-0.34", h.KeyValue());
    }

    [Fact]
    public void NothingInCommonGivesTheBestQualityDifference()
    {
        var h = Headline.Compare([P(20, 0.1), P(40, 0.3)], [P(100, 0.5), P(200, 0.6)]);
        Assert.Equal(HeadlineKind.BestQuality, h.Kind);
        Assert.Equal(0.3 - 0.6, h.Value, 12);
        Assert.Equal(HeadlineKind.None, Headline.Compare([], [P(1, 1)]).Kind);
    }

    [Fact]
    public void CurveHelpers()
    {
        CurvePoint[] c = [P(10, 0.2), P(20, 0.6), P(30, 0.4), P(40, 1.0)];
        Assert.Equal(15, Headline.TokensToReach(c, 0.4), 12);       // first reached on the 10→20 segment
        Assert.Equal(35, Headline.TokensToReach(c, 0.7), 12);       // the dip 20→30 does not count
        Assert.Equal(double.PositiveInfinity, Headline.TokensToReach(c, 1.1));
        Assert.Equal(0.5, Headline.QualityAt(c, 25), 12);
        Assert.Equal(0.2, Headline.QualityAt(c, 5), 12);
    }

    [Fact]
    public void RecallCountsQuestionsWithAGoldDocumentUsed()
    {
        (IReadOnlyCollection<string>, IReadOnlyCollection<string>)[] qs =
        [
            (["a"], ["a", "b"]),         // hit
            (["b"], ["c"]),              // miss
            (["c", "d"], ["d"]),         // hit: any gold part counts
            (["e"], []),                 // miss: nothing used
        ];
        Assert.Equal(0.5, Stats.Recall(qs), 12);
        Assert.True(double.IsNaN(Stats.Recall([])));
        Assert.Equal(2.0, Statistics.Percentile([1.0, 2, 3, 4], 0.5)); // nearest rank: ceil(0.5·4) = 2nd
        Assert.Equal(4.0, Statistics.Percentile([1.0, 2, 3, 4], 0.99));
        Assert.Equal(2.5, Statistics.Median([4.0, 1, 3, 2]));        // even count: mean of the middle two, any order
        Assert.Equal(3.0, Statistics.Median([5.0, 3, 1]));
        Assert.True(double.IsNaN(Statistics.Median([])));
    }

    [Fact]
    public void SummariesPoolNllAndMeasureTheGapAgainstNoneAndIcl()
    {
        EvalSetting none = new("none", 0), icl = new("icl", 0), cas = new("cas", 1);
        EvalQuestion[] qs = [new("q1", "x", [1, 2], ["d1"], ScoreFraming.Question), new("q2", "y", [1, 2, 3, 4], ["d2"], ScoreFraming.Question)];
        QuestionOutcome O(EvalSetting s, string q, double nll, int tokens, int prompt, int slots, string[] used) =>
            new(s, q, nll, tokens, prompt, slots, 0, used, used.Contains(q == "q1" ? "d1" : "d2"), 0, 0, 0, null, null);
        var outcomes = new[]
        {
            O(none, "q1", 2 * 2.0, 2, 5, 0, []), O(none, "q2", 4 * 2.0, 4, 5, 0, []),           // mean NLL 2
            O(icl, "q1", 2 * 1.0, 2, 100, 0, ["d1"]), O(icl, "q2", 4 * 1.0, 4, 100, 0, ["d2"]), // mean NLL 1
            O(cas, "q1", 2 * 1.0, 2, 5, 20, ["d1"]), O(cas, "q2", 4 * 2.0, 4, 5, 40, ["d9"]),  // pooled (2 + 8) / 6
        };
        var s = CollectionEvaluator.Summarize([none, icl, cas], outcomes, qs);
        double ppl = Math.Exp(10.0 / 6);
        Assert.Equal(ppl, s[2].Perplexity, 12);
        Assert.Equal((Math.Exp(2) - ppl) / (Math.Exp(2) - Math.Exp(1)), s[2].GapClosed, 12);
        Assert.Equal(1.0, s[1].GapClosed, 12);
        Assert.Equal(0.0, s[0].GapClosed, 12);
        Assert.Equal(0.5, s[2].Recall, 12);
        Assert.Equal(35, s[2].MeanContextPositions, 12); // (25 + 45) / 2
        Assert.Equal(30, s[2].MeanCartridgeSlots, 12);
        Assert.Equal(1.0, s[2].GapClosedGoldUsed, 12);   // q1 (gold d1 used): cas matches icl
        Assert.Equal(0.0, s[2].GapClosedGoldMissed, 12); // q2 (d9 used, gold d2): cas matches none
    }
}
