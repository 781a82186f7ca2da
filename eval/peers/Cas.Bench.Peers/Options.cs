using System.Globalization;
using Cas.Engine.Models;

namespace Cas.Bench.Peers;

/// <summary>The benchmark's settings; the parent passes them unchanged to every child process.</summary>
sealed class Options
{
    public string Config = "";
    public string? Tokenizer;
    public int Rounds = 3;
    public int PrefillTokens = 512;
    public int Context = 512;
    public int DecodeSteps = 32;
    public int PrefillReps = 3;
    public int DistillPrefix = 512, DistillSequences = 4, DistillLength = 256, TopK = 20, DistillSteps = 2;
    public bool SkipDistill;
    public int Threads = Environment.ProcessorCount;
    public string? WorkDir;
    public ulong Seed = 7; // the seed of `cas bench engine` and `cas bench train`
    public List<string> Rest = new();

    public static string Usage => """
        Cas.Bench.Peers [options]          (run through `cas bench peers`)
          --config PATH           model shape (folder or config.json); random weights. Default: SmolLM2-135M's in ../shared
          --tokenizer PATH        tokenizer.json for the GGUF vocabulary (default: beside the config)
          --rounds N              alternating rounds, medians reported (3)
          --prefill-tokens N      prefill length (512)
          --context N             decode context: tokens in the KV cache before decoding (512)
          --decode-steps N        timed decode steps (32)
          --prefill-reps N        timed prefills per round, best kept (3)
          --distill-prefix N, --distill-sequences N, --distill-length N, --top-k N, --distill-steps N
                                  distillation step shape (512, 4, 256, 20) and timed steps per round, best kept (2)
          --skip-distill          no distillation step
          --threads N             threads for every engine (all cores)
          --work DIR              where the GGUF files are written (a temporary folder, removed at the end)
        """;

    public static Options Parse(string[] args, int start)
    {
        var o = new Options();
        for (int i = start; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value.");
            int Int() { string v = Next(); return int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : throw new ArgumentException($"{a}: '{v}' is not a positive whole number."); }
            switch (a)
            {
                case "--config": o.Config = Next(); break;
                case "--tokenizer": o.Tokenizer = Next(); break;
                case "--rounds": o.Rounds = Int(); break;
                case "--prefill-tokens": o.PrefillTokens = Int(); break;
                case "--context": o.Context = Int(); break;
                case "--decode-steps": o.DecodeSteps = Int(); break;
                case "--prefill-reps": o.PrefillReps = Int(); break;
                case "--distill-prefix": o.DistillPrefix = Int(); break;
                case "--distill-sequences": o.DistillSequences = Int(); break;
                case "--distill-length": o.DistillLength = Int(); break;
                case "--top-k": o.TopK = Int(); break;
                case "--distill-steps": o.DistillSteps = Int(); break;
                case "--skip-distill": o.SkipDistill = true; break;
                case "--threads": o.Threads = Int(); break;
                case "--work": o.WorkDir = Next(); break;
                default: o.Rest.Add(a); break;
            }
        }
        if (o.Config == "") throw new ArgumentException("--config is required (a model folder or config.json).");
        if (o.DecodeSteps < 2) throw new ArgumentException("--decode-steps must be at least 2.");
        return o;
    }

    /// <summary>The arguments that reproduce these options in a child process.</summary>
    public List<string> ToArgs()
    {
        var a = new List<string>
        {
            "--config", Config, "--rounds", I(Rounds), "--prefill-tokens", I(PrefillTokens), "--context", I(Context),
            "--decode-steps", I(DecodeSteps), "--prefill-reps", I(PrefillReps), "--distill-prefix", I(DistillPrefix),
            "--distill-sequences", I(DistillSequences), "--distill-length", I(DistillLength), "--top-k", I(TopK),
            "--distill-steps", I(DistillSteps), "--threads", I(Threads),
        };
        if (Tokenizer != null) { a.Add("--tokenizer"); a.Add(Tokenizer); }
        if (SkipDistill) a.Add("--skip-distill");
        return a;
    }

    static string I(int v) => v.ToString(CultureInfo.InvariantCulture);

    public ModelConfig ReadConfig() => HfModelLoader.ReadConfig(Config);

    public string TokenizerPath
    {
        get
        {
            if (Tokenizer != null) return Tokenizer;
            string dir = Directory.Exists(Config) ? Config : Path.GetDirectoryName(Path.GetFullPath(Config))!;
            return Path.Combine(dir, "tokenizer.json");
        }
    }
}
