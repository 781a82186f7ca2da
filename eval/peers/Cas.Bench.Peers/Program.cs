using System.Diagnostics;
using System.Globalization;
using Cas.Bench.Peers;
using Cas.Engine.Models;

// `cas bench peers`: our engine against the peers a user would pick, on the same shapes and the same random weights.
// The parent writes the GGUF files, checks that every peer computes our model (logits, and the distillation gradient
// for libtorch), then runs each engine's round in a child process (its own peak RSS) in alternation, rounds times,
// and prints medians and ratios (above 1 = we are faster), the smallest ratio last.
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
try
{
    if (args.Contains("--help") || args.Contains("-h")) { Console.WriteLine(Options.Usage); return 0; }
    if (args.Length >= 3 && args[0] == "child") return Child.Run(args[1], args[2], Options.Parse(args, 3));
    return Parent.Run(Options.Parse(args, 0));
}
catch (Exception e) when (e is ArgumentException or NotSupportedException or InvalidDataException or IOException
                              or InvalidOperationException or Cas.Engine.CasException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}

static class Parent
{
    static readonly string[] InferenceEngines = ["ours", "ours-bf16", "libtorch", "llamacpp-f32", "llamacpp-f16"];
    static readonly string[] DistillEngines = ["ours", "libtorch"];

