// Issue 11's million-token run, one command and resumable (eval/million.sh calls this):
//   dotnet run --project eval/CasMillion -c Release -- [--tokens 1000000] [--data-dir eval/million/data] [--probes 32] [--epochs 2]
//        [--doc-tokens 384] [--questions 200] [--resident-mb 1024] [--report eval/reports/MILLION_RUN.md]
// Stages: (1) collect + ingest: SQuALITY train and the L-Eval files of ../shared/datasets, split at sentence ends into
// documents of at most --doc-tokens tokens (stories260K's context is 512), added to the collection `million` until it
// holds --tokens tokens (adding is idempotent, so a rerun continues); (2) CAS training (`CasTrainer`, what
// `cas collection train` runs; resumes an interrupted job); (3) the gRPC service; (4) queries through a gRPC client with
// cartridges (Ask) and RAG (AskRag). Prints key=value lines per stage on stdout (progress on stderr) and, with --report,
// writes them as a Markdown table.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Cas.Collections;
using Cas.Demo;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Jobs;
using Cas.Resources;
using Cas.Service;
using Cas.Service.V1;
using Cas.Store;
using Cas.Training;
using Grpc.Net.Client;

var inv = CultureInfo.InvariantCulture;
string root = FindRoot();
long targetTokens = long.Parse(Arg("--tokens", "1000000"), inv);
string dataDir = Path.GetFullPath(Arg("--data-dir", Path.Combine(root, "eval", "million", "data")));
int probes = int.Parse(Arg("--probes", "32"), inv);
double epochs = double.Parse(Arg("--epochs", "2"), inv);
int docTokens = int.Parse(Arg("--doc-tokens", "384"), inv);
int nQuestions = int.Parse(Arg("--questions", "200"), inv);
long residentBytes = long.Parse(Arg("--resident-mb", "1024"), inv) << 20;
string? reportPath = ArgOrNull("--report");
string modelPath = Path.Combine(root, "..", "shared", "models", "stories260K", "stories260K.bin");
string tokPath = Path.Combine(root, "..", "shared", "models", "stories260K", "tok512.bin");
string datasets = Path.Combine(root, "..", "shared", "datasets");
foreach (var f in new[] { modelPath, tokPath, Path.Combine(datasets, "squality", "train.jsonl") })
    if (!File.Exists(f)) { Console.Error.WriteLine($"error: {f} is missing; the million-token run needs ../shared (models and datasets)."); return 2; }

var results = new List<(string Key, string Value)>();
void Put(string k, FormattableString v) { string s = v.ToString(inv); results.Add((k, s)); Console.WriteLine($"{k}={s}"); }
var total = Stopwatch.StartNew();
double cpuMark = 0;
void Log(string s) => Console.Error.WriteLine($"[{total.Elapsed.TotalSeconds,7:F0}s] {s}");
// Stage times across invocations (a resumed run, or one killed with -9): each invocation keeps one file per stage under
// <data-dir>/timings, rewritten every 30 s while the stage runs, and the report sums them.
string invocation = DateTime.UtcNow.ToString("yyyyMMddTHHmmssfff", inv);
void Ledger(string stage, Stopwatch clock, double cpuStageStart)
{
    string dir = Path.Combine(dataDir, "timings");
    Directory.CreateDirectory(dir);
    double cpu = CpuNow() - cpuStageStart;
    string tmp = Path.Combine(dir, $"{invocation}.{stage}.tmp");
    File.WriteAllText(tmp, string.Create(inv, $"{clock.Elapsed.TotalSeconds:F1}\t{cpu:F1}\n"));
    File.Move(tmp, Path.Combine(dir, $"{invocation}.{stage}"), overwrite: true);
}
(double Wall, double Cpu, int Invocations) LedgerTotal(string stage)
{
    string dir = Path.Combine(dataDir, "timings");
    if (!Directory.Exists(dir)) return (0, 0, 0);
    double w = 0, c = 0; int n = 0;
    foreach (var f in Directory.EnumerateFiles(dir, "*." + stage))
    {
        var parts = File.ReadAllText(f).Trim().Split('\t');
        w += double.Parse(parts[0], inv); c += double.Parse(parts[1], inv); n++;
    }
    return (w, c, n);
}
double CpuNow() => Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;

var model = ModelLoader.Load(modelPath);
var tok = TokenizerLoader.Load(tokPath);
string fp = Cartridge.Fingerprint(model);
const string Name = "million";
Put("target_tokens", $"{targetTokens}");

