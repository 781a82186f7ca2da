using System.Text;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Service;
using Cas.Service.V1;

namespace Cas.Eval;

/// <summary>How one multiple-choice question went in one setting: every option's NLL and length, the option chosen.</summary>
public sealed record OptionOutcome(EvalSetting Setting, string QuestionId, IReadOnlyList<double> Nll, IReadOnlyList<int> Tokens, int Chosen, char ChosenLetter, bool Correct);

/// <summary>A setting's data set measures: option accuracy over the multiple-choice questions, ROUGE-L over the open ones.</summary>
/// <param name="AccuracyStdErr">Binomial standard error of the accuracy, √(a(1−a)/n).</param>
/// <param name="RougeAnswered">Open questions with a greedy answer (none when answers were skipped).</param>
public sealed record DatasetSettingSummary(EvalSetting Setting, int Choice, int ChoiceFailed, double Accuracy, double AccuracyStdErr, int RougeAnswered, double RougeL);

/// <summary>A data set run: the collection evaluation (perplexity of the reference, gap, recall, tokens, latency) plus the data set measures.</summary>
public sealed record DatasetEvalResult(CollectionEvalResult Run, IReadOnlyList<DatasetItem> Items, IReadOnlyList<DatasetSettingSummary> Settings,
    IReadOnlyList<OptionOutcome> Options, int ChoiceQuestions, int OpenQuestions, double Chance, IReadOnlyList<string> Warnings);

/// <summary>
/// Data set questions through the query path (<see cref="IQueryPath"/>, in process or a server): first the collection
/// evaluation every question gets (<see cref="CollectionEvaluator"/>: the reference answer's perplexity, gap closed,
/// recall, tokens, latency, and Ask's greedy answer), then
/// <list type="bullet">
/// <item><b>multiple choice</b> — option log-likelihood accuracy: every option is scored as the answer with
/// <see cref="IQueryPath.ScoreAsync"/> on the very request the setting's Ask would get (the same context), framed as the
/// service frames a question ("Question: …\nAnswer:" then " " + the option's text); the chosen option is the one with the
/// lowest NLL per answer token (length normalisation by token count); correct when its letter is one of the gold letters
/// (a multi-letter answer such as coursera's "ABC" counts any of them); chance = the mean over questions of
/// |gold letters| / |options|;</item>
/// <item><b>open questions</b> — ROUGE-L F (<see cref="RougeL"/>) of Ask's greedy answer, the best over the references.</item>
/// </list>
/// </summary>
public sealed class DatasetEvaluator(IQueryPath path)
{
    /// <summary>Below this many parameters the data set measures are expected to sit at chance (multiple choice) or near zero (ROUGE-L).</summary>
    public const long MeaningfulParameters = 1_000_000_000;

    /// <summary>A none → icl perplexity drop below this share of ppl_none makes gap closed a ratio of noise (warned).</summary>
    public const double SmallGap = 0.05;

