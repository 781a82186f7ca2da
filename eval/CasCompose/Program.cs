// eval/reports/CAS_COMPOSE.md: do CAS cartridges compose? One command, from the repository root:
//   dotnet run --project eval/CasCompose -c Release -- [--documents 21] [--probes 64] [--epochs 4] [--out eval/reports]
// With --scale N: eval/reports/CAS_SCALE.md instead, one job over N documents with B resident (Scale.cs).
// Documents: stories stories260K samples itself from BOS (it can read them, it has not seen them). Cartridges are
// trained by Cas.Jobs' CasTrainer exactly as `cas collection train` does, once per variant (isolated: P_iso = 1;
// distractors with and without distractor gradients), then each document's held-out probes are scored with its
// cartridge alone and composed with 5, 10 and 20 other documents' cartridges (random others, shuffled order, keys not
// re-rotated), against no context and the document in context (ICL). Plus one monolithic cartridge with as many slots
// as all per-document cartridges together, trained on all documents' probes.
// With --placement: also where the composed cartridges sit relative to the question (rerotate gold first/last, aligned).
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Compute;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Eval;
using Cas.Jobs;
using Cas.Resources;
using Cas.Store;
using Cas.Training;
using Cas.Training.Evaluation;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
Thread.CurrentThread.CurrentCulture = CultureInfo.InvariantCulture;
int nDocs = Arg("--documents", 21), probes = Arg("--probes", 64), heldOutPerChunk = Arg("--held-out", 16);
double epochs = Arg2("--epochs", 4.0);
string outDir = Path.GetFullPath(ArgS("--out", "eval/reports"));
int[] composeWith = [0, 5, 10, 20];
bool scale = args.Contains("--scale"); // eval/reports/CAS_SCALE.md instead (Scale.cs)
if (!scale && nDocs < composeWith[^1] + 1) throw new ArgumentException($"--documents must be ≥ {composeWith[^1] + 1} to compose with {composeWith[^1]} others.");
Blas.TryUse(BlasBackend.Managed); // stories260K's tiny shapes: native BLAS threads only add overhead

string shared = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "..", "shared", "models", "stories260K"));
if (!Directory.Exists(shared)) shared = Path.GetFullPath(Path.Combine("..", "shared", "models", "stories260K"));
string mp = Path.Combine(shared, "stories260K.bin"), tp = Path.Combine(shared, "tok512.bin");
var model = ModelLoader.Load(mp);
var tok = TokenizerLoader.Load(tp);
var cfg = model.Config;
var total = Stopwatch.StartNew();
if (scale) { Cas.Eval.Scale.Run(model, tok, mp, tp, outDir, args, Log); return; }

// ---- documents
var docs = Cas.Eval.Stories.Sample(model, tok, nDocs);
Log($"{docs.Count} documents, {docs.Average(d => tok.Encode(d.Text).Length):F0} tokens on average");

// ---- held-out sets, no-context and ICL baselines (shared by every variant)
var probeBase = new DocumentProbeOptions { ExamplesPerChunk = probes, ChunkTokens = 0 };
int chunkTokens = DocumentProbes.ChooseChunkTokens(cfg, tok, probeBase with { ChunkTokens = 1 }, null);
var eval = new HeldOutEvaluator(model);
var sets = new EvalSet[docs.Count];
var none = new double[docs.Count]; var icl = new double[docs.Count];
for (int i = 0; i < docs.Count; i++)
{
    var set = DocumentProbes.BuildSet(model, tok, docs[i].Text, docs[i].Id,
        probeBase with { ChunkTokens = chunkTokens, Split = ProbeSplit.HeldOut, ExamplesPerChunk = heldOutPerChunk, Seed = 1000 });
    sets[i] = EvalSet.FromProbes(set);
    none[i] = eval.None(sets[i]).Perplexity;
    icl[i] = eval.Icl(sets[i]).Perplexity;
}
Log($"baselines: ppl none {none.Average():F3}, icl {icl.Average():F3}");