// ---- (1) collect + ingest
var sw = Stopwatch.StartNew();
double stageCpu = CpuNow();
long added = 0;
using (var catalog = new CollectionCatalog(dataDir))
{
    if (catalog.Find(Name) == null) catalog.Create(Name, Path.GetFullPath(modelPath), fp, Path.GetFullPath(tokPath), 128);
    long have = catalog.Documents(Name).Sum(d => (long)d.Tokens);
    if (have >= targetTokens) Log($"ingest: the collection already holds {have:N0} tokens; nothing to add");
    else
    {
        long total1 = 0;
        var batch = new List<(Document, string)>();
        void Flush()
        {
            if (batch.Count == 0) return;
            var r = catalog.AddDocuments(Name, batch, tok);
            added += r.Added + r.Changed;
            batch.Clear();
        }
        foreach (var (spec, field) in Sources())
        {
            if (total1 >= targetTokens) break;
            var report = new ResourceReport();
            foreach (var doc in new JsonResource(spec, field, lines: true, id: Path.GetFileNameWithoutExtension(spec)).Read(report))
            {
                int part = 0;
                foreach (var passage in DemoCorpus.Split(DemoCorpus.StripFrontMatter(doc.Text), tok, docTokens))
                {
                    int n = tok.Encode(passage).Length;
                    if (n < 16) continue; // too short to train a cartridge of its own (p ≥ 16)
                    batch.Add((new Document($"{doc.Id}#{part++}", passage, doc.Source, Document.NoMetadata, Document.NoQuestions), "jsonl"));
                    total1 += n;
                    if (batch.Count == 200) { Flush(); Log($"ingest: {total1:N0} tokens read, {added:N0} documents added"); }
                    if (total1 >= targetTokens) break;
                }
                if (total1 >= targetTokens) break;
            }
        }
        Flush();
        if (total1 < targetTokens) Log($"ingest: the datasets hold only {total1:N0} tokens of documents (target {targetTokens:N0})");
    }
    var info = catalog.Get(Name);
    var docs = catalog.Documents(Name);
    Put("documents", $"{docs.Count}");
    Put("collection_tokens", $"{docs.Sum(d => (long)d.Tokens)}");
    Put("chunks", $"{info.Chunks}");
}
double ingestS = sw.Elapsed.TotalSeconds;
Put("ingest_added_documents", $"{added}");
Put("ingest_s", $"{ingestS:F1}");
Put("ingest_cpu_s", $"{Cpu():F1}");
Ledger("ingest", sw, stageCpu);

// ---- (2) CAS training
sw.Restart();
stageCpu = CpuNow();
CasJobResult job;
long storeBytes;
using (var catalog = new CollectionCatalog(dataDir))
using (var store = new FasterCartridgeStore(dataDir))
using (var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = residentBytes }))
{
    var options = new CasTrainingOptions { Epochs = epochs, Probes = new DocumentProbeOptions { ExamplesPerChunk = probes, ChunkTokens = 0 }, ResidentBudgetBytes = residentBytes };
    var needing = catalog.NeedingTraining(Name, store).Count;
    Log($"train: {needing} documents need a cartridge ({probes} probes per chunk, {epochs} epochs, B = {options.Resident} resident, budget {residentBytes >> 20} MiB)");
    var last = DateTime.MinValue;
    var progress = new SyncProgress<CasJobEvent>(e =>
    {
        if (e is CasJobStep s && DateTime.UtcNow - last > TimeSpan.FromSeconds(30))
        {
            last = DateTime.UtcNow;
            Ledger("train", sw, stageCpu);
            double frac = s.GoldTarget > 0 ? (double)s.GoldDone / s.GoldTarget : 0;
            Log($"train: {frac:P1} step {s.Step} loss {s.Loss:F4} cartridges {s.DocumentsDone}/{s.Documents}");
        }
        else if (e is CasJobNote n) Log("train: " + n.Text);
    });
    job = new CasTrainer(model, tok, catalog, store, budget, dataDir).Run(Name, options, progress);
    var status = catalog.Status(Name, store);
    Put("fresh_cartridges", $"{status.Count(x => x.State == Cas.Collections.CartridgeState.Fresh)}");
    Put("cartridge_slots_total", $"{status.Sum(x => (long)(x.Cartridge?.Length ?? 0))}");
}
double trainS = sw.Elapsed.TotalSeconds;
storeBytes = DirBytes(dataDir);
Put("trained_now", $"{job.Trained}");
Put("train_steps_now", $"{job.Steps}");
Put("train_resumed", $"{(job.Resumed ? "yes" : "no")}");
Put("train_s", $"{trainS:F1}");
Put("train_cpu_s", $"{Cpu():F1}");
Ledger("train", sw, stageCpu);
foreach (var stage in new[] { "ingest", "train" })
{
    var (w, c, n) = LedgerTotal(stage);
    Put($"{stage}_s_all_invocations", $"{w:F1}");
    Put($"{stage}_cpu_s_all_invocations", $"{c:F1}");
    Put($"{stage}_invocations", $"{n}");
}
Put("peak_resident_bytes", $"{job.PeakResidentBytes}");
Put("resident_budget", $"{job.ResidentBudget}");
Put("swap_in_p50_ms", $"{job.SwapInPercentile(0.5):F2}");
Put("swap_in_p99_ms", $"{job.SwapInPercentile(0.99):F2}");
Put("data_dir_bytes", $"{storeBytes}");