    public async Task<DatasetEvalResult> RunAsync(string collection, IReadOnlyList<DatasetItem> items, CollectionEvalOptions options, long modelParameters,
        IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(items); ArgumentNullException.ThrowIfNull(options);
        var run = await new CollectionEvaluator(path).RunAsync(collection, items.Select(i => i.Question).ToList(), options, progress, cancel);
        var choice = items.Where(i => i.Source.IsMultipleChoice).ToList();
        var open = items.Where(i => !i.Source.IsMultipleChoice).ToDictionary(i => i.Question.Id);
        string? monoDocument = run.Settings.Any(s => s.Setting.Mode == "mono") ? (await path.MonoCartridgeAsync(options.MonoCollection!, cancel)).DocumentId : null;

        var outcomes = new List<OptionOutcome>();
        var summaries = new List<DatasetSettingSummary>();
        foreach (var summary in run.Settings)
        {
            var setting = summary.Setting;
            int failed = 0;
            var mine = new List<OptionOutcome>();
            foreach (var item in choice)
            {
                cancel.ThrowIfCancellationRequested();
                var request = CollectionEvaluator.Request(collection, item.Question, setting, options, monoDocument);
                try
                {
                    var (nll, chosen) = await ScoreOptionsAsync(path, setting.AskMode, request, item.OptionAnswers, cancel);
                    char letter = item.Source.Options[chosen].Letter;
                    mine.Add(new OptionOutcome(setting, item.Question.Id, nll, item.OptionAnswers.Select(o => o.Length).ToList(), chosen, letter, item.Source.GoldLetters.Contains(letter)));
                }
                catch (Exception e) when (e is FailedPreconditionException or InvalidRequestException) { failed++; }
            }
            outcomes.AddRange(mine);
            double acc = mine.Count == 0 ? double.NaN : mine.Count(o => o.Correct) / (double)mine.Count;
            var rouge = run.Outcomes.Where(o => o.Setting == setting && o.Answer != null && open.ContainsKey(o.QuestionId))
                .Select(o => RougeL.Best(o.Answer!, open[o.QuestionId].Source.References)).ToList();
            summaries.Add(new DatasetSettingSummary(setting, mine.Count, failed, acc, mine.Count == 0 ? double.NaN : Math.Sqrt(acc * (1 - acc) / mine.Count),
                rouge.Count, rouge.Count == 0 ? double.NaN : rouge.Average()));
            if (choice.Count > 0) progress?.Report($"{setting.Label}: options of {choice.Count} multiple-choice questions scored, accuracy {acc:P1}" + (failed > 0 ? $", {failed} failed" : ""));
        }
        double chance = choice.Count == 0 ? double.NaN : choice.Average(i => i.Source.GoldLetters.Length / (double)i.Source.Options.Count);
        var warnings = Warnings(modelParameters, summaries, chance, options.Answer, open.Count);
        double none = run.Settings.FirstOrDefault(s => s.Setting.Mode == "none")?.Perplexity ?? double.NaN, icl = run.Settings.FirstOrDefault(s => s.Setting.Mode == "icl")?.Perplexity ?? double.NaN;
        if (double.IsFinite(none) && double.IsFinite(icl) && (none - icl) / none < SmallGap)
            warnings.Add($"the gold part in context lowers the reference answers' perplexity by only {100 * (none - icl) / none:F1}% (none {none:F2} → icl {icl:F2}): " +
                "gap closed, and the headline ratio built on it, divide by that small difference and are noise here; compare the perplexities themselves.");
        return new DatasetEvalResult(run, items, summaries, outcomes, choice.Count, open.Count, chance, warnings);
    }

    /// <summary>
    /// Scores every option as the answer to <paramref name="request"/> (one <see cref="IQueryPath.ScoreAsync"/> each, the
    /// service's question framing) and returns their NLLs and the index of the option with the lowest NLL per token.
    /// </summary>
    public static async Task<(double[] Nll, int Chosen)> ScoreOptionsAsync(IQueryPath path, AskMode mode, AskRequest request, IReadOnlyList<int[]> options, CancellationToken cancel)
    {
        if (options.Count == 0) throw new ArgumentException("no options to score.", nameof(options));
        var nll = new double[options.Count];
        for (int i = 0; i < options.Count; i++)
            nll[i] = (await path.ScoreAsync(mode, request, options[i], ScoreFraming.Question, cancel)).Nll;
        return (nll, Choose(nll, options.Select(o => o.Length).ToArray()));
    }

    /// <summary>The option with the lowest NLL per token (highest length-normalised log-likelihood); the first on a tie.</summary>
    public static int Choose(IReadOnlyList<double> nll, IReadOnlyList<int> tokens)
    {
        int best = -1;
        double bestScore = double.PositiveInfinity;
        for (int i = 0; i < nll.Count; i++)
        {
            if (tokens[i] <= 0) throw new ArgumentException($"option {i} has no tokens.", nameof(tokens));
            double s = nll[i] / tokens[i];
            if (s < bestScore) { bestScore = s; best = i; }
        }
        return best;
    }