// ---- variants
// The first three are the report's original variants (distractors from the resident set only, as when it was written);
// "store" and "paper" draw distractors from the store too; "paper" draws up to K = 20 = N − 1 (as the paper's
// reproduction does, and as many as the evaluation composes) and mixes more often than the paper (P_iso 0.5, not 0.75).
var known = new Dictionary<string, (string Name, CasTrainingOptions Options, string What)>
{
    ["isolated"] = ("isolated", new CasTrainingOptions { PIso = 1.0, StoreDistractors = false }, "P_iso = 1: every example sees its own cartridge alone"),
    ["distractors"] = ("distractors", new CasTrainingOptions { StoreDistractors = false }, "P_iso = 0.75, k ~ U(1, 10) other resident cartridges, shuffled; distractors trained too"),
    ["frozen"] = ("distractors, frozen", new CasTrainingOptions { DistractorGradients = false, StoreDistractors = false }, "the same mixing, distractors get no gradient"),
    ["store"] = ("distractors + store", new CasTrainingOptions(), "P_iso = 0.75, k ~ U(1, 10) drawn from the resident cartridges and the finished ones in the store (frozen); resident distractors trained"),
    ["paper"] = ("paper mixing", new CasTrainingOptions { PIso = 0.5, MaxDistractors = 20 }, "P_iso = 0.5, k ~ U(1, 20) drawn from the resident cartridges and the finished ones in the store (frozen); resident distractors trained"),
    ["paper-aligned"] = ("paper mixing, aligned", new CasTrainingOptions { PIso = 0.5, MaxDistractors = 20, Placement = Placement.Aligned },
        "the paper mixing with the example's tokens placed at max p instead of Σp (Placement.Aligned: each cartridge at its trained distance from the tokens, as the *aligned* evaluation places them)"),
};
var variants = ArgS("--variants", "isolated,distractors,frozen").Split(',').Select(v => known.TryGetValue(v.Trim(), out var k) ? k
    : throw new ArgumentException($"unknown variant '{v}'; known: {string.Join(", ", known.Keys)}")).ToArray();
