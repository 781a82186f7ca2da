using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Service;
using Cas.Service.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas bench serve`, two parts:
/// <list type="number">
/// <item>Load: an in-process server on loopback with stories260K, a collection of small documents with first-k
///   cartridges, and C concurrent gRPC clients asking for a fixed time, first with cartridges (Ask) and then with the
///   documents in context (AskIcl), at the same resident budget: answers/s, p50/p99, errors, resident bytes.</item>
/// <item>The paper's comparison: at an equal KV-memory budget, answers/s with cartridges against answers/s with the
///   documents in context, on the SmolLM2-135M shape (random weights of its real config), documents long enough that
///   ICL fills much of the context. Both run on the service's <see cref="DecodeScheduler"/> (continuous batching, the
///   same KV budget counted in bytes): with cartridges the budget holds the resident cartridges once (every sequence
///   references them) plus each sequence's question and answer slots; with ICL each sequence holds its document's
///   K/V, so fewer sequences fit a step. Headline: <c>cas_over_icl_throughput</c>.</item>
/// </list>
/// </summary>
static class BenchServe
{
    static string I(double v) => v.ToString("F1", CultureInfo.InvariantCulture);

    public static Command Create()
    {
        var clients = new Option<int>("--clients") { Description = "Concurrent gRPC clients.", DefaultValueFactory = _ => 32 };
        var seconds = new Option<double>("--seconds") { Description = "How long each phase runs.", DefaultValueFactory = _ => 10 };
        var maxTokens = Options.MaxTokens(16);
        var config = Options.Config();
        var docTokens = new Option<int>("--doc-tokens") { Description = "Tokens per document in the equal-KV-budget comparison (what ICL puts in context).", DefaultValueFactory = _ => 1536 };
        var slots = new Option<int>("--cartridge-slots") { Description = "KV slots per document's cartridge in the equal-KV-budget comparison.", DefaultValueFactory = _ => 128 };
        var context = new Option<int>("--context") { Description = "Context length (positions) of the comparison's model.", DefaultValueFactory = _ => 2048 };
        var budget = new Option<long>("--kv-budget-mb") { Description = "KV-memory budget of the comparison, MiB: resident cartridges + the sequences' own caches (cartridges) or the sequences' caches (ICL).", DefaultValueFactory = _ => 256 };
        var cmd = new Command("serve", "Load test of the gRPC service on loopback (answers/s, p50/p99 latency, errors, resident bytes), then cartridges vs documents in context at an equal KV budget on the SmolLM2-135M shape.")
            { clients, seconds, maxTokens, config, docTokens, slots, context, budget };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            int rc = Run(pr.GetValue(clients), pr.GetValue(seconds), pr.GetValue(maxTokens)).GetAwaiter().GetResult();
            if (rc != 0) return rc;
            return Compare(pr.GetValue(config) ?? DefaultConfig, pr.GetValue(clients), pr.GetValue(seconds), pr.GetValue(maxTokens),
                pr.GetValue(docTokens), pr.GetValue(slots), pr.GetValue(context), pr.GetValue(budget) << 20).GetAwaiter().GetResult();
        }));
        return cmd;
    }

    static string DefaultConfig => Path.Combine(Cli.RepoRoot, "..", "shared", "models", "smollm2-135m-instruct-tokenizer");

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
            Console.WriteLine($"loopback_cas_over_icl_throughput={(cas / icl).ToString("F2", CultureInfo.InvariantCulture)}");
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

    // ---- The equal-KV-budget comparison (SmolLM2-135M shape)

    const int QuestionTokens = 16, ComparedDocuments = 8, MinAnswers = 4;

    static async Task<int> Compare(string configPath, int clients, double seconds, int maxTokens, int docTokens, int slots, int context, long budget)
    {
        if (docTokens < 1 || slots < 1 || maxTokens < 1) throw new InvalidRequestException("--doc-tokens, --cartridge-slots and --max-tokens must be ≥ 1.");
        var cfg = HfModelLoader.ReadConfig(configPath);
        if (context > cfg.MaxSeqLen) throw new InvalidRequestException($"--context {context} exceeds the model's {cfg.MaxSeqLen} positions.");
        cfg = cfg with { MaxSeqLen = context };
        if (docTokens + QuestionTokens + maxTokens > context)
            throw new InvalidRequestException($"a document of {docTokens} tokens + a {QuestionTokens}-token question + {maxTokens} answer tokens do not fit --context {context}; shorten --doc-tokens.");
        var model = RandomWeights.Create(cfg, seed: 7);
        long perPosition = 2L * cfg.Layers * cfg.KvHeads * cfg.HeadDim * sizeof(float);
        var rng = new Random(11);
        int[] Tokens(int n) { var a = new int[n]; for (int i = 0; i < n; i++) a[i] = rng.Next(cfg.VocabSize); return a; }
        var documents = Enumerable.Range(0, ComparedDocuments).Select(_ => Tokens(docTokens)).ToArray();
        // The cartridges' values do not change what a step costs; random K/V of the documents' cartridge size.
        var cartridges = Enumerable.Range(0, ComparedDocuments).Select(_ =>
        {
            var p = KvPrefix.Zeros(cfg, slots);
            for (int l = 0; l < cfg.Layers; l++)
                for (int i = 0; i < p.Keys[l].Length; i++) { p.Keys[l][i] = (float)(rng.NextDouble() * 2 - 1); p.Values[l][i] = (float)(rng.NextDouble() * 2 - 1); }
            return p;
        }).ToArray();
        long residentCartridges = ComparedDocuments * (long)slots * perPosition;
        long casSequence = perPosition * (QuestionTokens + maxTokens), iclSequence = perPosition * (docTokens + QuestionTokens + maxTokens);
        if (residentCartridges + casSequence > budget || iclSequence > budget)
            throw new InvalidRequestException($"--kv-budget-mb {budget >> 20} holds neither the {ComparedDocuments} cartridges ({residentCartridges >> 20} MiB) with one question nor one ICL sequence ({iclSequence >> 20} MiB); raise it.");
        Console.WriteLine($"compare_model=SmolLM2-135M-shape(random weights, {Path.GetFileName(Path.GetFullPath(configPath))}) layers={cfg.Layers} kv_heads={cfg.KvHeads} head_dim={cfg.HeadDim} context={context} " +
            $"documents={ComparedDocuments} doc_tokens={docTokens} cartridge_slots={slots} question_tokens={QuestionTokens} max_tokens={maxTokens} clients={clients} seconds={I(seconds)} " +
            $"kv_budget_bytes={budget} kv_bytes_per_position={perPosition} cartridges_resident_bytes={residentCartridges} " +
            $"cas_sequences_fit={Math.Min(clients, (budget - residentCartridges) / casSequence)} icl_sequences_fit={Math.Min(clients, budget / iclSequence)}");

        double cas = await ComparePhase("cas", model, clients, seconds, maxTokens, budget - residentCartridges, residentCartridges, budget,
            r => new DecodeRequest([cartridges[r.Next(ComparedDocuments)]], Tokens(QuestionTokens)) { MaxTokens = maxTokens });
        double icl = await ComparePhase("icl", model, clients, seconds, maxTokens, budget, 0, budget,
            r => new DecodeRequest([], [.. documents[r.Next(ComparedDocuments)], .. Tokens(QuestionTokens)]) { MaxTokens = maxTokens });
        Console.WriteLine($"cas_over_icl_throughput={(cas / icl).ToString("F2", CultureInfo.InvariantCulture)}");
        return 0;
    }

    /// <summary>
    /// C clients submit to one scheduler (each waits for its answer, then asks again) for <paramref name="seconds"/>, or
    /// longer until <see cref="MinAnswers"/> answers are in (so a slow phase still has a figure); then the sequences in
    /// flight are cancelled and not counted: answers/s = answers completed / time the phase ran.
    /// </summary>
    static async Task<double> ComparePhase(string name, Model model, int clients, double seconds, int maxTokens, long sequenceBudget, long resident, long budget,
        Func<Random, DecodeRequest> next)
    {
        using var scheduler = new DecodeScheduler(new Transformer(model), maxBatch: Math.Max(clients, 1), maxCacheBytes: sequenceBudget);
        await scheduler.Submit(new DecodeRequest([], [1, 2, 3]) { MaxTokens = 2 }, null, CancellationToken.None).ConfigureAwait(false); // JIT, not counted
        var (steps0, rows0, _) = scheduler.Stats;
        var latencies = new List<double>();
        var split = new double[3]; // queued, prefill, decode (ms, summed)
        int errors = 0;
        long tokens = 0;
        var stop = Stopwatch.StartNew();
        using var end = new CancellationTokenSource();
        int done = 0;
        async Task Client(int c)
        {
            var rng = new Random(1000 + c);
            while (!end.IsCancellationRequested)
            {
                var t = Stopwatch.StartNew();
                try
                {
                    var r = await scheduler.Submit(next(rng), null, end.Token).ConfigureAwait(false);
                    if (end.IsCancellationRequested) break;   // finished in the same step the phase ended: not counted
                    Interlocked.Add(ref tokens, r.Tokens.Length);
                    lock (latencies) { latencies.Add(t.Elapsed.TotalMilliseconds); split[0] += r.QueuedMs; split[1] += r.PrefillMs; split[2] += r.DecodeMs; }
                    Interlocked.Increment(ref done);
                }
                catch (OperationCanceledException) when (end.IsCancellationRequested) { break; }
                catch (Exception e) when (e is InvalidRequestException or OperationCanceledException) { Interlocked.Increment(ref errors); }
            }
        }
        var running = Enumerable.Range(0, clients).Select(c => Task.Run(() => Client(c))).ToArray();
        while (stop.Elapsed.TotalSeconds < seconds || (Volatile.Read(ref done) < MinAnswers && Volatile.Read(ref errors) == 0)) await Task.Delay(20);
        double elapsed;
        lock (latencies) { end.Cancel(); elapsed = stop.Elapsed.TotalSeconds; }
        await Task.WhenAll(running);
        latencies.Sort();
        double P(double q) => latencies.Count == 0 ? double.NaN : latencies[Math.Min(latencies.Count - 1, (int)(q * latencies.Count))];
        var (steps1, rows1, maxBatch) = scheduler.Stats;
        long steps = steps1 - steps0, rows = rows1 - rows0;
        long peak = resident + scheduler.CacheBytes.Peak;
        double answers = latencies.Count / elapsed;
        Console.WriteLine($"{name}_answers={latencies.Count} {name}_answers_per_s={answers.ToString("F2", CultureInfo.InvariantCulture)} {name}_tokens_per_s={I(tokens / elapsed)} " +
            $"{name}_p50_ms={I(P(0.5))} {name}_p99_ms={I(P(0.99))} {name}_mean_batch={I(rows / (double)Math.Max(1, steps))} {name}_max_batch={maxBatch} errors={errors} " +
            $"{name}_mean_ms_queued/prefill/decode={string.Join('/', split.Select(v => I(v / Math.Max(1, latencies.Count))))} " +
            $"{name}_peak_kv_bytes={peak} kv_budget_bytes={budget} {name}_within_budget={(peak <= budget ? "yes" : "no")}");
        return answers;
    }
}
