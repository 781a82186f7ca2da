using System.Diagnostics;
using Cas.Engine.Models;
using Cas.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Cas.Bench.Peers;

/// <summary>
/// One engine, one task, in its own process (so its peak RSS is its own): `infer` (prefill, decode b1, decode b16),
/// `distill` (one distillation step, ours or libtorch) or `check` (a peer's logits, and for libtorch the
/// distillation loss and gradient, against ours). Prints key=value lines.
/// </summary>
static class Child
{
    // Tolerances of the checks, relative to the largest magnitude of our result. A wrong tensor layout, RoPE or
    // normalisation gives errors of order 1; fp32 engines summing in another order differ by ~1e-6.
    public const double LogitsTolF32 = 1e-4;   // libtorch; llama.cpp with F32 weights, F32 KV cache, no flash attention
    public const double LogitsTolHalf = 2e-2;  // llama.cpp as benchmarked: its defaults (F16 KV cache, flash attention)
    public const double GradTol = 1e-3;        // libtorch autograd vs our backward to the cartridge

    public static string GgufPath(Options o, string type) => Path.Combine(o.WorkDir!, $"model-{type}.gguf");

    public static int Run(string kind, string engine, Options o)
    {
        var cfg = o.ReadConfig();
        return kind switch
        {
            "infer" => Infer(engine, cfg, o),
            "distill" => Distill(engine, cfg, o),
            "check" => engine == "llamacpp" ? CheckLlamaCpp(cfg, o) : engine == "libtorch" ? CheckLibTorch(cfg, o) : throw new ArgumentException($"no check for '{engine}'."),
            _ => throw new ArgumentException($"unknown child task '{kind}'."),
        };
    }

    static int[] Tokens(int n, int vocab, int seed)
    {
        var rng = new Random(seed);
        var a = new int[n];
        for (int i = 0; i < n; i++) a[i] = rng.Next(vocab);
        return a;
    }

    static IInferenceEngine Create(string engine, ModelConfig cfg, Options o, int maxPositions)
    {
        switch (engine)
        {
            case "ours": return new OursEngine(RandomWeights.Create(cfg, o.Seed), Math.Max(maxPositions, 16));
            case "ours-bf16": // the same weights held in 16 bits and widened in the kernels: the peer of llama.cpp's F16
            {
                var m = RandomWeights.Create(cfg, o.Seed);
                return new OursEngine(new Model(cfg, m.Weights.ToPrecision(WeightPrecision.BFloat16), m.Source), Math.Max(maxPositions, 16));
            }
            case "libtorch":
            {
                var e = new TorchEngine(RandomWeights.Create(cfg, o.Seed), maxPositions, o.Threads);
                GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect(); // the managed copy of the weights is gone
                return e;
            }
            case "llamacpp-f32": return new LlamaCppEngine(GgufPath(o, "f32"), o.Threads, maxPositions);
            case "llamacpp-f16": return new LlamaCppEngine(GgufPath(o, "f16"), o.Threads, maxPositions);
            default: throw new ArgumentException($"unknown engine '{engine}' (ours, ours-bf16, libtorch, llamacpp-f32, llamacpp-f16).");
        }
    }

    static int Infer(string engine, ModelConfig cfg, Options o)
    {
        int maxPositions = Math.Max(o.PrefillTokens, o.Context) + o.DecodeSteps + 8;
        using var e = Create(engine, cfg, o, maxPositions);
        ResetPeakRss(); // from here on: what running costs, not building the weights (libtorch copies them from ours)
        var prompt = Tokens(o.PrefillTokens, cfg.VocabSize, 3);
        var context = Tokens(o.Context, cfg.VocabSize, 4);
        e.Prefill(prompt); // warm-up
        double best = double.MaxValue;
        for (int r = 0; r < o.PrefillReps; r++) best = Math.Min(best, e.Prefill(prompt));
        Console.WriteLine($"prefill_tok_s={o.PrefillTokens / best:F2}");
        // Each decode figure is the second of two identical runs, for every engine: the first warms what a long-running
        // server has warm (our JIT's optimised tier, which a fresh process reaches only after ~0.5 s of decoding; every
        // engine's caches and threads). Timed cold, our batch-1 decode read 65–72 tokens/s here against 92–98 warm.
        e.Decode(1, context, o.DecodeSteps);
        Console.WriteLine($"decode_b1_tok_s={e.Decode(1, context, o.DecodeSteps):F2}");
        e.Decode(16, context, o.DecodeSteps);
        Console.WriteLine($"decode_b16_tok_s={e.Decode(16, context, o.DecodeSteps):F2}");
        Console.WriteLine($"peak_rss_mb={PeakRssMb():F0}");
        return 0;
    }

