using System.Diagnostics;
using Cas.Engine;
using Cas.Service;
using Cas.Service.V1;

namespace Cas.Eval;

/// <summary>One way of answering: a mode of the query path and its size (D cartridges for cas, k chunks for rag).</summary>
/// <param name="Mode">cas | rag | icl | none | mono.</param>
/// <param name="Size">D (cas) or k (rag); 0 for icl and none.</param>
public sealed record EvalSetting(string Mode, int Size)
{
    public string Label => Mode switch { "cas" => $"cas D={Size}", "rag" => $"rag k={Size}", "mono" => $"mono p={Size}", _ => Mode };
    /// <summary>The label as a key fragment: cas_d2, rag_k4, icl, none.</summary>
    public string Key => Mode switch { "cas" => $"cas_d{Size}", "rag" => $"rag_k{Size}", _ => Mode };

    public AskMode AskMode => Mode switch
    {
        "cas" or "mono" => AskMode.Cartridges, "rag" => AskMode.Rag, "icl" => AskMode.Icl, "none" => AskMode.NoContext,
        _ => throw new InvalidRequestException($"unknown mode '{Mode}'; use cas, rag, icl, none or mono."),
    };
}

/// <summary>Settings of <see cref="CollectionEvaluator.RunAsync"/>.</summary>
public sealed record CollectionEvalOptions
{
    public static readonly string[] KnownModes = ["cas", "rag", "icl", "none", "mono"];
    /// <summary>Modes to run, of cas, rag, icl, none, mono (none and icl are needed for the gap closed).</summary>
    public IReadOnlyList<string> Modes { get; init; } = ["cas", "rag", "icl", "none"];
    /// <summary>
    /// mono: a collection holding one document (all of this collection's documents in one) with one cartridge, asked
    /// through the same query path with that document named (the monolithic baseline; its size is the caller's choice).
    /// </summary>
    public string? MonoCollection { get; init; }
    /// <summary>D: most cartridges composed (cas), one setting each.</summary>
    public IReadOnlyList<int> Depths { get; init; } = [1, 2, 4];
    /// <summary>k: chunks retrieved and pasted (rag), one setting each.</summary>
    public IReadOnlyList<int> Ks { get; init; } = [1, 2, 4, 8];
    /// <summary>Chunks retrieved for cas (their documents, deduplicated in retrieval order, give the D cartridges).</summary>
    public int CasRetrieveChunks { get; init; } = 32;
    /// <summary>Room kept for the answer (Ask decodes this many tokens; Score reserves as much), ≥ the longest answer.</summary>
    public int MaxTokens { get; init; } = 64;
    /// <summary>Also answer every question with Ask (greedy, MaxTokens) to measure the latency split of decoding.</summary>
    public bool Answer { get; init; } = true;

    public IReadOnlyList<EvalSetting> Settings()
    {
        foreach (var m in Modes)
            if (!KnownModes.Contains(m)) throw new InvalidRequestException($"unknown mode '{m}' in --modes; use {string.Join(", ", KnownModes)}.");
        if (Depths.Any(d => d < 1) || Ks.Any(k => k < 1)) throw new InvalidRequestException("every D and k must be ≥ 1.");
        if (MaxTokens < 1) throw new InvalidRequestException($"max tokens must be ≥ 1, got {MaxTokens}.");
        var s = new List<EvalSetting>();
        if (Modes.Contains("none")) s.Add(new("none", 0));
        if (Modes.Contains("icl")) s.Add(new("icl", 0));
        if (Modes.Contains("cas")) s.AddRange(Depths.Distinct().Order().Select(d => new EvalSetting("cas", d)));
        if (Modes.Contains("rag")) s.AddRange(Ks.Distinct().Order().Select(k => new EvalSetting("rag", k)));
        if (Modes.Contains("mono"))
        {
            if (string.IsNullOrEmpty(MonoCollection)) throw new InvalidRequestException("mode mono needs the monolithic cartridge's collection (--mono-collection NAME).");
            s.Add(new EvalSetting("mono", 0));
        }
        return s;
    }
}

