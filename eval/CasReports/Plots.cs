using System.Globalization;
using ScottPlot;

namespace Cas.Eval.Reports;

/// <summary>A report input that is missing or malformed; the message says which file and what to do.</summary>
public sealed class ReportInputException(string message) : Exception(message);

/// <summary>One row of eval/run.sh's results.tsv: a document, a cartridge size, a method and its held-out figures.</summary>
public sealed record ResultRow(string Doc, int P, string Method, double Ppl, double Kl, double Compression);

public static class ResultsTable
{
    /// <summary>Reads results.tsv (header doc, p, method, ppl, kl, slots, chunk, compression).</summary>
    public static IReadOnlyList<ResultRow> Read(string path)
    {
        if (!File.Exists(path)) throw new ReportInputException($"{path} not found; run eval/run.sh (or REUSE_WORK=1 eval/run.sh after a run) first.");
        var lines = File.ReadAllLines(path);
        if (lines.Length < 2 || !lines[0].StartsWith("doc\tp\tmethod\tppl\tkl", StringComparison.Ordinal))
            throw new ReportInputException($"{path} is not eval/run.sh's results table (header 'doc p method ppl kl slots chunk compression').");
        var rows = new List<ResultRow>();
        for (int i = 1; i < lines.Length; i++)
        {
            var f = lines[i].Split('\t');
            if (f.Length < 8 || !int.TryParse(f[1], CultureInfo.InvariantCulture, out int p) || !Num(f[3], out double ppl) || !Num(f[4], out double kl))
                throw new ReportInputException($"{path}:{i + 1}: malformed row '{lines[i]}'.");
            Num(f[7], out double compression);
            rows.Add(new ResultRow(f[0], p, f[2], ppl, kl, compression));
        }
        return rows;
    }

    static bool Num(string s, out double v) => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out v);
}

/// <summary>The figures of eval/reports/REPORT.md (what gnuplot drew before).</summary>
public static class Plots
{
    static readonly (string Method, string Label, string Color)[] Conditions =
    [
        ("none", "no context", "#999999"), ("truncated", "truncated", "#cc9944"), ("icl", "ICL", "#44aa66"),
        ("distill", "distill", "#3366aa"), ("ntp_gentle", "NTP gentle", "#cc6677"),
    ];

    /// <summary>
    /// Mean held-out perplexity by condition at p = 32 and 64 (left), and per document at p = 32 (right); the NTP
    /// cartridge trained with the distillation recipe is off the scale and named in a note.
    /// </summary>
    public static void HeldOutPerplexity(IReadOnlyList<ResultRow> rows, int docTokens, string outPng)
    {
        double Mean(string m, int p)
        {
            var v = rows.Where(r => r.Method == m && r.P == p).Select(r => r.Ppl).ToList();
            if (v.Count == 0) throw new ReportInputException($"the results table has no rows for method {m} at p = {p}.");
            return v.Average();
        }
        double Compression(int p) => rows.Where(r => r.Method == "distill" && r.P == p).Select(r => r.Compression).DefaultIfEmpty(double.NaN).Average();
        var docs = rows.Select(r => r.Doc).Distinct().OrderBy(d => int.TryParse(d, out int k) ? k : int.MaxValue).ThenBy(d => d).ToList();

        var mean = new Plot();
        var bars = new List<Bar>();
        for (int i = 0; i < Conditions.Length; i++)
        {
            bars.Add(new Bar { Position = i * 3, Value = Mean(Conditions[i].Method, 32), FillColor = Color.FromHex("#3366aa") });
            bars.Add(new Bar { Position = i * 3 + 1, Value = Mean(Conditions[i].Method, 64), FillColor = Color.FromHex("#88aadd") });
        }
        mean.Add.Bars(bars);
        mean.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            Conditions.Select((c, i) => new Tick(i * 3 + 0.5, c.Label)).ToArray());
        mean.Legend.ManualItems.Add(new LegendItem { LabelText = $"p = 32 ({Compression(32):F1}x)", FillColor = Color.FromHex("#3366aa") });
        mean.Legend.ManualItems.Add(new LegendItem { LabelText = $"p = 64 ({Compression(64):F1}x)", FillColor = Color.FromHex("#88aadd") });
        mean.ShowLegend(Alignment.UpperRight);
        var note = mean.Add.Text($"off the scale: NTP (same recipe),\nmean {Mean("ntp", 32):F0} (p = 32) and {Mean("ntp", 64):F0} (p = 64)", -1, 4.1);
        note.LabelFontSize = 11;
        note.LabelAlignment = Alignment.UpperLeft;
        mean.Axes.SetLimitsY(1, 4.2);
        Style(mean, "mean over documents", "held-out perplexity");

