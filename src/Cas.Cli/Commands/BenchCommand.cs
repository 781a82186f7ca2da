using System.CommandLine;
using System.Diagnostics;
using Cas.Engine;
using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Cli.Commands;

/// <summary>`cas bench …`: speed and memory figures as key=value lines, the headline figure last.</summary>
static class BenchCommand
{
    public static Command Create()
    {
        var bench = new Command("bench", "Benchmarks that print key=value figures (headline last).");
        bench.Subcommands.Add(Engine());
        bench.Subcommands.Add(Train());
        bench.Subcommands.Add(BenchSynth.Create());
        bench.Subcommands.Add(BenchTokenize.Create());
        bench.Subcommands.Add(BenchStore.Create());
        bench.Subcommands.Add(BenchPeers.Create());
        bench.Subcommands.Add(BenchServe.Create());
        return bench;
    }

    static string DefaultConfig => Path.Combine(Cli.RepoRoot, "..", "shared", "models", "smollm2-135m-instruct-tokenizer");

    static Command Engine()
    {
        var config = Options.Config();
        var prefill = new Option<int>("--prefill-tokens") { Description = "Tokens in the timed prefill.", DefaultValueFactory = _ => 512 };
        var steps = new Option<int>("--decode-steps") { Description = "Tokens decoded per timed decode run.", DefaultValueFactory = _ => 32 };
        var contexts = new Option<string>("--contexts") { Description = "Comma-separated context lengths (tokens already in the KV cache) at which decode is timed; shorten to e.g. 16,512 for a quick run.", DefaultValueFactory = _ => "16,512,4096" };
        var batches = new Option<string>("--batches") { Description = "Comma-separated decode batch sizes.", DefaultValueFactory = _ => "1,16" };
        var weights = new Option<string>("--weights") { Description = "Precision the weight matrices are held in: fp32, bf16 or fp16 (16-bit: widened inside the kernels).", DefaultValueFactory = _ => "fp32" };
        var cmd = new Command("engine", "SGEMM peak, prefill and decode speed (wall and CPU time), peak memory on a random-weight model.") { config, prefill, steps, contexts, batches, weights };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var cfg = HfModelLoader.ReadConfig(pr.GetValue(config) ?? DefaultConfig);
            int T = pr.GetValue(prefill), decodeSteps = pr.GetValue(steps);
            Console.WriteLine($"blas_large={Blas.LargeBackend}");
            Console.WriteLine($"blas_small={Blas.SmallBackend}");
            Console.WriteLine($"threads={Environment.ProcessorCount}");
            double peak = SgemmPeak();
            Console.WriteLine($"sgemm_peak_gflops={peak:F1}");

            var precision = pr.GetValue(weights) switch
            {
                "fp32" => WeightPrecision.Float32, "bf16" => WeightPrecision.BFloat16, "fp16" => WeightPrecision.Float16,
                var w => throw new Cas.Engine.InvalidRequestException($"--weights takes fp32, bf16 or fp16, got '{w}'."),
            };
            var model = RandomWeights.Create(cfg, seed: 7);
            if (precision != WeightPrecision.Float32) model = new Model(cfg, model.Weights.ToPrecision(precision), model.Source);
            GC.Collect();
            Console.WriteLine($"weights={pr.GetValue(weights)}");
            Console.WriteLine($"weight_matrix_mb={model.Weights.MatrixBytes / (1024.0 * 1024):F0}");
            var t = new Transformer(model, maxChunkTokens: Math.Max(T, 16));
            var rng = new Random(3);
            int[] Prompt(int n) { var a = new int[n]; for (int i = 0; i < n; i++) a[i] = rng.Next(cfg.VocabSize); return a; }

            // Prefill: one sequence of T tokens, logits for the last one (as generation does).
            var logits = new float[16 * cfg.VocabSize];
            var prompt = Prompt(T);
            double best = double.MaxValue, bestCpu = double.MaxValue;
            for (int rep = 0; rep < 3; rep++)
            {
                var cache = new KvCache(cfg, T + 1);
                var clock = Clock.Start();
                t.Forward([cache], [prompt], logits);
                best = Math.Min(best, clock.WallSeconds); bestCpu = Math.Min(bestCpu, clock.CpuSeconds);
            }
            double flops = PrefillFlops(cfg, T);
            double prefillGflops = flops / best / 1e9;
            Console.WriteLine($"prefill_tokens={T}");
            Console.WriteLine($"prefill_s={best:F3}");
            Console.WriteLine($"prefill_cpu_s={bestCpu:F3}");
            Console.WriteLine($"prefill_tok_s={T / best:F1}");
            Console.WriteLine($"prefill_tok_per_cpu_s={T / bestCpu:F1}");
            Console.WriteLine($"prefill_gflops={prefillGflops:F1}");

            // Warm-up: one untimed decode run, so the first timed one does not pay for JIT tiering (it ran ~25% slow).
            var contextList = ParseList(pr.GetValue(contexts)!, "--contexts");
            Decode(t, cfg, 1, contextList[0], decodeSteps, Prompt, logits);

            bool profiled = false;
            foreach (int ctx in contextList)
            {
                foreach (int batch in ParseList(pr.GetValue(batches)!, "--batches"))
                {
                    bool profile = batch == 1 && !profiled;
                    if (profile) t.Timer = new PhaseTimer();
                    var (tokS, tokCpu) = Decode(t, cfg, batch, ctx, decodeSteps, Prompt, logits);
                    if (profile)
                    {
                        // Wall time per decoded token by phase (batch 1, first context): where the bound is lost.
                        for (int ph = 0; ph < (int)DecoderPhase.Loss; ph++)
                            Console.WriteLine($"decode_b1_ms_per_token_{((DecoderPhase)ph).ToString().ToLowerInvariant()}={t.Timer!.Seconds[ph] * 1000 / decodeSteps:F2}");
                        t.Timer = null;
                        profiled = true;
                    }
                    Console.WriteLine($"decode_tok_s_b{batch}_ctx{ctx}={tokS:F1}");
                    Console.WriteLine($"decode_tok_per_cpu_s_b{batch}_ctx{ctx}={tokCpu:F1}");
                }
                Console.WriteLine($"rss_mb_after_ctx{ctx}={Process.GetCurrentProcess().WorkingSet64 / (1024.0 * 1024):F0}");
                GC.Collect();
            }

            // Batch-1 decode must read every weight once per token: the machine's read bandwidth over the weight bytes
            // is its ceiling (at the shortest context, where attention reads little). That bandwidth drifts by ±20%
            // with the neighbours on a shared host, so each round reads it right before a decode run and the fraction
            // is the median of the rounds' own ratios: a fast moment of the probe and a slow one of the decode (or the
            // reverse) cannot pair up.
            double weightBytes = WeightBytes(model);
            int boundContext = contextList.Min();
            var rounds = BoundRounds(t, cfg, boundContext, decodeSteps, Prompt, logits, weightBytes, count: 5);
            Console.WriteLine($"decode_weight_bytes={weightBytes:F0}");
            Console.WriteLine($"bound_rounds={rounds.Count}");
            Console.WriteLine($"bound_context={boundContext}");
            Console.WriteLine($"memory_read_gb_s_median={Statistics.Median(rounds.Select(r => r.Bandwidth)):F1}");
            Console.WriteLine($"decode_tok_s_b1_median={Statistics.Median(rounds.Select(r => r.TokS)):F1}");
            Console.WriteLine($"decode_weight_read_gb_s_b1_median={Statistics.Median(rounds.Select(r => weightBytes * r.TokS / 1e9)):F1}");
            Console.WriteLine($"decode_b1_fraction_of_bound_min={rounds.Min(r => r.Fraction):F3}");
            Console.WriteLine($"decode_b1_fraction_of_bound_max={rounds.Max(r => r.Fraction):F3}");
            Console.WriteLine($"decode_b1_fraction_of_bound={Statistics.Median(rounds.Select(r => r.Fraction)):F3}");
            Console.WriteLine($"peak_rss_mb={Process.GetCurrentProcess().PeakWorkingSet64 / (1024.0 * 1024):F0}");
            Console.WriteLine($"prefill_fraction_of_peak={prefillGflops / peak:F3}");
            return 0;
        }));
        return cmd;
    }

    static Command Train()
    {
        var config = Options.Config();
        var p = Options.CartridgeTokens();
        var seqs = new Option<int>("--sequences") { Description = "Sequences per training step.", DefaultValueFactory = _ => 4 };
        var len = new Option<int>("--sequence-length") { Description = "Tokens per sequence.", DefaultValueFactory = _ => 256 };
        var topK = Options.TeacherTopK(20);
        var steps = Options.Steps();
        var cmd = new Command("train", "Time one distillation step (forward + backward to the cartridge) on a random-weight model (defaults: --tokens 512, --steps 3, the best step reported).") { config, p, seqs, len, topK, steps };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            string? cfgPath = pr.GetValue(config) ?? (Directory.Exists(DefaultConfig) ? DefaultConfig : null);
            var cfg = cfgPath != null ? HfModelLoader.ReadConfig(cfgPath) : Cas.Training.TrainingBenchmark.SmolLM2_135M;
            double peak = SgemmPeak();
            var r = Cas.Training.TrainingBenchmark.Run(cfg, pr.GetValue(p) ?? 512, pr.GetValue(seqs), pr.GetValue(len), pr.GetValue(topK), pr.GetValue(steps) ?? 3,
                log: m => Console.Error.WriteLine(m));
            Console.WriteLine($"model={r.Model}");
            Console.WriteLine($"blas={r.Blas}");
            Console.WriteLine($"cartridge_tokens={r.PrefixLength}");
            Console.WriteLine($"sequences={r.Sequences}x{r.SequenceLength}");
            Console.WriteLine($"top_k={r.TopK}");
            Console.WriteLine($"sgemm_peak_gflops={peak:F1}");
            Console.WriteLine($"step_gflop={r.GFlopPerStep:F1}");
            Console.WriteLine($"step_gflops={r.GFlops:F1}");
            Console.WriteLine($"step_fraction_of_peak={r.GFlops / peak:F3}");
            Console.WriteLine($"median_step_s={r.MedianSecondsPerStep:F3}");
            Console.WriteLine($"trained_tok_s={r.TokensPerSecond:F1}");
            Console.WriteLine($"forward_only_s={r.ForwardSeconds:F3}");
            Console.WriteLine($"activation_mb={r.AllocatedBytes / (1024.0 * 1024):F0}");
            Console.WriteLine($"load_average_1m={r.LoadAverage:F2}");
            Console.WriteLine($"peak_rss_mb={Process.GetCurrentProcess().PeakWorkingSet64 / (1024.0 * 1024):F0}");
            Console.WriteLine($"distill_step_s={r.SecondsPerStep:F3}");
            return 0;
        }));
        return cmd;
    }

    static int[] ParseList(string text, string option)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var values = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], out values[i]) || values[i] <= 0)
                throw new Cas.Engine.InvalidRequestException($"{option} takes positive integers separated by commas, got '{text}'.");
        if (values.Length == 0) throw new Cas.Engine.InvalidRequestException($"{option} needs at least one value.");
        return values;
    }

    /// <summary>Wall and process CPU time since <see cref="Start"/>: CPU-seconds stay comparable on a shared machine.</summary>
    readonly record struct Clock(long Wall, TimeSpan Cpu)
    {
        public static Clock Start() => new(Stopwatch.GetTimestamp(), Process.GetCurrentProcess().TotalProcessorTime);
        public double WallSeconds => Stopwatch.GetElapsedTime(Wall).TotalSeconds;
        public double CpuSeconds => (Process.GetCurrentProcess().TotalProcessorTime - Cpu).TotalSeconds;
    }

    /// <summary>
    /// Decode speed of <paramref name="batch"/> sequences that each already hold <paramref name="context"/> KV slots
    /// (a random prefix, as a composed cartridge or a long prompt would leave): tokens/s of wall time and per CPU-second.
    /// </summary>
    static (double TokS, double TokPerCpuS) Decode(Transformer t, ModelConfig cfg, int batch, int context, int steps, Func<int, int[]> prompt, float[] logits)
    {
        var prefix = RandomPrefix(cfg, context - 1);
        var caches = new KvCache[batch];
        var toks = new int[batch][];
        for (int b = 0; b < batch; b++) { caches[b] = new KvCache(cfg, context + steps + 1, prefix); toks[b] = prompt(1); }
        prefix = null;
        t.Forward(caches, toks, logits); // context-th token, and warm-up
        for (int b = 0; b < batch; b++) toks[b] = [1];
        t.Forward(caches, toks, logits); // warm-up step
        if (t.Timer is { } timer) { Array.Clear(timer.Seconds); timer.Restart(); }
        var clock = Clock.Start();
        for (int s = 0; s < steps - 1; s++)
        {
            for (int b = 0; b < batch; b++) toks[b][0] = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits.AsSpan(b * cfg.VocabSize, cfg.VocabSize));
            t.Forward(caches, toks, logits);
        }
        double n = batch * (steps - 1);
        return (n / clock.WallSeconds, n / clock.CpuSeconds);
    }

    /// <summary>A prefix of <paramref name="length"/> slots with K/V ~ N(0, 1) (zero length: none).</summary>
    static KvPrefix? RandomPrefix(ModelConfig c, int length)
    {
        if (length == 0) return null;
        var p = KvPrefix.Zeros(c, length);
        var rng = new Random(11);
        for (int l = 0; l < c.Layers; l++)
            for (int i = 0; i < p.Keys[l].Length; i++) { p.Keys[l][i] = (float)(rng.NextDouble() * 2 - 1); p.Values[l][i] = (float)(rng.NextDouble() * 2 - 1); }
        return p;
    }

    /// <summary>Multiply-adds×2 of a T-token prefill with last-token logits: projections, MLP, attention, LM head once.</summary>
    public static double PrefillFlops(ModelConfig c, int T)
    {
        double perTokenLayer = 2.0 * ((double)c.Dim * c.QDim * 2 + 2.0 * c.Dim * c.KvDim + 3.0 * c.Dim * c.HiddenDim);
        // QKᵀ and PV over the causal triangle (the SGEMM path computes the full square; count only the useful half).
        double attention = 4.0 * c.HeadDim * c.Heads * (T * (T + 1) / 2.0);
        return c.Layers * (T * perTokenLayer + attention) + 2.0 * c.Dim * c.VocabSize;
    }

    /// <summary>Bytes of the weight matrices one decode step reads (projections, MLP, LM head), at their stored precision.</summary>
    static double WeightBytes(Model model)
    {
        double n = model.Weights.LmHead.Bytes;
        foreach (var l in model.Weights.Layers) foreach (var m in l.Matrices) n += m.Bytes;
        return n;
    }

    /// <summary>One round of <see cref="BoundRounds"/>: read bandwidth (GB/s), batch-1 decode (tok/s) right after it, and
    /// the weight bytes read per second by that decode over the bandwidth.</summary>
    readonly record struct BoundRound(double Bandwidth, double TokS, double Fraction);

    static List<BoundRound> BoundRounds(Transformer t, ModelConfig cfg, int context, int steps, Func<int, int[]> prompt, float[] logits, double weightBytes, int count)
    {
        var probe = BandwidthProbe();
        var rounds = new List<BoundRound>(count);
        for (int r = 0; r < count; r++)
        {
            double bandwidth = MemoryReadBandwidth(probe);
            var (tokS, _) = Decode(t, cfg, 1, context, steps, prompt, logits);
            rounds.Add(new BoundRound(bandwidth, tokS, weightBytes * tokS / 1e9 / bandwidth));
        }
        return rounds;
    }

    /// <summary>A 512 MiB array (16× the L3 cache) of ones on huge pages, where the weights get them too
    /// (<see cref="WeightMemory"/>), so the bound is the machine's best read rate.</summary>
    static float[] BandwidthProbe()
    {
        var a = WeightMemory.Allocate<float>(1 << 27);
        a.AsSpan().Fill(1f);
        WeightMemory.Collapse(a);
        return a;
    }

    /// <summary>Read bandwidth from memory with both cores: sums the probe array (<see cref="BandwidthProbe"/>) in one
    /// part per core in parallel, best of three, in GB/s.</summary>
    static double MemoryReadBandwidth(float[] a)
    {
        int parts = Environment.ProcessorCount, n = a.Length / parts;
        double best = double.MaxValue;
        for (int r = 0; r < 3; r++)
        {
            var sw = Stopwatch.StartNew();
            Parallel.For(0, parts, i => System.Numerics.Tensors.TensorPrimitives.Sum(a.AsSpan(i * n, n)));
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return 4.0 * parts * n / best / 1e9;
    }

    /// <summary>Best of several large square SGEMMs through the chosen backend, in GFLOP/s.</summary>
    public static double SgemmPeak(int n = 2048, int reps = 4)
    {
        var a = new float[n * n]; var b = new float[n * n]; var c = new float[n * n];
        for (int i = 0; i < a.Length; i++) { a[i] = (i % 7) * 0.01f; b[i] = (i % 5) * 0.01f; }
        Blas.Sgemm(false, true, n, n, n, 1f, a, n, b, n, 0f, c, n);
        double best = double.MaxValue;
        for (int r = 0; r < reps; r++)
        {
            var sw = Stopwatch.StartNew();
            Blas.Sgemm(false, true, n, n, n, 1f, a, n, b, n, 0f, c, n);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return 2.0 * n * n * n / best / 1e9;
    }
}