/// <summary>What one question gave in one setting (scored, and answered when <see cref="CollectionEvalOptions.Answer"/>).</summary>
public sealed record QuestionOutcome(
    EvalSetting Setting, string QuestionId, double Nll, int AnswerTokens, int PromptTokens, int CartridgeSlots, long KvBytesAttended,
    IReadOnlyList<string> DocumentsUsed, bool GoldUsed, double ScoreRetrieveMs, double ScoreLoadMs, double ScoreForwardMs,
    LatencyBreakdown? AskLatency, string? Answer)
{
    /// <summary>KV positions in front of the answer: cartridge slots (cas) + prompt text tokens (pasted context for rag/icl, the question).</summary>
    public int ContextPositions => CartridgeSlots + PromptTokens;
}

/// <summary>A setting's figures over the questions it answered.</summary>
public sealed record SettingSummary(
    EvalSetting Setting, int Questions, int Failed, string? FirstFailure, double MeanNll, double Perplexity, double GapClosed,
    double MeanContextPositions, double MeanPromptTokens, double MeanCartridgeSlots, double MeanKvBytes, double Recall, double MeanDocuments,
    Percentiles Retrieve, Percentiles Load, Percentiles Prefill, Percentiles Decode, Percentiles Total,
    double GapClosedGoldUsed = double.NaN, double GapClosedGoldMissed = double.NaN);

/// <summary>p50 and p99 (nearest rank) of a latency in ms; NaN when nothing was measured.</summary>
public readonly record struct Percentiles(double P50, double P99)
{
    public static Percentiles Of(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length == 0 ? new(double.NaN, double.NaN) : new(Statistics.Percentile(s, 0.5), Statistics.Percentile(s, 0.99));
    }
}

/// <summary>The small statistics the evaluation needs, each once.</summary>
public static class Stats
{
    /// <summary>
    /// Gold-document recall: the share of questions for which at least one gold document is among the documents used
    /// (cartridges composed, chunks' documents pasted, the document in context). NaN for no questions.
    /// </summary>
    public static double Recall(IEnumerable<(IReadOnlyCollection<string> Gold, IReadOnlyCollection<string> Used)> questions)
    {
        int n = 0, hit = 0;
        foreach (var (gold, used) in questions)
        {
            n++;
            if (gold.Any(used.Contains)) hit++;
        }
        return n == 0 ? double.NaN : (double)hit / n;
    }

    /// <summary>(ppl_none − ppl) / (ppl_none − ppl_icl); NaN when there is no gap or a baseline is missing.</summary>
    public static double GapClosed(double none, double icl, double x) =>
        double.IsNaN(none) || double.IsNaN(icl) || none == icl ? double.NaN : (none - x) / (none - icl);
}

/// <summary>Everything a run measured.</summary>
public sealed record CollectionEvalResult(
    string Collection, int Questions, IReadOnlyList<SettingSummary> Settings, IReadOnlyList<QuestionOutcome> Outcomes,
    Headline Headline, long PeakWorkingSetBytes, long PeakResidentBytes, long ResidentBudget, double WallSeconds);

/// <summary>
/// Runs every question through the service's query path (<see cref="IQueryPath"/>: <see cref="QueryEngine"/>, the code
/// the gRPC QueryService calls, in process or behind a server) in every setting: <see cref="QueryEngine.ScoreAsync"/> for the quality (−log q of the reference answer with
/// exactly the context Ask would use), and <see cref="QueryEngine.AskAsync"/> for an answer and the latency split.
/// </summary>
public sealed class CollectionEvaluator(IQueryPath path)
{
    /// <summary>Questions through the service's query path in this process.</summary>
    public CollectionEvaluator(ServiceState state) : this(new InProcessQueryPath(state)) { }