        var perDoc = new Plot();
        var docBars = new List<Bar>();
        int groups = Conditions.Length + 1;
        for (int d = 0; d < docs.Count; d++)
            for (int c = 0; c < Conditions.Length; c++)
            {
                var r = rows.FirstOrDefault(x => x.Doc == docs[d] && x.P == 32 && x.Method == Conditions[c].Method)
                    ?? throw new ReportInputException($"the results table has no row for document {docs[d]}, p = 32, {Conditions[c].Method}.");
                docBars.Add(new Bar { Position = d * groups + c, Value = r.Ppl, FillColor = Color.FromHex(Conditions[c].Color) });
            }
        perDoc.Add.Bars(docBars);
        perDoc.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            docs.Select((d, i) => new Tick(i * groups + (Conditions.Length - 1) / 2.0, "doc" + d)).ToArray());
        foreach (var c in Conditions) perDoc.Legend.ManualItems.Add(new LegendItem { LabelText = c.Label, FillColor = Color.FromHex(c.Color) });
        perDoc.ShowLegend(Alignment.UpperLeft, Orientation.Horizontal);
        perDoc.Axes.SetLimitsY(1, 4.2);
        Style(perDoc, "per document, p = 32", "held-out perplexity");

        SaveSideBySide(outPng, 1100, 560, $"Held-out perplexity on stories260K, {docs.Count} documents of about {docTokens} tokens (lower is better)", [mean, perDoc], columns: 2);
    }

    /// <summary>Per-step curves from `cas train --log` CSVs (step,loss,kl,…) of every document: KL for distillation, loss for NTP.</summary>
    public static void TrainingCurves(string workDir, IReadOnlyList<string> docs, string outPng)
    {
        if (docs.Count == 0) throw new ReportInputException("--docs names no document.");
        (string Kind, int P, int Column, string Title, string YLabel)[] panels =
        [
            ("distill", 32, 2, "distillation, p = 32", "KL to the teacher (nats/token)"),
            ("distill", 64, 2, "distillation, p = 64", "KL to the teacher (nats/token)"),
            ("ntp", 32, 1, "NTP (same recipe: lr 0.05), p = 32", "next-token loss (nats/token)"),
            ("ntp_gentle", 32, 1, "NTP (gentle: lr 0.005, 64 steps), p = 32", "next-token loss (nats/token)"),
        ];
        var plots = new List<Plot>();
        foreach (var panel in panels)
        {
            var plt = new Plot();
            foreach (var d in docs)
            {
                var (x, y) = ReadLog(Path.Combine(workDir, $"doc{d}.{panel.Kind}{panel.P}.csv"), panel.Column);
                var line = plt.Add.ScatterLine(x, y);
                line.LineWidth = 1.5f;
                line.LegendText = "doc " + d;
            }
            plt.ShowLegend(Alignment.UpperRight);
            plt.XLabel("step");
            if (panel.Kind == "distill") plt.Axes.SetLimitsY(0, plt.Axes.GetLimits().Top);
            Style(plt, panel.Title, panel.YLabel);
            plots.Add(plt);
        }
        SaveSideBySide(outPng, 1000, 720, "Training on stories260K (per optimizer step, from cas train --log)", plots, columns: 2);
    }

    static (double[] X, double[] Y) ReadLog(string path, int column)
    {
        if (!File.Exists(path)) throw new ReportInputException($"{path} not found; eval/run.sh writes it (cas train --log).");
        var lines = File.ReadAllLines(path);
        if (lines.Length < 2 || !lines[0].StartsWith("step,loss,kl", StringComparison.Ordinal))
            throw new ReportInputException($"{path} is not a `cas train --log` file (header step,loss,kl,...).");
        var x = new double[lines.Length - 1];
        var y = new double[lines.Length - 1];
        for (int i = 1; i < lines.Length; i++)
        {
            var f = lines[i].Split(',');
            if (f.Length <= column || !double.TryParse(f[0], NumberStyles.Float, CultureInfo.InvariantCulture, out x[i - 1])
                || !double.TryParse(f[column], NumberStyles.Float, CultureInfo.InvariantCulture, out y[i - 1]))
                throw new ReportInputException($"{path}:{i + 1}: malformed line '{lines[i]}'.");
        }
        return (x, y);
    }

    static void Style(Plot plt, string title, string yLabel)
    {
        plt.Title(title);
        plt.YLabel(yLabel);
        plt.Grid.MajorLineColor = Color.FromHex("#dddddd");
    }

    /// <summary>Panels in a grid under one title, as one PNG (each panel rendered by ScottPlot, placed with SkiaSharp).</summary>
    static void SaveSideBySide(string outPng, int width, int height, string title, IReadOnlyList<Plot> panels, int columns)
    {
        int rows = (panels.Count + columns - 1) / columns;
        const int titleHeight = 36;
        int w = width / columns, h = (height - titleHeight) / rows;
        var info = new SkiaSharp.SKImageInfo(width, height);
        using var surface = SkiaSharp.SKSurface.Create(info);
        var canvas = surface.Canvas;
        canvas.Clear(SkiaSharp.SKColors.White);
        using (var font = new SkiaSharp.SKFont(SkiaSharp.SKTypeface.Default, 17))
        using (var paint = new SkiaSharp.SKPaint { Color = SkiaSharp.SKColors.Black, IsAntialias = true })
            canvas.DrawText(title, width / 2f, 25, SkiaSharp.SKTextAlign.Center, font, paint);
        for (int i = 0; i < panels.Count; i++)
        {
            byte[] png = panels[i].GetImage(w, h).GetImageBytes();
            using var image = SkiaSharp.SKImage.FromEncodedData(png);
            canvas.DrawImage(image, (i % columns) * w, titleHeight + (i / columns) * h);
        }
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPng))!);
        using var snapshot = surface.Snapshot();
        using var data = snapshot.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
        using var file = File.Create(outPng);
        data.SaveTo(file);
    }
}