    /// <summary>Weight-matrix parameters of a model shape (embeddings, attention and MLP; norms and biases left out).</summary>
    public static long Parameters(ModelConfig c)
    {
        long embed = (long)c.VocabSize * c.Dim * (c.TiedEmbeddings ? 1 : 2);
        long layer = (long)c.Dim * c.QDim * 2 + 2L * c.Dim * c.KvDim + 3L * c.Dim * c.HiddenDim;
        return embed + c.Layers * layer;
    }

    static List<string> Warnings(long parameters, IReadOnlyList<DatasetSettingSummary> s, double chance, bool answered, int open)
    {
        var w = new List<string>();
        if (parameters > 0 && parameters < MeaningfulParameters)
            w.Add($"the model has about {Human(parameters)} parameters: too small for option accuracy or ROUGE-L on long-document questions to mean anything " +
                  "(accuracy near chance and ROUGE-L near the overlap of common words are expected; stories260K is a 260K-parameter model of children's stories). " +
                  "Read the perplexity, gap closed, recall and token figures; use a real model for these two.");
        if (double.IsFinite(chance))
        {
            var near = s.Where(x => double.IsFinite(x.Accuracy) && Math.Abs(x.Accuracy - chance) <= 2 * Math.Max(x.AccuracyStdErr, 1e-9)).Select(x => x.Setting.Label).ToList();
            if (near.Count > 0) w.Add($"option accuracy is within two standard errors of chance ({chance:P1}) for {string.Join(", ", near)}.");
        }
        if (open > 0 && !answered) w.Add("answers were skipped (--skip-answers): no ROUGE-L.");
        return w;
    }

    static string Human(long n) => n >= 1_000_000_000 ? $"{n / 1e9:F1}B" : n >= 1_000_000 ? $"{n / 1e6:F0}M" : $"{n / 1e3:F0}K";
}

/// <summary>The key=value lines and the Markdown section of a <see cref="DatasetEvalResult"/>.</summary>
public static class DatasetReport
{
    /// <summary>The data set lines (put before the collection evaluation's headline, which stays last).</summary>
    public static IEnumerable<string> KeyValues(DatasetEvalResult r)
    {
        yield return $"choice_questions={r.ChoiceQuestions}";
        yield return $"choice_chance={Fmt.F(r.Chance, "F4")}";
        yield return $"open_questions={r.OpenQuestions}";
        yield return $"answers_truncated={r.Items.Count(i => i.AnswerTruncated)}";
        foreach (var s in r.Settings)
        {
            string k = s.Setting.Key;
            yield return $"{k}_choice_answered={s.Choice} {k}_choice_failed={s.ChoiceFailed} {k}_choice_accuracy={Fmt.F(s.Accuracy, "F4")} {k}_choice_accuracy_se={Fmt.F(s.AccuracyStdErr, "F4")}";
            yield return $"{k}_rouge_l_answered={s.RougeAnswered} {k}_rouge_l={Fmt.F(s.RougeL, "F4")}";
        }
        foreach (var w in r.Warnings) yield return "warning=" + w.Replace('\n', ' ');
    }

    /// <summary>All key=value lines of the run, the headline last.</summary>
    public static IEnumerable<string> AllKeyValues(DatasetEvalResult r)
    {
        var run = EvalReport.KeyValues(r.Run).ToList();
        return [.. run.SkipLast(1), .. KeyValues(r), run[^1]];
    }

