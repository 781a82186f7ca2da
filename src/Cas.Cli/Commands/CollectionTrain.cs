using System.CommandLine;
using System.Globalization;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Jobs;
using Cas.Store;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas collection train NAME`: a thin caller of <see cref="CasTrainer"/>. Progress lines on stderr, a key=value summary
/// on stdout. Running it again continues an interrupted job (same settings) or trains what became stale.
/// </summary>
static class CollectionTrain
{
    public static Command Create()
    {
        var d = new CasTrainingOptions();
        var dataDir = StoreCommand.DataDirOption();
        var name = new Argument<string>("NAME") { Description = "Collection name (letters, digits, '-', '_', '.')." };
        var compression = new Option<double>("--compression") { Description = "Cartridge size p = document tokens / this (floor 16).", DefaultValueFactory = _ => d.Compression };
        var residentCount = new Option<int>("--resident") { Description = "B: cartridges trained at once, resident with their gradients and AdamW moments.", DefaultValueFactory = _ => d.Resident };
        var rotateEvery = new Option<int>("--rotate-every") { Description = "R: steps between rotations of the resident set.", DefaultValueFactory = _ => d.RotateEvery };
        var rotateFraction = new Option<double>("--rotate-fraction") { Description = "φ: fraction of the resident set rotated at each rotation (most-trained out, least-trained in).", DefaultValueFactory = _ => d.RotateFraction };
        var pIso = new Option<double>("--p-iso") { Description = "Probability that a training example sees its own cartridge alone (else with k ~ U(1, K) distractors).", DefaultValueFactory = _ => d.PIso };
        var maxDistractors = new Option<int>("--max-distractors") { Description = "K: most distractor cartridges composed with an example's own.", DefaultValueFactory = _ => d.MaxDistractors };
        var distractorGrads = new Option<string>("--distractor-grads") { Description = "on | off: whether distractor cartridges are trained by the examples they appear in.", DefaultValueFactory = _ => "on" };
        var storeDistractors = new Option<string>("--store-distractors") { Description = "on | off: whether distractors are also drawn from the collection's finished cartridges in the store (frozen, leased within --resident-mb).", DefaultValueFactory = _ => "on" };
        var steps = Options.Steps();
        var epochs = new Option<double?>("--epochs") { Description = $"Passes over the training examples (instead of --steps). Default: {Cas.Training.TrainingRunOptions.DefaultEpochs.ToString(CultureInfo.InvariantCulture)}." };
        var lr = new Option<float>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => d.LearningRate };
        var batch = new Option<int>("--batch") { Description = "Sequences per micro-batch.", DefaultValueFactory = _ => d.BatchSize };
        var seed = Options.Seed(d.Seed);
        var probesPerChunk = Options.ProbesPerChunk(d.Probes.ExamplesPerChunk);
        var budgetMb = Options.ResidentMb(1024);
        var dataSource = new Option<string>("--data-source") { Description = $"probes | selfstudy: each document's teacher data, document probes or self-study conversations (the synthesizer run on the document alone; trained {CasSelfStudyOptions.DefaultEpochs.ToString(CultureInfo.InvariantCulture)} epochs unless --steps or --epochs say otherwise).", DefaultValueFactory = _ => "probes" };
        var perToken = new Option<double>("--conversations-per-token") { Description = $"With --data-source selfstudy: conversations per document token (at least {d.SelfStudy.MinConversations} per document).", DefaultValueFactory = _ => d.SelfStudy.ConversationsPerToken };
        var cmd = new Command("train", "Train one cartridge per document (CAS: distractor mixing, rotation through a resident budget); rerun to resume or to retrain stale documents.")
        {
            dataDir, name, compression, residentCount, rotateEvery, rotateFraction, pIso, maxDistractors, distractorGrads, storeDistractors, steps, epochs, lr, batch, seed, probesPerChunk, budgetMb, dataSource, perToken,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var options = d with
            {
                Compression = pr.GetValue(compression), Resident = pr.GetValue(residentCount), RotateEvery = pr.GetValue(rotateEvery),
                RotateFraction = pr.GetValue(rotateFraction), PIso = pr.GetValue(pIso), MaxDistractors = pr.GetValue(maxDistractors),
                DistractorGradients = OnOff(pr.GetValue(distractorGrads)!, "--distractor-grads"),
                StoreDistractors = OnOff(pr.GetValue(storeDistractors)!, "--store-distractors"),
                Steps = pr.GetValue(steps), Epochs = pr.GetValue(epochs), LearningRate = pr.GetValue(lr), BatchSize = pr.GetValue(batch), Seed = pr.GetValue(seed),
                Probes = d.Probes with { ExamplesPerChunk = pr.GetValue(probesPerChunk) },
                Data = DataSource(pr.GetValue(dataSource)!),
                SelfStudy = d.SelfStudy with { ConversationsPerToken = pr.GetValue(perToken) },
                ResidentBudgetBytes = checked(pr.GetValue(budgetMb) * (1L << 20)),
            };
            options.Validate();
            string dir = pr.GetValue(dataDir)!;
            using var catalog = new CollectionCatalog(dir);
            var info = catalog.Get(pr.GetValue(name)!);
            var (model, tok, _) = Cli.Load(info.ModelPath, info.TokenizerPath);
            using var store = new FasterCartridgeStore(dir);
            using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = Math.Max(1, options.ResidentBudgetBytes) });
            var trainer = new CasTrainer(model, tok, catalog, store, budget, dir);

            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            var last = DateTime.MinValue;
            var progress = new SyncProgress<CasJobEvent>(e =>
            {
                switch (e)
                {
                    case CasJobNote n: Console.Error.WriteLine(n.Text); break;
                    case CasJobRotated rot:
                        if (!Console.IsErrorRedirected) Console.Error.WriteLine();
                        Console.Error.WriteLine($"rotated at step {rot.Step}: out {string.Join(",", rot.Out)} in {string.Join(",", rot.In)}");
                        break;
                    case CasJobDataMade dm: Console.Error.WriteLine($"self-study data for {dm.DocumentId}: {dm.Conversations} conversations ({dm.Made} made now, {dm.Reused} reused)"); break;
                    case CasJobDocumentDone dd: Console.Error.WriteLine($"done {dd.CartridgeId} version={dd.Version} p={dd.CartridgeTokens} updates={dd.Updates}"); break;
                    case CasJobStep s when DateTime.UtcNow - last > TimeSpan.FromSeconds(Console.IsErrorRedirected ? 5 : 0.5) || s.DocumentsDone == s.Documents:
                        last = DateTime.UtcNow;
                        double frac = s.GoldTarget > 0 ? (double)s.GoldDone / s.GoldTarget : 0;
                        double eta = frac > 0 ? s.Elapsed.TotalSeconds * (1 - frac) / frac : 0;
                        string line = string.Create(CultureInfo.InvariantCulture,
                            $"[{Bar(frac)}] {frac * 100,5:F1}% step {s.Step} loss {s.Loss:F4} docs {s.DocumentsDone}/{s.Documents} resident {s.Resident} eta {eta:F0}s");
                        if (Console.IsErrorRedirected) Console.Error.WriteLine(line); else Console.Error.Write("\r" + line);
                        break;
                }
            });
            CasJobResult r;
            try { r = trainer.Run(info.Name, options, progress, cts.Token); }
            finally { Console.CancelKeyPress -= onCancel; if (!Console.IsErrorRedirected) Console.Error.WriteLine(); }
            var fresh = catalog.Status(info.Name, store).Count(s => s.State == CartridgeState.Fresh);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"collection={info.Name} job={(r.JobId?.ToString(CultureInfo.InvariantCulture) ?? "none")} resumed={(r.Resumed ? "yes" : "no")} documents={r.Documents} trained={r.Trained} fresh={fresh} " +
                $"steps={r.Steps} resumed_from_step={r.ResumedFromStep} peak_resident_cartridges={r.PeakResidentCartridges} peak_resident_bytes={r.PeakResidentBytes} resident_budget={r.ResidentBudget} " +
                $"distractors={r.DistractorUses} store_distractors={r.StoreDistractorUses} store_distractors_dropped={r.StoreDistractorsDropped} " +
                $"swap_ins={r.SwapInMs.Count} swap_in_p50_ms={r.SwapInPercentile(0.5):F2} swap_in_p95_ms={r.SwapInPercentile(0.95):F2} swap_in_p99_ms={r.SwapInPercentile(0.99):F2} wall_s={r.Elapsed.TotalSeconds:F1}"));
            return 0;
        }));
        return cmd;
    }

    static CasDataSource DataSource(string value) => value.ToLowerInvariant() switch
    {
        "probes" => CasDataSource.Probes, "selfstudy" or "self-study" => CasDataSource.SelfStudy,
        _ => throw new InvalidRequestException($"--data-source takes probes or selfstudy, not '{value}'."),
    };

    static bool OnOff(string value, string option) => value.ToLowerInvariant() switch
    {
        "on" => true, "off" => false,
        _ => throw new InvalidRequestException($"{option} takes on or off, not '{value}'."),
    };

    static string Bar(double f)
    {
        int n = (int)Math.Round(Math.Clamp(f, 0, 1) * 30);
        return new string('#', n) + new string('.', 30 - n);
    }
}