    public static int Run(Options o)
    {
        if (o.Rest.Count > 0) throw new ArgumentException($"unknown argument '{o.Rest[0]}'.\n{Options.Usage}");
        var cfg = o.ReadConfig();
        TorchLlama.CheckSupported(cfg);
        var w = Console.Out;
        w.WriteLine($"model=random(seed={o.Seed}) {cfg.Architecture} dim {cfg.Dim} layers {cfg.Layers} heads {cfg.Heads}/{cfg.KvHeads} vocab {cfg.VocabSize}");
        w.WriteLine($"threads={o.Threads}");
        w.WriteLine($"rounds={o.Rounds}");
        w.WriteLine($"prefill_tokens={o.PrefillTokens}");
        w.WriteLine($"decode_context={o.Context}");
        w.WriteLine($"decode_steps={o.DecodeSteps}");
        if (!o.SkipDistill) w.WriteLine($"distill_shape=p{o.DistillPrefix} {o.DistillSequences}x{o.DistillLength} top{o.TopK}");
        w.WriteLine("peers=TorchSharp-cpu 0.107.0 (libtorch 2.10.0); LLamaSharp 0.30.0 + LLamaSharp.Backend.Cpu (llama.cpp)");
        w.WriteLine($"libtorchsharp_glibcxx_3_4_32={PatchLibTorchSharp()}");
        // Other work on the cores skews all figures, llama.cpp's most (its threads spin at barriers): say how busy they were.
        w.WriteLine($"load_average_1m_start={LoadAverage()}");

        bool ownWork = o.WorkDir == null;
        if (ownWork) RemoveStaleWorkDirs();
        o.WorkDir ??= Path.Combine(Path.GetTempPath(), $"{WorkPrefix}{Environment.ProcessId}");
        Directory.CreateDirectory(o.WorkDir);
        // 800 MB of GGUF files must not outlive the run, also when it is interrupted (SIGINT/SIGTERM run this).
        string work = o.WorkDir;
        if (ownWork) AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(work, recursive: true); } catch (IOException) { } };
        try
        {
            var sw = Stopwatch.StartNew();
            var vocab = HfVocabulary.Load(o.TokenizerPath);
            var model = RandomWeights.Create(cfg, o.Seed);
            GgufWriter.Write(Child.GgufPath(o, "f32"), model, GgufWriter.TensorType.F32, vocab);
            GgufWriter.Write(Child.GgufPath(o, "f16"), model, GgufWriter.TensorType.F16, vocab);
            model = null;
            Console.Error.WriteLine($"peers: wrote the F32 and F16 GGUF files to {o.WorkDir} in {sw.Elapsed.TotalSeconds:F1} s");

            // Correctness first: a peer that does not compute our model has no speed worth comparing.
            bool ok = true;
            foreach (var peer in new[] { "llamacpp", "libtorch" })
            {
                var r = ChildProcess.Run("check", peer, o);
                foreach (var (k, v) in r) w.WriteLine($"{k}={v}");
                ok &= r.TryGetValue($"check_{peer}_ok", out var s) && s == "true";
            }
            if (!ok) throw new InvalidOperationException("a peer's logits or gradients do not match ours within the stated tolerance (check_* lines above); no speed figures.");

            // Alternating rounds: each engine's figures are taken in turn, so slow drifts of a shared machine hit all.
            var runs = new Dictionary<string, List<Dictionary<string, string>>>();
            for (int round = 1; round <= o.Rounds; round++)
            {
                foreach (var e in InferenceEngines) Add(runs, "infer:" + e, Log(round, "infer", e, ChildProcess.Run("infer", e, o)));
                if (!o.SkipDistill)
                    foreach (var e in DistillEngines) Add(runs, "distill:" + e, Log(round, "distill", e, ChildProcess.Run("distill", e, o)));
            }

            double M(string run, string key) => Cas.Engine.Statistics.Median(runs[run].Select(d => double.Parse(d[key], CultureInfo.InvariantCulture)));
            var ratios = new List<(string Key, double Value)>();
            foreach (var e in InferenceEngines)
            {
                string k = e.Replace('-', '_');
                w.WriteLine($"{k}_prefill_tok_s={M("infer:" + e, "prefill_tok_s"):F1}");
                w.WriteLine($"{k}_decode_b1_tok_s={M("infer:" + e, "decode_b1_tok_s"):F1}");
                w.WriteLine($"{k}_decode_b16_tok_s={M("infer:" + e, "decode_b16_tok_s"):F1}");
                w.WriteLine($"{k}_peak_rss_mb={M("infer:" + e, "peak_rss_mb"):F0}");
            }
            if (!o.SkipDistill)
                foreach (var e in DistillEngines)
                {
                    w.WriteLine($"{e}_distill_step_s={M("distill:" + e, "distill_step_s"):F3}");
                    w.WriteLine($"{e}_distill_loss={runs["distill:" + e][0]["distill_loss"]}");
                    w.WriteLine($"{e}_distill_peak_rss_mb={M("distill:" + e, "peak_rss_mb"):F0}");
                }
            double ours(string key) => M("infer:ours", key);
            ratios.Add(("ratio_prefill_vs_libtorch", ours("prefill_tok_s") / M("infer:libtorch", "prefill_tok_s")));
            if (!o.SkipDistill)
                ratios.Add(("ratio_distill_vs_libtorch", M("distill:libtorch", "distill_step_s") / M("distill:ours", "distill_step_s")));
            ratios.Add(("ratio_decode_b1_vs_llamacpp_f32", ours("decode_b1_tok_s") / M("infer:llamacpp-f32", "decode_b1_tok_s")));
            // Half-precision weights against half-precision weights: our bf16 matrices (2 bytes a weight, as F16) vs llama.cpp F16.
            w.WriteLine("ours_decode_b1_vs_f16_weights=bf16");
            ratios.Add(("ratio_decode_b1_vs_llamacpp_f16", M("infer:ours-bf16", "decode_b1_tok_s") / M("infer:llamacpp-f16", "decode_b1_tok_s")));
            var peersB16 = InferenceEngines.Where(e => !e.StartsWith("ours", StringComparison.Ordinal)).Select(e => (e, v: M("infer:" + e, "decode_b16_tok_s"))).MaxBy(x => x.v);
            w.WriteLine($"decode_b16_best_peer={peersB16.e}");
            ratios.Add(("ratio_decode_b16_vs_best_peer", ours("decode_b16_tok_s") / peersB16.v));
            w.WriteLine($"load_average_1m_end={LoadAverage()}");
            foreach (var (k, v) in ratios) w.WriteLine($"{k}={v:F2}");
            w.WriteLine($"slowest_ratio={ratios.Min(r => r.Value):F2}");
            return 0;
        }
        finally
        {
            if (ownWork) try { Directory.Delete(o.WorkDir, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>Weakens the GLIBCXX_3.4.32 requirement of the copy of libLibTorchSharp.so beside this program when the system lacks it.</summary>
    static string PatchLibTorchSharp()
    {
        const string version = "GLIBCXX_3.4.32";
        if (ElfVersionPatch.SystemLibStdCxxHas(version)) return "present";
        string lib = Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so");
        if (!File.Exists(lib)) throw new FileNotFoundException($"{lib} is missing: build this project with its RuntimeIdentifier (linux-x64).");
        return ElfVersionPatch.MakeVersionWeak(lib, version) > 0 ? "missing, made weak in the benchmark's copy" : "missing, already weak in the benchmark's copy";
    }

    const string WorkPrefix = "cas-bench-peers-";

    /// <summary>Removes work folders of earlier runs whose process is gone (killed before it could clean up).</summary>
    static void RemoveStaleWorkDirs()
    {
        foreach (var d in Directory.EnumerateDirectories(Path.GetTempPath(), WorkPrefix + "*"))
            if (int.TryParse(Path.GetFileName(d)[WorkPrefix.Length..], out int pid) && !Directory.Exists($"/proc/{pid}"))
                try { Directory.Delete(d, recursive: true); } catch (IOException) { }
    }

    static string LoadAverage()
    {
        try { return File.ReadAllText("/proc/loadavg").Split(' ')[0]; }
        catch (IOException) { return "unknown"; }
    }

    static Dictionary<string, string> Log(int round, string kind, string engine, Dictionary<string, string> r)
    {
        Console.Error.WriteLine($"peers: round {round} {kind} {engine}: " + string.Join(' ', r.Select(kv => $"{kv.Key}={kv.Value}")));
        return r;
    }

    static void Add(Dictionary<string, List<Dictionary<string, string>>> runs, string key, Dictionary<string, string> r)
    {
        if (!runs.TryGetValue(key, out var l)) runs[key] = l = new();
        l.Add(r);
    }
}

/// <summary>Runs this program as a child (one engine, one task) and reads its key=value lines; stderr passes through.</summary>
static class ChildProcess
{
    public static Dictionary<string, string> Run(string kind, string engine, Options o)
    {
        string self = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find this program's path to start a child.");
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(Child).Assembly.Location);
        psi.ArgumentList.Add("child"); psi.ArgumentList.Add(kind); psi.ArgumentList.Add(engine);
        foreach (var a in o.ToArgs()) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("--work"); psi.ArgumentList.Add(o.WorkDir!);
        // The same thread count for every engine: ours sizes its work by Environment.ProcessorCount, the BLAS libraries
        // by their own variables; the peers take it as a parameter.
        string threads = o.Threads.ToString(CultureInfo.InvariantCulture);
        psi.Environment["DOTNET_PROCESSOR_COUNT"] = threads;
        psi.Environment["OPENBLAS_NUM_THREADS"] = threads;
        psi.Environment["BLIS_NUM_THREADS"] = threads;
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        var r = new Dictionary<string, string>();
        foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = line.IndexOf('=');
            if (eq > 0) r[line[..eq]] = line[(eq + 1)..];
        }
        if (p.ExitCode != 0 && kind != "check")
            throw new InvalidOperationException($"the {kind} run of {engine} failed (exit code {p.ExitCode}); its messages are above.");
        if (p.ExitCode != 0 && r.Count == 0)
            throw new InvalidOperationException($"the {engine} check failed to run (exit code {p.ExitCode}); its messages are above.");
        return r;
    }
}