int residentB = Arg("--resident", 12);
bool monolithic = !args.Contains("--no-monolithic");
string report = ArgS("--report", "CAS_COMPOSE");
var rows = new List<(string Variant, int With, double Ppl, double Gap, double GapMedian)>();
var timing = new List<(string Variant, double Seconds, long Steps, long Peak, long Budget, double P50, double P95, long Distractors, long Store, long Dropped)>();
var placeRows = new List<(string Variant, string Place, int With, double Gap)>();
bool placement = args.Contains("--placement");
var compRng = new Random(12345);
var others = Enumerable.Range(0, docs.Count).Select(i => composeWith.ToDictionary(n => n, n =>
{
    var pool = Enumerable.Range(0, docs.Count).Where(j => j != i).OrderBy(_ => compRng.Next()).Take(n).Append(i).OrderBy(_ => compRng.Next()).ToArray();
    return pool; // document indices in prefix order, the gold among them
})).ToArray();
KvPrefix[] distractorCartridges = [], anyCartridges = [];
foreach (var (name, baseOptions, _) in variants)
{
    string dir = Path.Combine(Path.GetTempPath(), "cas-compose-" + Guid.NewGuid().ToString("N"));
    try
    {
        var options = baseOptions with { Resident = residentB, Epochs = epochs, Probes = probeBase };
        using var catalog = new CollectionCatalog(dir);
        catalog.Create("stories", mp, Cartridge.Fingerprint(model), tp, 512);
        catalog.AddDocuments("stories", docs.Select(d => (new Document(d.Id, d.Text, d.Id, Document.NoMetadata, Document.NoQuestions), "text")), tok);
        using var store = new FasterCartridgeStore(dir);
        // Training: B cartridges (K/V + grad + 2 moments); store distractors: room for a batch's worth of frozen K/V.
        long storeRoom = options.StoreDistractors ? (long)options.BatchSize * options.MaxDistractors * CasTrainer.ResidentBytesFor(cfg, 32) / 4 : 0;
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = options.Resident * CasTrainer.ResidentBytesFor(cfg, 32) + storeRoom });
        var clock = Stopwatch.StartNew();
        var result = new CasTrainer(model, tok, catalog, store, budget, dir).Run("stories", options);
        timing.Add((name, clock.Elapsed.TotalSeconds, result.Steps, result.PeakResidentBytes, result.ResidentBudget, result.SwapInPercentile(0.5), result.SwapInPercentile(0.95),
            result.DistractorUses, result.StoreDistractorUses, result.StoreDistractorsDropped));
        var carts = docs.Select(d => store.Get(CollectionCatalog.CartridgeId("stories", d.Id)).Prefix).ToArray();
        anyCartridges = carts;
        if (name != "isolated") distractorCartridges = carts; // the monolithic comparison uses the last distractor-trained set
        foreach (int n in composeWith)
        {
            var gaps = new double[docs.Count]; double ppl = 0;
            for (int i = 0; i < docs.Count; i++)
            {
                var prefix = KvPrefix.Concat(others[i][n].Select(j => carts[j]).ToArray());
                double p = eval.WithPrefix(sets[i], prefix).Perplexity;
                ppl += p / docs.Count;
                gaps[i] = HeldOutEvaluator.GapClosed(none[i], icl[i], p);
            }
            rows.Add((name, n, ppl, gaps.Average(), Cas.Engine.Statistics.Median(gaps)));
            Log($"{name}: with {n} others ppl {ppl:F3}, gap closed {gaps.Average():P1} (median {Cas.Engine.Statistics.Median(gaps):P1})");
        }
        if (placement)
        {
            // Where the cartridges sit relative to the question. concat (above) keeps every cartridge's trained key
            // positions, so the question sits Σp positions after all of them (and the order of the parts does not
            // matter: attention does not see slot order when keys are not moved). rerotate moves each part's keys to
            // the slots it occupies: the last part keeps its trained distance to the question, the others are farther.
            // aligned rotates every part so each sits at its trained distance (the question right after max p), as if
            // each were the only one: all compete on content alone.
            foreach (int n in composeWith.Where(x => x > 0))
                foreach (var place in new[] { "rerotate, gold first", "rerotate, gold last", "aligned" })
                {
                    var gaps = new double[docs.Count];
                    for (int i = 0; i < docs.Count; i++)
                    {
                        KvPrefix prefix;
                        if (place == "aligned")
                        {
                            // HeldOutEvaluator takes one copied prefix: Placement.Aligned as its tested equivalent, the
                            // concatenation with every key rotated by Σp − max p.
                            var parts = others[i][n].Select(j => carts[j]).ToArray();
                            prefix = PrefixComposition.Rotate(cfg, KvPrefix.Concat(parts), parts.Sum(c => c.Length) - parts.Max(c => c.Length));
                        }
                        else
                        {
                            var rest = others[i][n].Where(j => j != i);
                            int[] order = place.EndsWith("first") ? [i, .. rest] : [.. rest, i];
                            prefix = PrefixComposition.Compose(cfg, order.Select(j => carts[j]).ToArray(), CompositionMode.ReRotate);
                        }
                        gaps[i] = HeldOutEvaluator.GapClosed(none[i], icl[i], eval.WithPrefix(sets[i], prefix).Perplexity);
                    }
                    placeRows.Add((name, place, n, gaps.Average()));
                    Log($"{name}: {place}, with {n} others: gap closed {gaps.Average():P1}");
                }
        }
    }
    finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
}

// ---- monolithic: one cartridge with Σp slots, trained on every document's probes for as many examples in all
if (distractorCartridges.Length == 0) monolithic = false;
double monoSeconds = 0, monoPpl = 0, allPpl = 0; int monoSteps = 0;
var monoGaps = new double[docs.Count]; var allComposed = new double[docs.Count];
int sumP = distractorCartridges.Sum(c => c.Length);
if (monolithic)
{
    var perDoc = docs.Select(d => DocumentProbes.Build(model, tok, d.Text, d.Id, probeBase with { ChunkTokens = chunkTokens, Seed = 7 })).ToList();
    var all = new TrainingExamples(perDoc.SelectMany(e => Enumerable.Range(0, e.Count).Select(k => e[k])), docs.Select(d => d.Id).ToList(), "all documents' probes");
    monoSteps = TrainingOptions.StepsForEpochs(epochs, all.Count, 8, 1);
    var concat = docs.SelectMany(d => tok.Encode(d.Text)).Prepend(tok.BosId!.Value).ToArray();
    var mono = Cartridge.ForModel(model, CartridgeInit.FirstK(model, concat, sumP), CartridgeInitKind.FirstK);
    var monoClock = Stopwatch.StartNew();
    var monoState = TrainingState.Start(mono, new TrainingOptions { Steps = monoSteps, BatchSize = 8, LearningRate = 0.05f }, all);
    new CartridgeTrainer(model).Run(monoState, all);
    monoSeconds = monoClock.Elapsed.TotalSeconds;
    for (int i = 0; i < docs.Count; i++)
    {
        double p = eval.WithPrefix(sets[i], mono.Prefix).Perplexity;
        monoPpl += p / docs.Count; monoGaps[i] = HeldOutEvaluator.GapClosed(none[i], icl[i], p);
    }
    for (int i = 0; i < docs.Count; i++)
    {
        double p = eval.WithPrefix(sets[i], KvPrefix.Concat(distractorCartridges)).Perplexity;
        allPpl += p / docs.Count; allComposed[i] = HeldOutEvaluator.GapClosed(none[i], icl[i], p);
    }
    Log($"monolithic p={sumP}: ppl {monoPpl:F3}, gap {monoGaps.Average():P1}; all {docs.Count} per-document cartridges composed: ppl {allPpl:F3}, gap {allComposed.Average():P1}");
}

