// eval/reports/CAS_SCALE.md: one CAS job over many documents with B cartridges resident (issue 9: "300 documents trained with
// B = 20 resident"). One command, from the repository root:
//   dotnet run --project eval/CasCompose -c Release -- --scale 300 [--resident 20] [--probes 16] [--epochs 2] [--held-out 8] [--out eval]
// The job is what `cas collection train` runs (CasTrainer, default mixing: P_iso 0.75, K 10, distractors from the
// resident set and from the store). Measured: wall time, peak resident bytes against the budget, resident bytes after
// every step, swap-in latencies (a cartridge entering the resident set for training; a frozen store distractor loaded
// by the budget manager), and — as a check that the cartridges learned — the gap closed alone on a sample of documents.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Jobs;
using Cas.Resources;
using Cas.Store;
using Cas.Training;
using Cas.Training.Evaluation;

namespace Cas.Eval;

static class Stories
{
    /// <summary>
    /// n stories the model samples from BOS (temperature 0.8, seeds 1, 2, …), keeping those of 200–400 tokens;
    /// <paramref name="batch"/> seeds decoded at once (each request has its own seeded sampler).
    /// </summary>
    public static List<(string Id, string Text)> Sample(Model model, ITokenizer tok, int n, int batch = 1)
    {
        var docs = new List<(string Id, string Text)>();
        var gen = new Generator(new Transformer(model));
        for (ulong seed = 1; docs.Count < n; seed += (ulong)batch)
        {
            var rs = gen.Generate(Enumerable.Range(0, batch).Select(b => new GenerationRequest([tok.BosId!.Value])
                { MaxTokens = 400, Sampling = new SamplingOptions { Temperature = 0.8f, Seed = seed + (ulong)b } }).ToList());
            for (int b = 0; b < batch && docs.Count < n; b++)
                if (rs[b].Tokens.Length >= 200) // keep 200–400-token documents
                    docs.Add(($"story{seed + (ulong)b:D3}.txt", tok.Decode(rs[b].Tokens)));
        }
        return docs;
    }
}

static class Scale
{

