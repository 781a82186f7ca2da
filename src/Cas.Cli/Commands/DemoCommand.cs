using System.CommandLine;
using System.Globalization;
using Cas.Demo;
using Cas.Engine;
using Cas.Jobs;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas demo`: a thin caller of <see cref="DemoRun"/>. Progress on stderr; on stdout one line per question and per
/// answer (key=value), a table comparing cas and rag, then key=value totals with the headline ratio last.
/// </summary>
static class DemoCommand
{
    public static Command Create()
    {
        var dataDir = Options.DataDir();
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var maxTokens = Options.MaxTokens(48);
        var cmd = new Command("demo", "End to end on a small collection: build it, train its cartridges (once; a rerun reuses them), start the gRPC service, " +
            "ask a few questions with cartridges and with RAG, print the answers and the token accounting, stop the service.")
            { dataDir, model, tokenizer, maxTokens };
        cmd.SetAction((pr, stop) => Task.FromResult(Cli.Run(() =>
        {
            string modelPath = Path.GetFullPath(Cli.ResolveModelPath(pr.GetValue(model)));
            string tokPath = Path.GetFullPath(Cli.ResolveTokenizerPath(modelPath, pr.GetValue(tokenizer)));
            var options = new DemoOptions
            {
                DataDir = pr.GetValue(dataDir)!, ModelPath = modelPath, TokenizerPath = tokPath, MaxTokens = pr.GetValue(maxTokens),
                DatasetsDir = Path.Combine(Cli.RepoRoot, "..", "shared", "datasets"),
                SamplePath = Path.Combine(Cli.RepoRoot, "eval", "demo", "stories.jsonl"),
            };
            var last = DateTime.MinValue;
            var progress = new SyncProgress<DemoEvent>(e =>
            {
                switch (e)
                {
                    case DemoNote n: Console.Error.WriteLine(n.Text); break;
                    case DemoTraining { Event: CasJobDocumentDone d }: Console.Error.WriteLine($"  cartridge {d.CartridgeId} version={d.Version} p={d.CartridgeTokens}"); break;
                    case DemoTraining { Event: CasJobDataProgress p } when p.Done == p.Total: Console.Error.WriteLine($"  teacher data for {p.DocumentId}: {p.Total} examples"); break;
                    case DemoTraining { Event: CasJobStep s } when DateTime.UtcNow - last > TimeSpan.FromSeconds(5) || s.DocumentsDone == s.Documents:
                        last = DateTime.UtcNow;
                        double frac = s.GoldTarget > 0 ? (double)s.GoldDone / s.GoldTarget : 0;
                        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                            $"  training: {frac * 100:F0}% step {s.Step} loss {s.Loss:F4} cartridges done {s.DocumentsDone}/{s.Documents} ({s.Elapsed.TotalSeconds:F0} s)"));
                        break;
                    case DemoAnswered { Answer: var a }:
                        if (a.Mode == "cas") Console.WriteLine($"question={a.QuestionIndex} gold={StoreCommand.Quote(a.GoldDocumentId)} text={Q(a.Question)}");
                        Console.WriteLine(Line(a));
                        break;
                }
            });
            var r = DemoRun.ExecuteAsync(options, progress, stop).GetAwaiter().GetResult();
            Print(r);
            return 0;
        })));
        return cmd;
    }

    static string Q(string s) => StoreCommand.Quote(s.Replace("\\", "\\\\").Replace("\n", "\\n"));
    static string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);

    static string Line(DemoAnswer a) =>
        $"answer question={a.QuestionIndex} mode={a.Mode} finish={a.FinishReason} documents={string.Join(",", a.Documents.Select(StoreCommand.Quote))} gold_used={(a.GoldUsed ? "yes" : "no")} " +
        $"prompt_tokens={a.PromptTokens} cartridge_slots={a.CartridgeSlots} completion_tokens={a.CompletionTokens} kv_bytes_attended={a.KvBytesAttended} " +
        $"retrieve_ms={F(a.RetrieveMs)} load_ms={F(a.LoadMs)} prefill_ms={F(a.PrefillMs)} decode_ms={F(a.DecodeMs)} total_ms={F(a.TotalMs)} client_ms={F(a.ClientMs)} text={Q(a.Text)}";

    static void Print(DemoResult r)
    {
        Console.WriteLine();
        Console.WriteLine("mode  answers  gold_used  prompt_tokens  cartridge_slots  kv_slots_attended  prefill_ms  decode_ms  total_ms   (means per answer)");
        foreach (var mode in new[] { "cas", "rag" })
        {
            int n = r.Answers.Count(a => a.Mode == mode);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{mode,-4}  {n,7}  {r.GoldUsed(mode) + "/" + n,9}  {r.Mean(mode, a => a.PromptTokens),13:F1}  {r.Mean(mode, a => a.CartridgeSlots),15:F1}  " +
                $"{r.Mean(mode, Slots),17:F1}  {r.Mean(mode, a => a.PrefillMs),10:F1}  {r.Mean(mode, a => a.DecodeMs),9:F1}  {r.Mean(mode, a => a.TotalMs),8:F1}"));
        }
        Console.WriteLine();
        var t = r.Training;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"collection={r.Collection} source={r.Source} documents={r.Documents} added={r.DocumentsAdded} fresh={r.DocumentsFresh} cartridge_slots_total={r.CartridgeSlotsTotal} " +
            $"trained={(r.Trained ? "yes" : "no")} trained_cartridges={t.Trained} training_steps={t.Steps} peak_resident_bytes={t.PeakResidentBytes} resident_budget={t.ResidentBudget}"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"build_s={r.BuildTime.TotalSeconds:F1} train_s={r.TrainTime.TotalSeconds:F1} serve_start_s={r.ServeStartTime.TotalSeconds:F1} ask_s={r.AskTime.TotalSeconds:F1} wall_s={r.Total.TotalSeconds:F1}"));
        double cas = r.Mean("cas", a => a.PromptTokens), rag = r.Mean("rag", a => a.PromptTokens);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kv_slots_ratio_rag_over_cas={r.Mean("rag", Slots) / r.Mean("cas", Slots):F2}"));
        // Headline: text tokens the model must prefill per question (RAG pastes chunks; CAS prefills only the question).
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"prompt_tokens_ratio_rag_over_cas={rag / cas:F2}"));
    }

    /// <summary>KV slots the answer's last token attends to: cartridge slots + prompt + completion.</summary>
    static double Slots(DemoAnswer a) => a.CartridgeSlots + a.PromptTokens + a.CompletionTokens;
}