    static int Distill(string engine, ModelConfig cfg, Options o)
    {
        if (engine == "ours")
        {
            var r = TrainingBenchmark.Run(cfg, o.DistillPrefix, o.DistillSequences, o.DistillLength, o.TopK, o.DistillSteps, o.Seed);
            Console.WriteLine($"distill_step_s={r.SecondsPerStep:F4}");
            Console.WriteLine($"distill_loss={r.Loss:F5}");
        }
        else if (engine == "libtorch")
        {
            torch.set_num_threads(o.Threads);
            // The same cartridge and batch as TrainingBenchmark.Run draws for this seed.
            var model = RandomWeights.Create(cfg, o.Seed);
            var rng = new Random((int)o.Seed);
            var prefix = TrainingBenchmark.RandomPrefix(cfg, o.DistillPrefix, rng, 0.5f);
            var batch = new TrainingSequence[o.DistillSequences];
            for (int s = 0; s < batch.Length; s++) batch[s] = TrainingBenchmark.RandomSequence(cfg.VocabSize, o.DistillLength, o.TopK, rng);
            using var m = new TorchLlama(model, o.DistillPrefix + o.DistillLength);
            model = null;
            var (keys, values) = Leaves(cfg, prefix);
            GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
            float loss = m.DistillStep(keys, values, batch); // warm-up
            double best = double.MaxValue;
            for (int i = 0; i < o.DistillSteps; i++)
            {
                var sw = Stopwatch.StartNew();
                loss = m.DistillStep(keys, values, batch);
                best = Math.Min(best, sw.Elapsed.TotalSeconds);
                Console.Error.WriteLine($"peers: libtorch distillation step {i + 1}/{o.DistillSteps}: {sw.Elapsed.TotalSeconds:F3} s, loss {loss:F4}");
            }
            Console.WriteLine($"distill_step_s={best:F4}");
            Console.WriteLine($"distill_loss={loss:F5}");
            foreach (var t in keys.Concat(values)) t.Dispose();
        }
        else throw new ArgumentException($"no distillation step for '{engine}' (ours, libtorch).");
        Console.WriteLine($"peak_rss_mb={PeakRssMb():F0}");
        return 0;
    }

    /// <summary>The cartridge as leaf tensors that require grad ([kv_heads, p, head_dim] per layer).</summary>
    static (Tensor[] Keys, Tensor[] Values) Leaves(ModelConfig c, Cas.Engine.KvPrefix prefix)
    {
        long[] shape = [c.KvHeads, prefix.Length, c.HeadDim];
        var k = new Tensor[c.Layers]; var v = new Tensor[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            k[l] = tensor(prefix.Keys[l], shape).clone().requires_grad_(true);
            v[l] = tensor(prefix.Values[l], shape).clone().requires_grad_(true);
        }
        return (k, v);
    }

    /// <summary>
    /// llama.cpp's logits on a short prompt against ours. The F32 GGUF with fp32 attention must match to fp32 rounding:
    /// that proves the writer (names, shapes, Q/K row order, metadata). As benchmarked (llama.cpp's defaults round
    /// attention to half precision; F16 weights) the error is reported and bounded loosely.
    /// </summary>
    static int CheckLlamaCpp(ModelConfig cfg, Options o)
    {
        var prompt = Tokens(8, cfg.VocabSize, 11);
        float[] ours;
        using (var e = new OursEngine(RandomWeights.Create(cfg, o.Seed), 16)) ours = e.AllLogits(prompt);
        bool ok = true;
        foreach (var (name, type, tol, exact) in new[] { ("f32_exact", "f32", LogitsTolF32, true), ("f32", "f32", LogitsTolHalf, false), ("f16", "f16", LogitsTolHalf, false) })
        {
            float[] theirs;
            using (var e = new LlamaCppEngine(GgufPath(o, type), o.Threads, 16, exact)) theirs = e.AllLogits(prompt);
            double err = MaxRelErr(theirs, ours);
            Console.WriteLine($"check_llamacpp_{name}_logits_max_rel_err={err:E2}");
            Console.WriteLine($"check_llamacpp_{name}_logits_tolerance={tol:E0}");
            Console.WriteLine($"check_llamacpp_{name}_argmax_agree={ArgmaxAgree(theirs, ours, cfg.VocabSize)}/{prompt.Length}");
            ok &= err <= tol;
        }
        Console.WriteLine($"check_llamacpp_ok={(ok ? "true" : "false")}");
        return ok ? 0 : 3;
    }