// ---- plot and report
string png = report.ToLowerInvariant() + ".png";
Plots.Lines(Path.Combine(outDir, png), $"stories260K, {docs.Count} documents: gap closed vs cartridges composed",
    "other documents' cartridges composed with the gold one", "no-context → ICL perplexity gap closed (%)",
    variants.Select(v => (Name: v.Item1, Rows: rows.Where(x => x.Variant == v.Item1).ToList()))
            .Select(v => new PlotSeries(v.Name, v.Rows.Select(x => (double)x.With).ToArray(), v.Rows.Select(x => 100 * x.Gap).ToArray())),
    monolithic ? [($"monolithic (p = {sumP}), alone", 100 * monoGaps.Average())] : null,
    legend: ScottPlot.Alignment.UpperRight);
string placementPng = report.ToLowerInvariant() + "_concat_vs_aligned.png";
if (placement)
{
    // concat (what the service does) against aligned (each cartridge at its trained distance from the question), per variant.
    var series = new List<PlotSeries>();
    foreach (var v in variants)
    {
        var c = rows.Where(x => x.Variant == v.Item1).ToList();
        series.Add(new PlotSeries($"trained {v.Item1}; evaluated concat", c.Select(x => (double)x.With).ToArray(), c.Select(x => 100 * x.Gap).ToArray()));
        var a = placeRows.Where(x => x.Variant == v.Item1 && x.Place == "aligned").ToList();
        double alone = 100 * c.First(x => x.With == 0).Gap; // alone, both placements are the same prefix
        series.Add(new PlotSeries($"trained {v.Item1}; evaluated aligned", [0, .. a.Select(x => (double)x.With)], [alone, .. a.Select(x => 100 * x.Gap)]));
    }
    Plots.Lines(Path.Combine(outDir, placementPng), $"stories260K, {docs.Count} documents: concat vs aligned placement",
        "other documents' cartridges composed with the gold one", "no-context → ICL perplexity gap closed (%)", series, null,
        legend: ScottPlot.Alignment.LowerLeft);
}

var md = new StringBuilder();
md.AppendLine("# CAS: do per-document cartridges compose? (stories260K)");
md.AppendLine();
md.AppendLine($"Generated by `dotnet run --project eval/CasCompose -c Release -- {string.Join(" ", args)}` ({total.Elapsed.TotalMinutes:F1} min on the 2-core machine).");
md.AppendLine();
md.AppendLine($"{docs.Count} documents the model sampled from BOS (temperature 0.8, 200–400 tokens; {docs.Average(d => tok.Encode(d.Text).Length):F0} on average). " +
    $"Per document one cartridge, p = max(16, tokens/20) = {anyCartridges.Min(c => c.Length)}–{anyCartridges.Max(c => c.Length)}, trained by `CasTrainer` " +
    $"(what `cas collection train` runs) on {probes} document probes per chunk for {epochs} epochs, lr 0.05, B = {residentB} resident, rotation 0.5 every 10 steps. " +
    "Variants: " + string.Join(", ", variants.Select(v => $"*{v.Name}* ({v.What})")) + ". Evaluation: each document's held-out probes " +
    $"({heldOutPerChunk} per chunk, sentence starts and openers training never used), perplexity of the actual continuation; gap closed = (ppl_none − ppl) / (ppl_none − ppl_icl) per document, then averaged. " +
    "Composed: the gold cartridge and n random other documents' cartridges (same others for every variant), in a random order, keys not re-rotated.");