    /// <summary>Accuracy and ROUGE-L against prompt tokens (cas at each D, rag at each k; icl, none and chance as lines); the file names written.</summary>
    public static List<string> Figures(DatasetEvalResult r, string dir, string stem)
    {
        var files = new List<string>();
        var byKey = r.Run.Settings.ToDictionary(s => s.Setting);
        void Draw(string file, string title, string y, Func<DatasetSettingSummary, double> value, IEnumerable<(string, double)> extra)
        {
            PlotSeries S(string mode, string label, string prefix)
            {
                var l = r.Settings.Where(s => s.Setting.Mode == mode && double.IsFinite(value(s))).ToList();
                return new(label, l.Select(s => byKey[s.Setting].MeanContextPositions).ToArray(), l.Select(value).ToArray(), l.Select(s => $"{prefix}={s.Setting.Size}").ToArray());
            }
            var refs = r.Settings.Where(s => s.Setting.Mode is "icl" or "none" or "mono").Select(s => ($"{s.Setting.Label} ({byKey[s.Setting].MeanContextPositions:F0} tokens)", value(s))).Concat(extra);
            Plots.Lines(Path.Combine(dir, file), title, "prompt tokens in front of the answer (cas: KV slots + question; rag: pasted chunks + question)", y,
                [S("cas", "cas (cartridges composed)", "D"), S("rag", "rag (chunks pasted)", "k")], refs);
            files.Add(file);
        }
        if (r.ChoiceQuestions > 0)
            Draw(stem + "_accuracy.png", $"option accuracy vs prompt tokens ({r.ChoiceQuestions} multiple-choice questions)", "option log-likelihood accuracy (%)",
                s => 100 * s.Accuracy, [($"chance ({100 * r.Chance:F1}%)", 100 * r.Chance)]);
        if (r.OpenQuestions > 0 && r.Settings.Any(s => double.IsFinite(s.RougeL)))
            Draw(stem + "_rouge_l.png", $"ROUGE-L vs prompt tokens ({r.OpenQuestions} open questions)", "ROUGE-L F, best of the references (%)",
                s => 100 * s.RougeL, []);
        return files;
    }

    /// <summary>The Markdown section of the data set measures (figures referenced by file name).</summary>
    public static string Markdown(DatasetEvalResult r, IReadOnlyList<string> figures)
    {
        var md = new StringBuilder();
        md.AppendLine("## Data set measures").AppendLine();
        foreach (var w in r.Warnings) md.AppendLine($"> **Warning:** {w}").AppendLine();
        md.AppendLine($"{r.ChoiceQuestions} multiple-choice questions (chance {Pct(r.Chance)}), {r.OpenQuestions} open questions; " +
            $"{r.Items.Count(i => i.AnswerTruncated)} scored reference answers were cut to the answer room.").AppendLine();
        md.AppendLine("| setting | prompt tokens (KV positions) | option accuracy ± s.e. | answered / failed | ROUGE-L F | open answered | reference ppl | gap closed | gold recall |");
        md.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        var run = r.Run.Settings.ToDictionary(s => s.Setting);
        foreach (var s in r.Settings)
        {
            var c = run[s.Setting];
            md.AppendLine($"| {s.Setting.Label} | {Fmt.F(c.MeanContextPositions, "F1")} | {Pct(s.Accuracy)} ± {Pct(s.AccuracyStdErr)} | {s.Choice} / {s.ChoiceFailed} | " +
                $"{Fmt.F(s.RougeL, "F4")} | {s.RougeAnswered} | {Fmt.F(c.Perplexity, "F3")} | {Pct(c.GapClosed)} | {Pct(c.Recall)} |");
        }
        md.AppendLine();
        foreach (var f in figures) md.AppendLine($"![{Path.GetFileNameWithoutExtension(f)}]({f})").AppendLine();
        md.AppendLine("```");
        foreach (var l in KeyValues(r)) md.AppendLine(l);
        md.AppendLine("```").AppendLine();
        return md.ToString();

        static string Pct(double v) => double.IsFinite(v) ? $"{100 * v:F1}%" : "—";
    }
}