// ---- (3) serve, (4) queries through gRPC
sw.Restart();
var latency = new Dictionary<string, List<double>> { ["cas"] = new(), ["rag"] = new() };
var gold = new Dictionary<string, int> { ["cas"] = 0, ["rag"] = 0 };
var promptTokens = new Dictionary<string, long> { ["cas"] = 0, ["rag"] = 0 };
long slots = 0;
await using (var server = await CasServer.StartAsync(new CasServerOptions
{
    DataDir = dataDir, Port = 0, ModelPath = Path.GetFullPath(modelPath), TokenizerPath = Path.GetFullPath(tokPath),
    ResidentBytes = 256L << 20, LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
}))
{
    Put("serve_start_s", $"{sw.Elapsed.TotalSeconds:F1}");
    sw.Restart();
    using var channel = GrpcChannel.ForAddress(server.Address);
    var client = new QueryService.QueryServiceClient(channel);
    var docs = server.State.Catalog.Documents(Name);
    // Questions: a sentence from the middle of evenly spaced documents (a lexical probe: it measures retrieval of the
    // document it came from and the cost of each path, not answer quality, which stories260K cannot give).
    int step = Math.Max(1, docs.Count / Math.Max(1, nQuestions));
    int asked = 0;
    for (int i = 0; i < docs.Count && asked < nQuestions; i += step)
    {
        string text = server.State.Catalog.DocumentText(Name, docs[i].DocumentId);
        var sentences = text.Split(". ", StringSplitOptions.RemoveEmptyEntries).Where(s => s.Split(' ').Length >= 6).ToList();
        if (sentences.Count == 0) continue;
        string q = sentences[sentences.Count / 2];
        asked++;
        foreach (var mode in new[] { "cas", "rag" })
        {
            var a = await DemoRun.AskAsync(client, mode, Name, asked, q, docs[i].DocumentId, 16, CancellationToken.None);
            latency[mode].Add(a.TotalMs);
            if (a.GoldUsed) gold[mode]++;
            promptTokens[mode] += a.PromptTokens;
            if (mode == "cas") slots += a.CartridgeSlots;
        }
    }
    Put("questions", $"{asked}");
    foreach (var mode in new[] { "cas", "rag" })
    {
        var l = latency[mode].Order().ToArray();
        double P(double q) => Cas.Engine.Statistics.Percentile(l, q);
        Put($"{mode}_gold_retrieved", $"{(asked == 0 ? double.NaN : (double)gold[mode] / asked):F3}");
        Put($"{mode}_prompt_tokens_mean", $"{(asked == 0 ? double.NaN : (double)promptTokens[mode] / asked):F1}");
        Put($"{mode}_latency_p50_ms", $"{P(0.5):F1}");
        Put($"{mode}_latency_p99_ms", $"{P(0.99):F1}");
    }
    Put("cas_cartridge_slots_mean", $"{(asked == 0 ? double.NaN : (double)slots / asked):F1}");
    Put("query_s", $"{sw.Elapsed.TotalSeconds:F1}");
}
Put("wall_s", $"{total.Elapsed.TotalSeconds:F1}");
Put("serve_query_cpu_s", $"{Cpu():F1}");

if (reportPath != null)
{
    var md = new StringBuilder();
    md.AppendLine("# The million-token run (stories260K)");
    md.AppendLine();
    md.AppendLine($"Generated by `eval/million.sh` (`dotnet run --project eval/CasMillion -c Release -- {string.Join(' ', args)}`), {DateTime.UtcNow:yyyy-MM-dd}, {Environment.ProcessorCount} cores. " +
        "Stage times (`*_s`, `*_cpu_s`) and `*_now` are this invocation's; `*_all_invocations` sum every invocation on this " +
        "data folder, killed ones included (each kept its time in `<data-dir>/timings`, written every 30 s).");
    md.AppendLine();
    md.AppendLine("| key | value |");
    md.AppendLine("| --- | --- |");
    foreach (var (k, v) in results) md.AppendLine($"| `{k}` | {v} |");
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(reportPath))!);
    File.WriteAllText(reportPath, md.ToString());
    Log($"wrote {reportPath}");
}
return 0;

IEnumerable<(string Path, string Field)> Sources()
{
    yield return (Path.Combine(datasets, "squality", "train.jsonl"), "document");
    foreach (var f in new[] { "closed/quality.jsonl", "closed/tpo.jsonl", "closed/coursera.jsonl", "open/scientific_qa.jsonl", "open/multidoc_qa.jsonl" })
    {
        string p = Path.Combine(datasets, "leval", f);
        if (File.Exists(p)) yield return (p, "input");
    }
}

// CPU seconds of this process since the last call (steadier than wall time on a shared machine).
double Cpu() { var now = CpuNow(); var d = now - cpuMark; cpuMark = now; return d; }

static long DirBytes(string dir) => Directory.Exists(dir) ? new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length) : 0;

string Arg(string name, string d) => ArgOrNull(name) ?? d;
string? ArgOrNull(string name) { int i = Array.IndexOf(args, name); return i >= 0 && i + 1 < args.Length ? args[i + 1] : null; }

static string FindRoot()
{
    for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        if (File.Exists(Path.Combine(d.FullName, "CasService.sln"))) return d.FullName;
    return Directory.GetCurrentDirectory();
}