md.AppendLine();
md.AppendLine($"Baselines (mean over documents): perplexity with no context {none.Average():F3}, with the document in context (ICL) {icl.Average():F3}.");
md.AppendLine();
md.AppendLine("| variant | composed with | held-out ppl | gap closed (mean) | gap closed (median) |");
md.AppendLine("| --- | ---: | ---: | ---: | ---: |");
foreach (var r in rows) md.AppendLine($"| {r.Variant} | {r.With} | {r.Ppl:F3} | {100 * r.Gap:F1}% | {100 * r.GapMedian:F1}% |");
md.AppendLine();
md.AppendLine($"![gap closed vs cartridges composed]({png})");
md.AppendLine();
if (placement)
{
    md.AppendLine("**Placement** (`--placement`): gap closed (mean) by where the composed cartridges sit relative to the question. " +
        "*concat* (the table above, what the service does): every cartridge keeps its trained key positions and the question follows all Σp slots, so the order of the parts does not matter. " +
        "*rerotate*: each part's keys are moved to the slots it occupies; the last part keeps its trained distance to the question, the others are farther. " +
        "*aligned*: every part is rotated to its trained distance from the question (as if each were alone), so they compete on content alone.");
    md.AppendLine();
    md.AppendLine($"![concat vs aligned placement]({placementPng})");
    md.AppendLine();
    md.AppendLine("| variant | placement | " + string.Join(" | ", composeWith.Where(x => x > 0).Select(n => $"with {n}")) + " |");
    md.AppendLine("| --- | --- | " + string.Join(" | ", composeWith.Where(x => x > 0).Select(_ => "---:")) + " |");
    foreach (var v in variants)
    {
        md.AppendLine($"| {v.Name} | concat | " + string.Join(" | ", composeWith.Where(x => x > 0).Select(n => $"{100 * rows.First(r => r.Variant == v.Name && r.With == n).Gap:F1}%")) + " |");
        foreach (var place in placeRows.Where(r => r.Variant == v.Name).Select(r => r.Place).Distinct())
            md.AppendLine($"| {v.Name} | {place} | " + string.Join(" | ", composeWith.Where(x => x > 0).Select(n => $"{100 * placeRows.First(r => r.Variant == v.Name && r.Place == place && r.With == n).Gap:F1}%")) + " |");
    }
    md.AppendLine();
}
if (monolithic)
{
    md.AppendLine("**Per-document vs monolithic, same total size.**");
    md.AppendLine();
    md.AppendLine("| cartridge(s) | slots | held-out ppl | gap closed (mean) |");
    md.AppendLine("| --- | ---: | ---: | ---: |");
    md.AppendLine($"| all {docs.Count} per-document cartridges (distractor-trained) composed | {sumP} | {allPpl:F3} | {100 * allComposed.Average():F1}% |");
    md.AppendLine($"| one monolithic cartridge, first-k of the concatenated documents, trained on all their probes ({monoSteps} steps of 8, {monoSeconds:F0} s) | {sumP} | {monoPpl:F3} | {100 * monoGaps.Average():F1}% |");
    md.AppendLine();
}
md.AppendLine("**Training runs** (each variant one job of all documents):");
md.AppendLine();
md.AppendLine("| variant | wall time | global steps | peak resident bytes / budget | swap-in p50 / p95 | distractor places / from the store / store draws dropped |");
md.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: |");
foreach (var t in timing) md.AppendLine($"| {t.Variant} | {t.Seconds:F0} s | {t.Steps} | {t.Peak:N0} / {t.Budget:N0} | {t.P50:F1} / {t.P95:F1} ms | {t.Distractors:N0} / {t.Store:N0} / {t.Dropped:N0} |");
File.WriteAllText(Path.Combine(outDir, report + ".md"), md.ToString());
Log($"wrote {Path.Combine(outDir, report + ".md")} in {total.Elapsed.TotalMinutes:F1} min");

void Log(string s) => Console.Error.WriteLine($"[{total.Elapsed.TotalSeconds,6:F0}s] {s}");
int Arg(string name, int d) { int i = Array.IndexOf(args, name); return i >= 0 ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : d; }
double Arg2(string name, double d) { int i = Array.IndexOf(args, name); return i >= 0 ? double.Parse(args[i + 1], CultureInfo.InvariantCulture) : d; }
string ArgS(string name, string d) { int i = Array.IndexOf(args, name); return i >= 0 ? args[i + 1] : d; }
