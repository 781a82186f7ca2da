using System.CommandLine;
using System.Globalization;
using Cas.Engine;
using Cas.Eval;
using Cas.Jobs;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas eval collection --dataset PATH…`: the options only the data set run takes, and a thin caller of
/// <see cref="DatasetRun"/> (load, split, collection, training, evaluation) that prints. Progress on stderr; stdout gets
/// key=value lines ending with the headline; --report writes DATASET_EVAL.md and its PNGs.
/// </summary>
/// <param name="_model">The command's --model (shared with --server): the data set run's model, default stories260K.</param>
/// <param name="_tokenizer">The command's --tokenizer.</param>
sealed class EvalDatasetCommand(Option<string> _model, Option<string> _tokenizer)
{
    readonly Option<string[]> _dataset = new("--dataset")
    {
        Description = "Evaluate on data set files instead of held-out probes: L-Eval .jsonl (e.g. ../shared/datasets/leval/closed/quality.jsonl) or SQuALITY's train.jsonl; repeat or separate with commas. " +
                      "Their documents are split into parts that fit the model, put into a collection (--collection, else named after the files) and trained when cartridges are missing.",
        Arity = ArgumentArity.OneOrMore, AllowMultipleArgumentsPerToken = false,
    };
    readonly Option<int> _maxDocuments = new("--max-documents") { Description = "--dataset: documents read from each file (the first ones); 0: all.", DefaultValueFactory = _ => DatasetRunOptions.DefaultMaxDocuments };
    readonly Option<int> _partTokens = new("--part-tokens") { Description = "--dataset: largest part a document is split into, in tokens; 0: what the context leaves after the answer and 90% of the questions (at most half the context).", DefaultValueFactory = _ => 0 };
    readonly Option<int> _chunk = Options.RetrievalChunkTokens(128);
    readonly Option<int> _trainProbes = new("--train-probes") { Description = "--dataset: probes per chunk when training missing cartridges (cas collection train's --probes-per-chunk).", DefaultValueFactory = _ => new CasTrainingOptions().Probes.ExamplesPerChunk };
    readonly Option<double?> _trainEpochs = new("--train-epochs") { Description = $"--dataset: epochs when training missing cartridges (cas collection train's --epochs). Default: {Cas.Training.TrainingRunOptions.DefaultEpochs.ToString(CultureInfo.InvariantCulture)}." };

    public IEnumerable<Option> All => [_dataset, _maxDocuments, _partTokens, _chunk, _trainProbes, _trainEpochs];

    /// <summary>The data set files given (comma-separated values split), or none.</summary>
    public List<string> Paths(ParseResult pr) =>
        (pr.GetValue(_dataset) ?? []).SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();

    public int Execute(ParseResult pr, string? collection, string dataDir, CollectionEvalOptions eval, int maxQuestions, string? reportDir, long residentMb, IEnumerable<string> tokens)
    {
        string modelPath = Path.GetFullPath(Cli.ResolveModelPath(pr.GetValue(_model)));
        var o = new DatasetRunOptions
        {
            Paths = Paths(pr), DataDir = dataDir, Collection = collection, ModelPath = modelPath,
            TokenizerPath = Path.GetFullPath(Cli.ResolveTokenizerPath(modelPath, pr.GetValue(_tokenizer))),
            MaxDocuments = pr.GetValue(_maxDocuments), MaxQuestions = maxQuestions, PartTokens = pr.GetValue(_partTokens), RetrievalChunkTokens = pr.GetValue(_chunk),
            ResidentBytes = checked(residentMb << 20), Eval = eval,
        };
        var d = new CasTrainingOptions();
        o = o with { Training = d with { Epochs = pr.GetValue(_trainEpochs), Probes = d.Probes with { ExamplesPerChunk = pr.GetValue(_trainProbes) } } };
        o.Training.Validate();
        var last = DateTime.MinValue;
        var training = new SyncProgress<CasJobEvent>(e =>
        {
            switch (e)
            {
                case CasJobNote n: Console.Error.WriteLine(n.Text); break;
                case CasJobDocumentDone dd: Console.Error.WriteLine($"done {dd.CartridgeId} p={dd.CartridgeTokens}"); break;
                case CasJobStep s when DateTime.UtcNow - last > TimeSpan.FromSeconds(5) || s.DocumentsDone == s.Documents:
                    last = DateTime.UtcNow;
                    double frac = s.GoldTarget > 0 ? (double)s.GoldDone / s.GoldTarget : 0;
                    double eta = frac > 0 ? s.Elapsed.TotalSeconds * (1 - frac) / frac : 0;
                    Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"training {frac * 100,5:F1}% step {s.Step} loss {s.Loss:F4} docs {s.DocumentsDone}/{s.Documents} eta {eta:F0}s"));
                    break;
            }
        });
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        DatasetRunResult r;
        try { r = DatasetRun.ExecuteAsync(o, new SyncProgress<string>(Console.Error.WriteLine), training, cts.Token).GetAwaiter().GetResult(); }
        finally { Console.CancelKeyPress -= onCancel; }

        foreach (var ds in r.Datasets) Console.Out.WriteLine($"dataset={ds.Path} format={ds.Format} documents={ds.Documents.Count} questions={ds.Questions}");
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"parts={r.Set.Parts.Count} part_tokens={r.Set.PartTokens} questions_too_long={r.Set.SkippedTooLong} added={r.Added} unchanged={r.Unchanged} trained={r.Training?.Trained ?? 0} " +
            $"icl_part_retrieved={r.IclRetrieved} prepare_s={r.PrepareSeconds:F1} train_s={r.TrainSeconds:F1}"));
        var lines = DatasetReport.AllKeyValues(r.Eval).ToList();
        foreach (var line in lines.SkipLast(1)) Console.Out.WriteLine(line);
        foreach (var w in r.Eval.Warnings) Console.Error.WriteLine("warning: " + w);
        if (reportDir != null)
        {
            Directory.CreateDirectory(reportDir);
            var figures = EvalReport.Figures(r.Eval.Run, reportDir, "dataset_eval");
            var more = DatasetReport.Figures(r.Eval, reportDir, "dataset_eval");
            string md = EvalReport.Markdown(r.Eval.Run, $"Data set evaluation on `{r.Collection}`", "cas " + string.Join(' ', tokens), DatasetRun.Setup(r, o), figures);
            // The data set measures go right after the setup and headline, before the collection tables.
            int at = md.IndexOf("![quality vs prompt tokens]", StringComparison.Ordinal);
            md = at < 0 ? md + DatasetReport.Markdown(r.Eval, more) : md[..at] + DatasetReport.Markdown(r.Eval, more) + "## Perplexity, recall, tokens, latency\n\n" + md[at..];
            string file = Path.Combine(reportDir, "DATASET_EVAL.md");
            File.WriteAllText(file, md);
            Console.Out.WriteLine($"report={Path.GetFullPath(file)}");
        }
        Console.Out.WriteLine(lines[^1]);
        return 0;
    }
}