    public static void Run(Model model, ITokenizer tok, string mp, string tp, string outDir, string[] args, Action<string> log)
    {
        var cfg = model.Config;
        int n = Arg(args, "--scale", 300), residentB = Arg(args, "--resident", 20), probes = Arg(args, "--probes", 16), heldOut = Arg(args, "--held-out", 8);
        int sample = Arg(args, "--eval-sample", 20), roomFor = Arg(args, "--distractor-room", 20);
        double epochs = double.Parse(ArgS(args, "--epochs", "2"), CultureInfo.InvariantCulture);
        var total = Stopwatch.StartNew();
        // --stories FILE: the sampled stories are kept there (JSON) and reused by a rerun (sampling 300 takes minutes here).
        string? cache = ArgS(args, "--stories", "") is { Length: > 0 } c ? c : null;
        var docs = cache != null && File.Exists(cache)
            ? System.Text.Json.JsonSerializer.Deserialize<List<string[]>>(File.ReadAllText(cache))!.Select(a => (Id: a[0], Text: a[1])).Take(n).ToList()
            : Stories.Sample(model, tok, n, batch: 16);
        if (docs.Count < n) docs = Stories.Sample(model, tok, n, batch: 16);
        if (cache != null) File.WriteAllText(cache, System.Text.Json.JsonSerializer.Serialize(docs.Select(d => new[] { d.Id, d.Text })));
        var tokens = docs.Select(d => tok.Encode(d.Text).Length).ToArray();
        log($"{docs.Count} documents sampled in {total.Elapsed.TotalSeconds:F0} s, {tokens.Average():F0} tokens on average");

        var options = new CasTrainingOptions { Resident = residentB, Epochs = epochs, Probes = new DocumentProbeOptions { ExamplesPerChunk = probes, ChunkTokens = 0 } };
        int pMax = tokens.Max(t => Math.Min(options.CartridgeTokensFor(t), t + tok.StartTokens.Count));
        long kvBytes = CasTrainer.ResidentBytesFor(cfg, pMax) / 4;
        // The budget: B training cartridges of the largest p (K/V + gradient + 2 AdamW moments) plus room for a few
        // frozen store distractors (K/V only); training needs 4·B cartridges of it, the rest is the distractors' room.
        long budgetBytes = CasTrainer.ResidentBytesFor(cfg, pMax) * residentB + kvBytes * roomFor;
        string dir = Path.Combine(Path.GetTempPath(), "cas-scale-" + Guid.NewGuid().ToString("N"));
        var steps = new List<(long Step, long Resident, long Reserved)>();
        var done = new List<(long Step, double Seconds)>();
        CasJobResult result; BudgetMetrics bm; double trainSeconds;
        var sampleCarts = new KvPrefix[Math.Min(sample, docs.Count)];
        try
        {
            using var catalog = new CollectionCatalog(dir);
            catalog.Create("stories", mp, Cartridge.Fingerprint(model), tp, 512);
            catalog.AddDocuments("stories", docs.Select(d => (new Document(d.Id, d.Text, d.Id, Document.NoMetadata, Document.NoQuestions), "text")), tok);
            using var store = new FasterCartridgeStore(dir);
            using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = budgetBytes });
            var clock = Stopwatch.StartNew();
            var last = TimeSpan.Zero;
            long step = 0;
            var progress = new SyncProgress<CasJobEvent>(e =>
            {
                switch (e)
                {
                    case CasJobNote note: log(note.Text); break;
                    case CasJobStep s:
                        step = s.Step;
                        var m = budget.Metrics();
                        steps.Add((s.Step, m.ResidentBytes, m.ReservedBytes));
                        if (clock.Elapsed - last > TimeSpan.FromSeconds(60))
                        {
                            last = clock.Elapsed;
                            log($"step {s.Step}: {s.DocumentsDone}/{s.Documents} documents, gold {s.GoldDone}/{s.GoldTarget}, loss {s.Loss:F4}, resident {m.ResidentBytes:N0}/{m.ResidentBudget:N0} B");
                        }
                        break;
                    case CasJobDocumentDone: done.Add((step, clock.Elapsed.TotalSeconds)); break;
                }
            });
            result = new CasTrainer(model, tok, catalog, store, budget, dir).Run("stories", options, progress);
            trainSeconds = clock.Elapsed.TotalSeconds;
            bm = budget.Metrics();
            for (int i = 0; i < sampleCarts.Length; i++) sampleCarts[i] = store.Get(CollectionCatalog.CartridgeId("stories", docs[i].Id)).Prefix;
            log($"trained {result.Trained} documents in {trainSeconds:F0} s, {result.Steps} steps; peak {result.PeakResidentBytes:N0} of {result.ResidentBudget:N0} B; {bm}");
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }

        // The sample's gap closed alone (held-out probes never used in training).
        var eval = new HeldOutEvaluator(model);
        var probeBase = new DocumentProbeOptions { ExamplesPerChunk = probes, ChunkTokens = 0 };
        int chunkTokens = DocumentProbes.ChooseChunkTokens(cfg, tok, probeBase with { ChunkTokens = 1 }, null);
        var gaps = new double[sampleCarts.Length];
        for (int i = 0; i < sampleCarts.Length; i++)
        {
            var set = EvalSet.FromProbes(DocumentProbes.BuildSet(model, tok, docs[i].Text, docs[i].Id,
                probeBase with { ChunkTokens = chunkTokens, Split = ProbeSplit.HeldOut, ExamplesPerChunk = heldOut, Seed = 1000 }));
            gaps[i] = HeldOutEvaluator.GapClosed(eval.None(set).Perplexity, eval.Icl(set).Perplexity, eval.WithPrefix(set, sampleCarts[i]).Perplexity);
        }
        log($"gap closed alone, first {gaps.Length} documents: mean {gaps.Average():P1}");

        // ---- plots
        Directory.CreateDirectory(outDir);
        var plt = new ScottPlot.Plot();
        var xs = steps.Select(s => (double)s.Step).ToArray();
        var res = plt.Add.ScatterLine(xs, steps.Select(s => s.Resident / 1e6).ToArray());
        res.LegendText = "resident bytes after the step (training + cached store distractors)";
        var rsv = plt.Add.ScatterLine(xs, steps.Select(s => s.Reserved / 1e6).ToArray());
        rsv.LegendText = "of which training reservations (K/V + grad + 2 AdamW moments)";
        var bl = plt.Add.HorizontalLine(budgetBytes / 1e6);
        bl.LegendText = "resident budget"; bl.LinePattern = ScottPlot.LinePattern.Dashed;
        var pk = plt.Add.HorizontalLine(result.PeakResidentBytes / 1e6);
        pk.LegendText = "peak (within steps)"; pk.LinePattern = ScottPlot.LinePattern.Dotted;
        plt.Title($"CAS job: {docs.Count} documents, B = {residentB} resident");
        plt.XLabel("global step"); plt.YLabel("MB");
        plt.Axes.SetLimitsY(0, budgetBytes / 1e6 * 1.3);
        plt.ShowLegend(ScottPlot.Alignment.LowerRight);
        plt.SavePng(Path.Combine(outDir, "cas_scale_resident.png"), 900, 500);

        var hist = new ScottPlot.Plot();
        var trainMs = result.SwapInMs.ToArray();
        double lo = Math.Floor(Math.Log10(Math.Max(1e-3, trainMs.Min()) ) * 4) / 4, hi = Math.Ceiling(Math.Log10(Math.Max(1e-3, trainMs.Max())) * 4) / 4 + 0.25;
        int bins = Math.Max(1, (int)Math.Round((hi - lo) / 0.25));
        var counts = new double[bins];
        foreach (double v in trainMs) counts[Math.Clamp((int)((Math.Log10(Math.Max(1e-3, v)) - lo) / 0.25), 0, bins - 1)]++;
        var bars = hist.Add.Bars(Enumerable.Range(0, bins).Select(b => lo + 0.25 * b + 0.125).ToArray(), counts);
        foreach (var b in bars.Bars) b.Size = 0.22;
        hist.Title($"swap-ins into the training set ({trainMs.Length}): reserve + checkpoint load or first-k init");
        hist.XLabel("log10(latency in ms)"); hist.YLabel("swap-ins");
        hist.SavePng(Path.Combine(outDir, "cas_scale_swapin.png"), 900, 450);

        // ---- report
        double P(double q) => result.SwapInPercentile(q);
        var md = new StringBuilder();
        md.AppendLine($"# CAS at scale: {docs.Count} documents, B = {residentB} resident (stories260K)");
        md.AppendLine();
        md.AppendLine($"Generated by `dotnet run --project eval/CasCompose -c Release -- --scale {n} --resident {residentB} --probes {probes} --epochs {epochs.ToString(CultureInfo.InvariantCulture)} --held-out {heldOut}` " +
            $"({total.Elapsed.TotalMinutes:F1} min on the shared 2-core machine, other helpers building and testing at the same time).");
        md.AppendLine();
        md.AppendLine($"{docs.Count} stories the model sampled from BOS (200–400 tokens, {tokens.Average():F0} on average), one collection, one `CasTrainer` job (what `cas collection train` runs): " +
            $"p = max(16, tokens/20) = {Math.Min(options.CartridgeTokensFor(tokens.Min()), tokens.Min() + tok.StartTokens.Count)}–{pMax}, B = {residentB} resident with gradients and AdamW moments, rotation 0.5 every 10 steps, " +
            $"P_iso 0.75, K = 10, distractors trained, distractors drawn from the resident set **and from the finished cartridges in the store** (frozen, leased through the budget manager). " +
            $"Reduced per-document recipe to fit the shared CPU: {probes} document probes per chunk, {epochs.ToString(CultureInfo.InvariantCulture)} epochs (the default is 128 and 4). " +
            $"Resident budget: {residentB} × 4 × the largest cartridge (training) + {roomFor} × the largest cartridge's K/V (room for frozen store distractors) = {budgetBytes:N0} bytes.");
        md.AppendLine();
        md.AppendLine("| figure | value |");
        md.AppendLine("| --- | ---: |");
        md.AppendLine($"| documents trained | {result.Trained} |");
        md.AppendLine($"| global steps (8 sequences each) | {result.Steps:N0} |");
        md.AppendLine($"| wall time of the job (teacher data included) | {trainSeconds:F0} s ({trainSeconds / Math.Max(1, result.Trained):F2} s per document) |");
        md.AppendLine($"| **peak resident bytes / budget** | **{result.PeakResidentBytes:N0} / {result.ResidentBudget:N0}** ({100.0 * result.PeakResidentBytes / result.ResidentBudget:F1}%) |");
        md.AppendLine($"| peak resident training cartridges | {result.PeakResidentCartridges} |");
        md.AppendLine($"| swap-ins into the training set (reserve + checkpoint load or first-k init) | {trainMs.Length:N0}: p50 {P(0.5):F2} ms, p95 {P(0.95):F2} ms, p99 {P(0.99):F2} ms, max {trainMs.Max():F2} ms |");
        md.AppendLine($"| store distractor loads by the budget manager (store or host tier → resident fp32) | {bm.SwapIns:N0}: p50 {bm.SwapInP50Ms:F2} ms, p95 {bm.SwapInP95Ms:F2} ms, p99 {bm.SwapInP99Ms:F2} ms |");
        md.AppendLine($"| budget manager: resident hits / host hits / misses / evictions | {bm.ResidentHits:N0} / {bm.HostHits:N0} / {bm.Misses:N0} / {bm.Evictions:N0} |");
        md.AppendLine($"| distractor places filled / of them from the store / store draws dropped (no room) | {result.DistractorUses:N0} / {result.StoreDistractorUses:N0} / {result.StoreDistractorsDropped:N0} |");
        md.AppendLine($"| gap closed alone, held-out probes, first {gaps.Length} documents (mean / min) | {100 * gaps.Average():F1}% / {100 * gaps.Min():F1}% |");
        md.AppendLine();
        md.AppendLine("![resident bytes over the job against the budget](cas_scale_resident.png)");
        md.AppendLine();
        md.AppendLine("![swap-in latency histogram](cas_scale_swapin.png)");
        md.AppendLine();
        md.AppendLine("The budget manager charges every byte before it is allocated and throws on an overrun, so the peak is a measured " +
            "upper bound over the whole job, not a sample; the line in the plot is sampled after each step (the store distractors' leases are " +
            "released then, their K/V stay cached until evicted for room).");
        File.WriteAllText(Path.Combine(outDir, "CAS_SCALE.md"), md.ToString());
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"documents={result.Trained} steps={result.Steps} wall_s={trainSeconds:F1} swap_in_p50_ms={P(0.5):F3} swap_in_p95_ms={P(0.95):F3} swap_in_p99_ms={P(0.99):F3} " +
            $"store_distractors={result.StoreDistractorUses} dropped={result.StoreDistractorsDropped} gap_closed_sample={gaps.Average():F4} peak_resident_bytes={result.PeakResidentBytes} resident_budget={result.ResidentBudget} " +
            $"peak_vs_budget={(double)result.PeakResidentBytes / result.ResidentBudget:F4}"));
        log($"wrote {Path.Combine(outDir, "CAS_SCALE.md")} in {total.Elapsed.TotalMinutes:F1} min");
    }

    static int Arg(string[] args, string name, int d) { int i = Array.IndexOf(args, name); return i >= 0 ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : d; }
    static string ArgS(string[] args, string name, string d) { int i = Array.IndexOf(args, name); return i >= 0 ? args[i + 1] : d; }
}