    public async Task<CollectionEvalResult> RunAsync(string collection, IReadOnlyList<EvalQuestion> questions, CollectionEvalOptions options,
        IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(questions); ArgumentNullException.ThrowIfNull(options);
        if (questions.Count == 0) throw new InvalidRequestException("there are no questions to evaluate.");
        int longest = questions.Max(q => q.Answer.Length);
        if (options.MaxTokens < longest) throw new InvalidRequestException($"max tokens {options.MaxTokens} is below the longest reference answer ({longest} tokens); raise it.");
        var settings = options.Settings();
        string? monoDocument = null;
        if (settings.Any(x => x.Mode == "mono"))
        {
            var (document, slots) = await path.MonoCartridgeAsync(options.MonoCollection!, cancel);
            monoDocument = document;
            settings = [.. settings.Select(x => x.Mode == "mono" ? x with { Size = slots } : x)];
        }
        var clock = Stopwatch.StartNew();
        var outcomes = new List<QuestionOutcome>();
        var failures = new Dictionary<EvalSetting, (int Count, string First)>();
        foreach (var setting in settings)
        {
            var settingClock = Stopwatch.StartNew();
            foreach (var q in questions)
            {
                cancel.ThrowIfCancellationRequested();
                var request = Request(collection, q, setting, options, monoDocument);
                try
                {
                    var s = await path.ScoreAsync(setting.AskMode, request, q.Answer, q.Framing, cancel);
                    LatencyBreakdown? askLatency = null; string? answer = null;
                    if (options.Answer)
                    {
                        // Ask with the same framing as the scored prompt is not possible (Ask always frames a question);
                        // its latency split is the service's, which is what is reported.
                        var a = await path.AskAsync(setting.AskMode, request, cancel);
                        askLatency = a.Latency; answer = a.Answer;
                    }
                    var used = s.Ask.Documents.Select(d => d.DocumentId).ToList();
                    outcomes.Add(new QuestionOutcome(setting, q.Id, s.Nll, q.Answer.Length, s.Ask.Tokens.PromptTokens, s.Ask.Tokens.CartridgeSlots,
                        s.Ask.Tokens.KvBytesAttended, used, q.GoldDocuments.Any(used.Contains), s.Ask.Latency.RetrieveMs, s.Ask.Latency.LoadMs,
                        s.Ask.Latency.PrefillMs, askLatency, answer));
                }
                catch (Exception e) when (e is FailedPreconditionException or InvalidRequestException)
                {
                    failures[setting] = failures.TryGetValue(setting, out var f) ? (f.Count + 1, f.First) : (1, $"{q.Id}: {e.Message}");
                }
            }
            progress?.Report($"{setting.Label}: {questions.Count} questions in {settingClock.Elapsed.TotalSeconds:F1} s" +
                (failures.TryGetValue(setting, out var ff) ? $", {ff.Count} failed (first: {ff.First})" : ""));
        }

        var summaries = Summarize(settings, outcomes, questions, failures);
        var (peakResident, residentBudget) = await path.ResidentAsync(cancel);
        return new CollectionEvalResult(collection, questions.Count, summaries, outcomes, Headline.Compare(summaries),
            Process.GetCurrentProcess().PeakWorkingSet64, peakResident, residentBudget, clock.Elapsed.TotalSeconds);
    }

    /// <summary>The request a setting sends for a question (public: the data set evaluation scores options on the very same request).</summary>
    public static AskRequest Request(string collection, EvalQuestion q, EvalSetting setting, CollectionEvalOptions o, string? monoDocument)
    {
        var r = new AskRequest { Collection = collection, Question = q.Question, MaxTokens = o.MaxTokens };
        switch (setting.Mode)
        {
            case "cas": r.MaxCartridges = setting.Size; r.RetrieveChunks = Math.Max(o.CasRetrieveChunks, setting.Size); break;
            case "rag": r.RetrieveChunks = setting.Size; break;
            case "icl": r.MaxCartridges = 1; r.DocumentIds.Add(q.GoldDocuments[0]); break;
            case "mono": r.Collection = o.MonoCollection!; r.MaxCartridges = 1; r.DocumentIds.Add(monoDocument!); break;
        }
        return r;
    }

