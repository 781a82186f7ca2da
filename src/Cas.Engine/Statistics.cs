namespace Cas.Engine;

/// <summary>The order statistics the reports, the budget manager and the jobs print, written once.</summary>
public static class Statistics
{
    /// <summary>Nearest-rank percentile (q in [0, 1]) of values sorted ascending: the ⌈q·n⌉-th smallest; NaN when there are none.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double q)
    {
        if (sorted.Count == 0) return double.NaN;
        int rank = (int)Math.Ceiling(q * sorted.Count);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Count - 1)];
    }

    /// <summary>The median: the middle value, or the mean of the two middle ones for an even count; NaN when there are none.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        if (s.Length == 0) return double.NaN;
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
