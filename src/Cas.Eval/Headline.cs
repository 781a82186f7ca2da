namespace Cas.Eval;

/// <summary>A point of a quality-vs-cost curve: prompt tokens (KV positions in front of the answer) and quality (higher is better).</summary>
public readonly record struct CurvePoint(double Tokens, double Quality);

/// <summary>How the headline compares the cas and rag curves.</summary>
public enum HeadlineKind
{
    /// <summary>Both curves reach a common quality: the ratio of the prompt tokens each needs for it.</summary>
    EqualQuality,
    /// <summary>The curves' quality ranges do not overlap: the quality difference (cas − rag) at a token count both cover.</summary>
    EqualTokens,
    /// <summary>Neither quality nor token ranges overlap: the difference of the best qualities.</summary>
    BestQuality,
    /// <summary>A curve is missing (mode not run, or no finite point).</summary>
    None,
}

/// <summary>
/// The headline of a CAS-vs-RAG run. Each curve is the polyline of its points in increasing prompt tokens, linear
/// between points. <b>Equal quality</b>, when the curves' quality ranges overlap: Q = min(best cas, best rag), the best
/// quality both reach; for each curve the fewest
/// tokens at which its polyline first reaches Q (interpolated on the segment where it crosses Q; a curve whose first
/// point already reaches Q is taken at that point's tokens); Value = tokens_rag(Q) / tokens_cas(Q).
/// <b>Equal tokens</b>, when the quality ranges do not overlap but the token ranges do: T = the largest token count both
/// cover, Value = quality_cas(T) − quality_rag(T). Otherwise the best-quality difference (cas − rag).
/// </summary>
public sealed record Headline(HeadlineKind Kind, double Value, double AtQuality, double AtTokens, double CasTokens, double RagTokens)
{
    public static Headline Compare(IReadOnlyList<SettingSummary> settings) =>
        Compare(Curve(settings, "cas"), Curve(settings, "rag"));

    /// <summary>The points of one mode, (mean context positions, gap closed), finite ones only, by tokens.</summary>
    public static List<CurvePoint> Curve(IReadOnlyList<SettingSummary> settings, string mode) =>
        settings.Where(s => s.Setting.Mode == mode && double.IsFinite(s.GapClosed) && double.IsFinite(s.MeanContextPositions))
            .Select(s => new CurvePoint(s.MeanContextPositions, s.GapClosed)).OrderBy(p => p.Tokens).ToList();

    public static Headline Compare(IReadOnlyList<CurvePoint> cas, IReadOnlyList<CurvePoint> rag)
    {
        if (cas.Count == 0 || rag.Count == 0) return new Headline(HeadlineKind.None, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        cas = [.. cas.OrderBy(p => p.Tokens)]; rag = [.. rag.OrderBy(p => p.Tokens)];
        double casLo = cas.Min(p => p.Quality), casHi = cas.Max(p => p.Quality), ragLo = rag.Min(p => p.Quality), ragHi = rag.Max(p => p.Quality);
        if (Math.Max(casLo, ragLo) <= Math.Min(casHi, ragHi))
        {
            double q = Math.Min(casHi, ragHi);
            double tc = TokensToReach(cas, q), tr = TokensToReach(rag, q);
            return new Headline(HeadlineKind.EqualQuality, tr / tc, q, double.NaN, tc, tr);
        }
        double tLo = Math.Max(cas[0].Tokens, rag[0].Tokens), tHi = Math.Min(cas[^1].Tokens, rag[^1].Tokens);
        if (tLo <= tHi)
            return new Headline(HeadlineKind.EqualTokens, QualityAt(cas, tHi) - QualityAt(rag, tHi), double.NaN, tHi, tHi, tHi);
        return new Headline(HeadlineKind.BestQuality, casHi - ragHi, double.NaN, double.NaN, cas.First(p => p.Quality == casHi).Tokens, rag.First(p => p.Quality == ragHi).Tokens);
    }

    /// <summary>Fewest tokens at which the polyline (points by tokens) first reaches quality q; +∞ when it never does.</summary>
    public static double TokensToReach(IReadOnlyList<CurvePoint> curve, double q)
    {
        if (curve[0].Quality >= q) return curve[0].Tokens;
        for (int i = 1; i < curve.Count; i++)
        {
            var (a, b) = (curve[i - 1], curve[i]);
            if (b.Quality >= q) return a.Tokens + (b.Tokens - a.Tokens) * (q - a.Quality) / (b.Quality - a.Quality);
        }
        return double.PositiveInfinity;
    }

    /// <summary>The polyline's quality at t (inside its token range).</summary>
    public static double QualityAt(IReadOnlyList<CurvePoint> curve, double t)
    {
        if (t <= curve[0].Tokens) return curve[0].Quality;
        for (int i = 1; i < curve.Count; i++)
        {
            var (a, b) = (curve[i - 1], curve[i]);
            if (t <= b.Tokens) return b.Tokens == a.Tokens ? b.Quality : a.Quality + (b.Quality - a.Quality) * (t - a.Tokens) / (b.Tokens - a.Tokens);
        }
        return curve[^1].Quality;
    }

    /// <summary>The last key=value line: the ratio at equal quality, or the quality difference, named for what it is.</summary>
    public string KeyValue() => Kind switch
    {
        HeadlineKind.EqualQuality => $"prompt_token_ratio_rag_over_cas={Fmt.F(Value, "F3")}",
        HeadlineKind.EqualTokens => $"gap_closed_difference_cas_minus_rag_at_equal_tokens={Fmt.F(Value, "F4")}",
        HeadlineKind.BestQuality => $"gap_closed_difference_cas_minus_rag_best={Fmt.F(Value, "F4")}",
        _ => "prompt_token_ratio_rag_over_cas=nan",
    };

    /// <summary>One sentence saying what the headline is.</summary>
    public string Describe() => Kind switch
    {
        HeadlineKind.EqualQuality => $"at equal quality ({100 * AtQuality:F1}% of the no-context → ICL gap closed, the best both reach) rag needs {RagTokens:F0} prompt tokens and cas {CasTokens:F0} KV positions: ratio {Value:F2}",
        HeadlineKind.EqualTokens => $"the curves' qualities do not overlap; at {AtTokens:F0} prompt tokens (the most both cover) cas closes {100 * Value:+0.0;-0.0} points more of the gap than rag",
        HeadlineKind.BestQuality => $"neither qualities nor token counts overlap; cas's best closes {100 * Value:+0.0;-0.0} points more of the gap than rag's best",
        _ => "cas or rag was not run (or gave no finite point), so there is no comparison",
    };
}

/// <summary>Invariant number formatting for key=value lines and reports.</summary>
public static class Fmt
{
    public static string F(double v, string format) =>
        double.IsNaN(v) ? "nan" : double.IsPositiveInfinity(v) ? "inf" : v.ToString(format, System.Globalization.CultureInfo.InvariantCulture);
}
