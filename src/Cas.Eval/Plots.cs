using ScottPlot;

namespace Cas.Eval;

/// <summary>A named line of points for <see cref="Plots.Lines"/>.</summary>
public sealed record PlotSeries(string Label, double[] X, double[] Y, string[]? PointLabels = null);

/// <summary>
/// Every PNG the evaluation reports draw, through one function (ScottPlot 5.1.59, as eval/CasCompose uses it):
/// lines with markers, optional labels at the points, optional horizontal reference lines.
/// </summary>
public static class Plots
{
    public static void Lines(string path, string title, string xLabel, string yLabel, IEnumerable<PlotSeries> series,
        IEnumerable<(string Label, double Y)>? references = null, int width = 900, int height = 550, Alignment legend = Alignment.LowerRight)
    {
        var plt = new Plot();
        foreach (var s in series)
        {
            if (s.X.Length == 0) continue;
            var sc = plt.Add.Scatter(s.X, s.Y);
            sc.LegendText = s.Label;
            sc.MarkerSize = 8;
            if (s.PointLabels != null)
                for (int i = 0; i < s.X.Length && i < s.PointLabels.Length; i++)
                {
                    var t = plt.Add.Text(s.PointLabels[i], s.X[i], s.Y[i]);
                    t.LabelFontSize = 11;
                    t.LabelFontColor = sc.Color;
                    t.OffsetY = -6;
                }
        }
        foreach (var (label, y) in references ?? [])
        {
            if (!double.IsFinite(y)) continue;
            var line = plt.Add.HorizontalLine(y);
            line.LegendText = label;
            line.LinePattern = LinePattern.Dashed;
        }
        plt.Title(title);
        plt.XLabel(xLabel);
        plt.YLabel(yLabel);
        plt.ShowLegend(legend);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        plt.SavePng(path, width, height);
    }
}