    /// <summary>Per setting: pooled per-token NLL → perplexity, gap closed against none and icl, means, recall, latency percentiles.</summary>
    public static List<SettingSummary> Summarize(IReadOnlyList<EvalSetting> settings, IReadOnlyList<QuestionOutcome> outcomes,
        IReadOnlyList<EvalQuestion> questions, IReadOnlyDictionary<EvalSetting, (int Count, string First)>? failures = null)
    {
        var gold = questions.ToDictionary(q => q.Id, q => (IReadOnlyCollection<string>)q.GoldDocuments.ToHashSet(StringComparer.Ordinal));
        double Ppl(string mode)
        {
            var o = outcomes.Where(x => x.Setting.Mode == mode).ToList();
            return o.Count == 0 ? double.NaN : Math.Exp(o.Sum(x => x.Nll) / o.Sum(x => x.AnswerTokens));
        }
        double none = Ppl("none"), icl = Ppl("icl");
        var noneOf = outcomes.Where(x => x.Setting.Mode == "none").ToDictionary(x => x.QuestionId);
        var iclOf = outcomes.Where(x => x.Setting.Mode == "icl").ToDictionary(x => x.QuestionId);
        // Gap closed over a subset of questions, against none and icl on the same subset (NaN when a baseline is missing).
        double GapOf(IEnumerable<QuestionOutcome> subset)
        {
            var l = subset.Where(x => noneOf.ContainsKey(x.QuestionId) && iclOf.ContainsKey(x.QuestionId)).ToList();
            if (l.Count == 0) return double.NaN;
            double tokens = l.Sum(x => x.AnswerTokens);
            return Stats.GapClosed(Math.Exp(l.Sum(x => noneOf[x.QuestionId].Nll) / tokens), Math.Exp(l.Sum(x => iclOf[x.QuestionId].Nll) / tokens),
                Math.Exp(l.Sum(x => x.Nll) / tokens));
        }
        var list = new List<SettingSummary>();
        foreach (var s in settings)
        {
            var o = outcomes.Where(x => x.Setting == s).ToList();
            var f = failures != null && failures.TryGetValue(s, out var ff) ? ff : (0, null);
            if (o.Count == 0)
            {
                var nan = new Percentiles(double.NaN, double.NaN);
                list.Add(new SettingSummary(s, 0, f.Item1, f.Item2, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, nan, nan, nan, nan, nan));
                continue;
            }
            double meanNll = o.Sum(x => x.Nll) / o.Sum(x => x.AnswerTokens), ppl = Math.Exp(meanNll);
            var asked = o.Where(x => x.AskLatency != null).Select(x => x.AskLatency!).ToList();
            list.Add(new SettingSummary(s, o.Count, f.Item1, f.Item2, meanNll, ppl, Stats.GapClosed(none, icl, ppl),
                o.Average(x => (double)x.ContextPositions), o.Average(x => (double)x.PromptTokens), o.Average(x => (double)x.CartridgeSlots),
                o.Average(x => (double)x.KvBytesAttended),
                // mono's one cartridge holds every document: recall does not apply.
                s.Mode == "mono" ? double.NaN : Stats.Recall(o.Select(x => (gold[x.QuestionId], (IReadOnlyCollection<string>)x.DocumentsUsed.ToHashSet(StringComparer.Ordinal)))),
                o.Average(x => (double)x.DocumentsUsed.Count),
                Percentiles.Of(asked.Count > 0 ? asked.Select(a => a.RetrieveMs) : o.Select(x => x.ScoreRetrieveMs)),
                Percentiles.Of(asked.Count > 0 ? asked.Select(a => a.LoadMs) : o.Select(x => x.ScoreLoadMs)),
                Percentiles.Of(asked.Count > 0 ? asked.Select(a => a.PrefillMs) : o.Select(x => x.ScoreForwardMs)),
                Percentiles.Of(asked.Select(a => a.DecodeMs)),
                Percentiles.Of(asked.Select(a => a.TotalMs)),
                s.Mode == "mono" ? double.NaN : GapOf(o.Where(x => x.GoldUsed)), s.Mode == "mono" ? double.NaN : GapOf(o.Where(x => !x.GoldUsed))));
        }
        return list;
    }
}
