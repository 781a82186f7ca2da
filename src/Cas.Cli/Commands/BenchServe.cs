using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Service;
using Cas.Service.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas bench serve`: an in-process server on loopback with stories260K, a collection of small documents with first-k
/// cartridges, and C concurrent gRPC clients asking for a fixed time, first with cartridges (Ask) and then with the
/// documents in context (AskIcl), at the same resident budget. Not yet: the SmolLM2-135M shape at an equal KV budget.
/// </summary>
static class BenchServe
{
    static string I(double v) => v.ToString("F1", CultureInfo.InvariantCulture);

    public static Command Create()
    {
        var clients = new Option<int>("--clients") { Description = "Concurrent gRPC clients.", DefaultValueFactory = _ => 32 };
        var seconds = new Option<double>("--seconds") { Description = "How long each phase runs.", DefaultValueFactory = _ => 10 };
        var maxTokens = Options.MaxTokens(16);
        var cmd = new Command("serve", "Load test of the gRPC service on loopback: answers/s, p50/p99 latency, errors, resident bytes; cartridges vs ICL.")
            { clients, seconds, maxTokens };
        cmd.SetAction(pr => Cli.Run(() => Run(pr.GetValue(clients), pr.GetValue(seconds), pr.GetValue(maxTokens)).GetAwaiter().GetResult()));
        return cmd;
    }

    static readonly string[] Subjects = ["cat", "ship", "moon", "tree", "bird", "dog", "cake", "rain"];

    static async Task<int> Run(int clients, double seconds, int maxTokens)
    {
        if (clients < 1 || seconds <= 0) throw new InvalidRequestException("--clients must be ≥ 1 and --seconds > 0.");
        string model = Cli.ResolveModelPath(null), tokenizer = Cli.ResolveTokenizerPath(model, null);
        var dir = Directory.CreateTempSubdirectory("cas-bench-serve-").FullName;
        try
        {
            long budget = 256L << 20;
            await using var server = await CasServer.StartAsync(new CasServerOptions
            {
                DataDir = dir, Port = 0, ModelPath = Path.GetFullPath(model), TokenizerPath = Path.GetFullPath(tokenizer), ResidentBytes = budget,
                LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
            });
            using var channel = GrpcChannel.ForAddress(server.Address);
            var host = server.State.Model(model, tokenizer);
            await new CollectionService.CollectionServiceClient(channel).CreateCollectionAsync(new CreateCollectionRequest { Name = "bench" });
            using (var add = new CollectionService.CollectionServiceClient(channel).AddDocuments())
            {
                var m = new AddDocumentsRequest { Collection = "bench" };
                foreach (var s in Subjects)
                    m.Documents.Add(new DocumentUpload { Id = s, Text = $"Once upon a time there was a little {s}. The {s} was happy and liked to play in the sun. One day the {s} met a friend and they played all day." });
                await add.RequestStream.WriteAsync(m);
                await add.RequestStream.CompleteAsync();
                await add;
            }
            foreach (var s in Subjects)
            {
                var text = server.State.Catalog.DocumentText("bench", s);
                var ids = Prompting.Encode(host.Tokenizer, text, addStart: true);
                var doc = server.State.Catalog.GetDocument("bench", s);
                server.State.Store.Put(doc.CartridgeId, Cartridge.ForModel(host.Model, CartridgeInit.FirstK(host.Model, ids, 32), CartridgeInitKind.FirstK),
                    Cas.Collections.CollectionCatalog.CartridgeLabels(doc));
            }
            Console.WriteLine($"model=stories260K clients={clients} seconds={I(seconds)} max_tokens={maxTokens} documents={Subjects.Length} cartridge_slots=32 resident_budget={budget}");

            // Warm-up (JIT, first swap-ins) of both paths, not reported.
            await Phase(null, channel, clients, 1, maxTokens, server, host, icl: false);
            await Phase(null, channel, clients, 1, maxTokens, server, host, icl: true);
            double cas = await Phase("cas", channel, clients, seconds, maxTokens, server, host, icl: false);
            double icl = await Phase("icl", channel, clients, seconds, maxTokens, server, host, icl: true);
            Console.WriteLine($"cas_over_icl_throughput={(cas / icl).ToString("F2", CultureInfo.InvariantCulture)}");
            return 0;
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    static async Task<double> Phase(string? name, GrpcChannel channel, int clients, double seconds, int maxTokens, CasServer server, ModelHost host, bool icl)
    {
        var latencies = new List<double>();
        int errors = 0;
        long tokens = 0;
        var split = new double[5]; // retrieve, load, queued, prefill, decode (ms, summed over answers)
        var (steps0, rows0, _) = host.Scheduler.Stats;
        var stop = Stopwatch.StartNew();
        var query = new QueryService.QueryServiceClient(channel);
        async Task Client(int c)
        {
            var rng = new Random(c);
            while (stop.Elapsed.TotalSeconds < seconds)
            {
                string s = Subjects[rng.Next(Subjects.Length)];
                var request = new AskRequest { Collection = "bench", Question = $"What did the {s} do?", MaxTokens = maxTokens, MaxCartridges = 1 };
                var t = Stopwatch.StartNew();
                try
                {
                    using var call = icl ? query.AskIcl(request) : query.Ask(request);
                    await foreach (var m in call.ResponseStream.ReadAllAsync())
                        if (m.KindCase == AskResponse.KindOneofCase.Result)
                        {
                            Interlocked.Add(ref tokens, m.Result.Tokens.CompletionTokens);
                            var l = m.Result.Latency;
                            lock (split) { split[0] += l.RetrieveMs; split[1] += l.LoadMs; split[2] += l.QueuedMs; split[3] += l.PrefillMs; split[4] += l.DecodeMs; }
                        }
                    lock (latencies) latencies.Add(t.Elapsed.TotalMilliseconds);
                }
                catch (RpcException) { Interlocked.Increment(ref errors); }
            }
        }
        await Task.WhenAll(Enumerable.Range(0, clients).Select(Client));
        double elapsed = stop.Elapsed.TotalSeconds;
        latencies.Sort();
        double P(double q) => latencies.Count == 0 ? double.NaN : latencies[Math.Min(latencies.Count - 1, (int)(q * latencies.Count))];
        var (steps1, rows1, maxBatch) = host.Scheduler.Stats;
        var metrics = server.State.Budget.Metrics();
        double answers = latencies.Count / elapsed;
        if (name == null) return answers;
        Console.WriteLine($"{name}_answers={latencies.Count} {name}_answers_per_s={I(answers)} {name}_tokens_per_s={I(tokens / elapsed)} {name}_p50_ms={I(P(0.5))} {name}_p99_ms={I(P(0.99))} " +
            $"{name}_mean_batch={I((rows1 - rows0) / (double)Math.Max(1, steps1 - steps0))} max_batch={maxBatch} errors={errors} " +
            $"{name}_mean_ms_retrieve/load/queued/prefill/decode={string.Join('/', split.Select(v => I(v / Math.Max(1, latencies.Count))))} " +
            $"resident_bytes={metrics.ResidentBytes} peak_resident_bytes={metrics.PeakResidentBytes} resident_budget={metrics.ResidentBudget}");
        return answers;
    }
}
