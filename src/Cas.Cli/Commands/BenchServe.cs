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
/// Both parts measure the two modes in rounds A B B A after a warm-up: measured first, a mode would pay for code not yet
/// compiled at full tier (on stories260K that made the first mode's decode step 7× slower than the second's).
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

            // Warm-up (JIT, first swap-ins) of both paths, not reported; then rounds A B B A of seconds/2 each, so a
            // drift of the machine's load (or code still being tiered up) weighs on both modes alike.
            await Phase(null, channel, clients, 1, maxTokens, host, icl: false);
            await Phase(null, channel, clients, 1, maxTokens, host, icl: true);
            var cas = new Tally(5); var icl = new Tally(5);
            foreach (bool iclRound in new[] { false, true, true, false })
                await Phase(iclRound ? icl : cas, channel, clients, seconds / 2, maxTokens, host, iclRound);
            var metrics = server.State.Budget.Metrics();
            foreach (var (name, t) in new[] { ("cas", cas), ("icl", icl) })
                Console.WriteLine($"{t.Line(name, "retrieve/load/queued/prefill/decode")} " +
                    $"resident_bytes={metrics.ResidentBytes} peak_resident_bytes={metrics.PeakResidentBytes} resident_budget={metrics.ResidentBudget}");
            Console.WriteLine($"loopback_cas_over_icl_throughput={(cas.AnswersPerSecond / icl.AnswersPerSecond).ToString("F2", CultureInfo.InvariantCulture)}");
            return 0;
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    /// <summary>What the rounds of one mode measured, summed over its rounds.</summary>
    sealed class Tally(int splitParts)
    {
        public readonly List<double> Latencies = [];
        public readonly double[] Split = new double[splitParts]; // ms summed over answers, per part of the latency split
        public double Seconds;
        public long Tokens, Steps, Rows, MaxBatch, PeakKvBytes;
        public int Errors;
        public double AnswersPerSecond => Latencies.Count / Math.Max(Seconds, 1e-9);

        public void Answered(double ms, long tokens, params double[] split)
        {
            lock (this) { Latencies.Add(ms); Tokens += tokens; for (int i = 0; i < split.Length; i++) Split[i] += split[i]; }
        }

        public void Steps_(long steps, long rows, long maxBatch) { Steps += steps; Rows += rows; MaxBatch = Math.Max(MaxBatch, maxBatch); }

        public string Line(string name, string splitNames)
        {
            var l = Latencies.ToArray();
            Array.Sort(l);
            double P(double q) => l.Length == 0 ? double.NaN : l[Math.Min(l.Length - 1, (int)(q * l.Length))];
            return $"{name}_answers={l.Length} {name}_answers_per_s={AnswersPerSecond.ToString("F2", CultureInfo.InvariantCulture)} {name}_tokens_per_s={I(Tokens / Math.Max(Seconds, 1e-9))} " +
                $"{name}_p50_ms={I(P(0.5))} {name}_p99_ms={I(P(0.99))} {name}_mean_batch={I(Rows / (double)Math.Max(1, Steps))} {name}_max_batch={MaxBatch} errors={Errors} " +
                $"{name}_mean_ms_{splitNames}={string.Join('/', Split.Select(v => I(v / Math.Max(1, l.Length))))}";
        }
    }

    /// <summary>C gRPC clients ask for <paramref name="seconds"/>; what they measured goes into <paramref name="into"/> (null: warm-up).</summary>
    static async Task Phase(Tally? into, GrpcChannel channel, int clients, double seconds, int maxTokens, ModelHost host, bool icl)
    {
        var t = into ?? new Tally(5);
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
                var clock = Stopwatch.StartNew();
                try
                {
                    using var call = icl ? query.AskIcl(request) : query.Ask(request);
                    AskResult? result = null;
                    await foreach (var m in call.ResponseStream.ReadAllAsync())
                        if (m.KindCase == AskResponse.KindOneofCase.Result) result = m.Result;
                    var l = result!.Latency;
                    t.Answered(clock.Elapsed.TotalMilliseconds, result.Tokens.CompletionTokens, l.RetrieveMs, l.LoadMs, l.QueuedMs, l.PrefillMs, l.DecodeMs);
                }
                catch (RpcException) { Interlocked.Increment(ref t.Errors); }
            }
        }
        await Task.WhenAll(Enumerable.Range(0, clients).Select(Client));
        t.Seconds += stop.Elapsed.TotalSeconds;
        var (steps1, rows1, maxBatch) = host.Scheduler.Stats;
        t.Steps_(steps1 - steps0, rows1 - rows0, maxBatch);
    }

    // ---- The equal-KV-budget comparison (SmolLM2-135M shape)

    const int QuestionTokens = 16, ComparedDocuments = 8, MinAnswers = 2;

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

        DecodeRequest CasRequest(Random r) => new([cartridges[r.Next(ComparedDocuments)]], Tokens(QuestionTokens)) { MaxTokens = maxTokens };
        DecodeRequest IclRequest(Random r) => new([], [.. documents[r.Next(ComparedDocuments)], .. Tokens(QuestionTokens)]) { MaxTokens = maxTokens };

        // Warm-up, not counted: every kernel both modes use (prefill with and without cartridges, decode over parts and
        // own slots) runs often enough to be compiled at full tier. Then rounds A B B A of seconds/2 each.
        using (var warm = new DecodeScheduler(new Transformer(model), maxBatch: 4))
            await Task.WhenAll(
                warm.Submit(new DecodeRequest([cartridges[0]], Tokens(QuestionTokens)) { MaxTokens = 48 }, null, CancellationToken.None),
                warm.Submit(new DecodeRequest([], Tokens(Math.Min(docTokens, 300))) { MaxTokens = 48 }, null, CancellationToken.None));
        var cas = new Tally(3); var icl = new Tally(3);
        foreach (bool iclRound in new[] { false, true, true, false })
            if (iclRound) await ComparePhase(icl, model, clients, seconds / 2, budget, 0, IclRequest);
            else await ComparePhase(cas, model, clients, seconds / 2, budget - residentCartridges, residentCartridges, CasRequest);
        foreach (var (name, t) in new[] { ("cas", cas), ("icl", icl) })
            Console.WriteLine($"{t.Line(name, "queued/prefill/decode")} {name}_peak_kv_bytes={t.PeakKvBytes} kv_budget_bytes={budget} {name}_within_budget={(t.PeakKvBytes <= budget ? "yes" : "no")}");
        Console.WriteLine($"cas_over_icl_throughput={(cas.AnswersPerSecond / icl.AnswersPerSecond).ToString("F2", CultureInfo.InvariantCulture)}");
        return 0;
    }

    /// <summary>
    /// C clients submit to one scheduler (each waits for its answer, then asks again) for <paramref name="seconds"/>, or
    /// longer until <see cref="MinAnswers"/> answers are in (so a slow round still has a figure); then the sequences in
    /// flight are cancelled and not counted: answers/s = answers completed / time the rounds ran.
    /// </summary>
    static async Task ComparePhase(Tally t, Model model, int clients, double seconds, long sequenceBudget, long resident, Func<Random, DecodeRequest> next)
    {
        using var scheduler = new DecodeScheduler(new Transformer(model), maxBatch: Math.Max(clients, 1), maxCacheBytes: sequenceBudget);
        var stop = Stopwatch.StartNew();
        using var end = new CancellationTokenSource();
        int done = 0, seed = t.Latencies.Count;
        async Task Client(int c)
        {
            var rng = new Random(1000 * seed + c);
            while (!end.IsCancellationRequested)
            {
                var clock = Stopwatch.StartNew();
                try
                {
                    var r = await scheduler.Submit(next(rng), null, end.Token).ConfigureAwait(false);
                    if (end.IsCancellationRequested) break;   // finished in the step the round ended: not counted
                    t.Answered(clock.Elapsed.TotalMilliseconds, r.Tokens.Length, r.QueuedMs, r.PrefillMs, r.DecodeMs);
                    Interlocked.Increment(ref done);
                }
                catch (OperationCanceledException) when (end.IsCancellationRequested) { break; }
                catch (Exception e) when (e is InvalidRequestException or OperationCanceledException) { Interlocked.Increment(ref t.Errors); }
            }
        }
        var running = Enumerable.Range(0, clients).Select(c => Task.Run(() => Client(c))).ToArray();
        while (stop.Elapsed.TotalSeconds < seconds || (Volatile.Read(ref done) < MinAnswers && Volatile.Read(ref t.Errors) == 0)) await Task.Delay(20);
        lock (t) { end.Cancel(); t.Seconds += stop.Elapsed.TotalSeconds; }
        await Task.WhenAll(running);
        var (steps, rows, maxBatch) = scheduler.Stats;
        t.Steps_(steps, rows, maxBatch);
        t.PeakKvBytes = Math.Max(t.PeakKvBytes, resident + scheduler.CacheBytes.Peak);
    }
}