    /// <summary>libtorch's logits on a short prompt, and its distillation loss and cartridge gradient on a small batch, against ours.</summary>
    static int CheckLibTorch(ModelConfig cfg, Options o)
    {
        torch.set_num_threads(o.Threads);
        var model = RandomWeights.Create(cfg, o.Seed);
        var prompt = Tokens(8, cfg.VocabSize, 11);
        var ours = new OursEngine(model, 16).AllLogits(prompt);
        using var te = new TorchEngine(model, 64, o.Threads);
        var theirs = te.AllLogits(prompt);
        double logitsErr = MaxRelErr(theirs, ours);
        Console.WriteLine($"check_libtorch_logits_max_rel_err={logitsErr:E2}");
        Console.WriteLine($"check_libtorch_logits_tolerance={LogitsTolF32:E0}");

        // The distillation step on a small cartridge and batch: loss and d loss / d cartridge.
        const int p = 8, seqs = 2, len = 8, k = 5;
        var rng = new Random(5);
        var prefix = TrainingBenchmark.RandomPrefix(cfg, p, rng, 0.5f);
        var batch = new TrainingSequence[seqs];
        for (int s = 0; s < seqs; s++) batch[s] = TrainingBenchmark.RandomSequence(cfg.VocabSize, len, k, rng);
        var bp = new CartridgeBackprop(model, seqs * len);
        var dK = new float[cfg.Layers][]; var dV = new float[cfg.Layers][];
        for (int l = 0; l < cfg.Layers; l++) { dK[l] = new float[prefix.Keys[l].Length]; dV[l] = new float[dK[l].Length]; }
        float oursLoss = bp.LossAndGradient(prefix, batch, dK, dV);
        var (keys, values) = Leaves(cfg, prefix);
        float torchLoss = te.Model.DistillStep(keys, values, batch);
        var oursGrad = dK.Concat(dV).SelectMany(a => a).ToArray();
        var torchGrad = keys.Concat(values).SelectMany(t => t.grad!.data<float>().ToArray()).ToArray();
        double lossErr = Math.Abs(torchLoss - oursLoss) / Math.Abs(oursLoss), gradErr = MaxRelErr(torchGrad, oursGrad);
        foreach (var t in keys.Concat(values)) t.Dispose();
        Console.WriteLine($"check_libtorch_distill_loss={torchLoss:F6} (ours {oursLoss:F6})");
        Console.WriteLine($"check_libtorch_distill_loss_rel_err={lossErr:E2}");
        Console.WriteLine($"check_libtorch_distill_grad_max_rel_err={gradErr:E2}");
        Console.WriteLine($"check_libtorch_distill_tolerance={GradTol:E0}");
        bool ok = logitsErr <= LogitsTolF32 && lossErr <= GradTol && gradErr <= GradTol;
        Console.WriteLine($"check_libtorch_ok={(ok ? "true" : "false")}");
        return ok ? 0 : 3;
    }

    /// <summary>max |a − b| / max |b|.</summary>
    static double MaxRelErr(float[] a, float[] b)
    {
        if (a.Length != b.Length) throw new InvalidOperationException($"result lengths differ ({a.Length} vs {b.Length}).");
        double diff = 0, scale = 0;
        for (int i = 0; i < a.Length; i++) { diff = Math.Max(diff, Math.Abs(a[i] - b[i])); scale = Math.Max(scale, Math.Abs(b[i])); }
        return diff / scale;
    }

    static int ArgmaxAgree(float[] a, float[] b, int vocab)
    {
        int n = 0;
        for (int r = 0; r < a.Length / vocab; r++)
            if (System.Numerics.Tensors.TensorPrimitives.IndexOfMax(a.AsSpan(r * vocab, vocab)) == System.Numerics.Tensors.TensorPrimitives.IndexOfMax(b.AsSpan(r * vocab, vocab))) n++;
        return n;
    }

    /// <summary>Resets the kernel's peak-RSS mark (VmHWM) of this process, so the peak counts from now on (Linux).</summary>
    static void ResetPeakRss()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>VmHWM of this process in MiB.</summary>
    static double PeakRssMb()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                return double.Parse(line[6..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) / 1024;
        return Process.GetCurrentProcess().PeakWorkingSet64 / (1024.0 * 1024);
    }
}
