// Plots of eval/run.sh's report (eval/reports/REPORT.md), drawn with ScottPlot from the files run.sh leaves in eval/work:
//   dotnet run --project eval/CasReports -c Release -- heldout-ppl --results eval/work/results.tsv --doc-tokens 360 --out eval/reports/heldout_ppl.png
//   dotnet run --project eval/CasReports -c Release -- training-curves --work eval/work --docs 1,2,3,4,5,6 --out eval/reports/training_curves.png
// Exit code 2 with one line on stderr for a bad argument or a missing/malformed input file.
using System.Globalization;
using Cas.Eval.Reports;

try
{
    if (args.Length == 0) throw new ReportInputException("usage: CasReports heldout-ppl --results TSV --doc-tokens N --out PNG | training-curves --work DIR --docs 1,2,... --out PNG");
    string Arg(string name)
    {
        int i = Array.IndexOf(args, name);
        if (i < 0 || i + 1 >= args.Length) throw new ReportInputException($"{args[0]}: missing {name} VALUE.");
        return args[i + 1];
    }
    switch (args[0])
    {
        case "heldout-ppl":
            Plots.HeldOutPerplexity(ResultsTable.Read(Arg("--results")), int.Parse(Arg("--doc-tokens"), CultureInfo.InvariantCulture), Arg("--out"));
            break;
        case "training-curves":
            var docs = Arg("--docs").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            Plots.TrainingCurves(Arg("--work"), docs, Arg("--out"));
            break;
        default:
            throw new ReportInputException($"unknown report '{args[0]}' (heldout-ppl, training-curves).");
    }
    Console.Error.WriteLine($"wrote {Arg("--out")}");
    return 0;
}
catch (ReportInputException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
