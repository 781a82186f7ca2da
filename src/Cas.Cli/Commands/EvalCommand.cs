using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Training;
using Cas.Training.Evaluation;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas eval`: held-out perplexity and KL to the teacher of one or more cartridges (composed in the given order),
/// against no context, a truncated context of the same KV budget, and the full context (ICL). Progress on stderr;
/// stdout gets key=value lines ending with cartridge_gap_closed.
/// </summary>
static class EvalCommand
{
    /// <summary>Default probe seed: differs from `cas train`'s default (1) and from its held-out seed (1 + 0x9E3779B9).</summary>
    public const ulong DefaultSeed = 1000;

    public static Command Create()
    {
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var cartridge = Options.Cartridges(required: true);
        var data = Options.Data();
        var seed = Options.Seed(DefaultSeed);
        var examplesPerChunk = Options.ProbesPerChunk(16);
        var chunkTokens = Options.ChunkTokens();
        var continuation = Options.ContinuationTokens();
        var compose = new Option<string>("--compose")
        {
            Description = "concat: cartridges keep the positions they were trained at (what generate and serving do) | " +
                          "rerotate: each cartridge's keys are rotated by the slots in front of it (the alternative, for comparison).",
            DefaultValueFactory = _ => "concat",
        };
        var weightStorage = Options.WeightStorage();
        var cmd = new Command("eval", "Held-out perplexity and KL to the teacher: no context, truncated context, full context (ICL) and cartridge(s).")
        {
            model, tokenizer, cartridge, data, seed, examplesPerChunk, chunkTokens, continuation, compose, weightStorage,
        };
        cmd.Subcommands.Add(EvalCollectionCommand.Create());
        cmd.SetAction(pr => Cli.Run(() => Execute(
            pr.GetValue(model), pr.GetValue(tokenizer), pr.GetValue(cartridge) ?? [], pr.GetValue(data)!, pr.GetValue(seed),
            pr.GetValue(examplesPerChunk), pr.GetValue(chunkTokens), pr.GetValue(continuation), pr.GetValue(compose)!,
            Options.ParseWeightStorage(pr.GetValue(weightStorage)))));
        return cmd;
    }

    static int Execute(string? modelPath, string? tokenizerPath, string[] cartridgePaths, string dataPath, ulong seed,
        int examplesPerChunk, int? chunkTokens, int continuation, string composeText, WeightStorage storage)
    {
        var mode = composeText.ToLowerInvariant() switch
        {
            "concat" => CompositionMode.Concat,
            "rerotate" => CompositionMode.ReRotate,
            _ => throw new InvalidRequestException($"unknown --compose '{composeText}'; use concat or rerotate."),
        };
        if (!File.Exists(dataPath)) throw new InvalidRequestException($"--data {dataPath} does not exist.");
        var clock = Stopwatch.StartNew();
        var (m, tok, _) = Cli.Load(modelPath, tokenizerPath, storage);
        var prefix = PrefixComposition.Compose(m.Config, CartridgeFiles.Load(cartridgePaths, m), mode);

        EvalSet set;
        if (DatasetFormat.IsDatasetFile(dataPath))
        {
            set = EvalSet.FromDataset(dataPath, tok, m.Config);
        }
        else
        {
            string text = TrainingRun.ReadDocument(dataPath, "--data");
            var options = new DocumentProbeOptions
            {
                ExamplesPerChunk = examplesPerChunk, ContinuationTokens = continuation, Split = ProbeSplit.HeldOut, Seed = seed,
            };
            // The same rule as training, so a cartridge trained with defaults is evaluated on chunks of the same size.
            options = options with { ChunkTokens = DocumentProbes.ChooseChunkTokens(m.Config, tok, options, chunkTokens) };
            Console.Error.WriteLine($"chose chunk_tokens={options.ChunkTokens}{(chunkTokens is null ? "" : " (given)")} for the model's context of {m.Config.MaxSeqLen}");
            var probes = DocumentProbes.BuildSet(m, tok, text, Path.GetFileName(dataPath), options,
                (d, n) => Progress("held-out probes", d, n));
            set = EvalSet.FromProbes(probes);
        }
        Console.Error.WriteLine($"data: {set.Description}; {set.TargetPositions} target positions");

        var evaluator = new HeldOutEvaluator(m);
        var report = evaluator.Run(set, prefix, (name, d, n) => Progress($"eval {name}", d, n));

        double contextTokens = 0;
        foreach (var e in set.Examples) contextTokens += set.Contexts[e.Context].Length - set.StartTokens.Length;
        contextTokens /= set.Examples.Count;

        var o = Console.Out;
        o.WriteLine($"data={Path.GetFullPath(dataPath)}");
        o.WriteLine($"cartridges={string.Join(',', cartridgePaths.Select(Path.GetFullPath))}");
        o.WriteLine($"compose={composeText.ToLowerInvariant()}");
        o.WriteLine($"p={prefix.Length}");
        o.WriteLine($"examples={set.Examples.Count}");
        o.WriteLine($"target_positions={set.TargetPositions}");
        o.WriteLine($"chunk_tokens={F(contextTokens, "F1")}");
        o.WriteLine($"compression={F(contextTokens / prefix.Length, "F2")}");
        foreach (var r in report.All)
        {
            o.WriteLine($"ppl_{r.Name}={F(r.Perplexity, "F6")}");
            o.WriteLine($"nll_{r.Name}={F(r.MeanNll, "F6")}");
            o.WriteLine($"kl_{r.Name}={F(r.Kl, "F6")}");
            o.WriteLine($"kv_slots_{r.Name}={F(r.KvSlots, "0.##")}");
        }
        o.WriteLine($"elapsed_s={F(clock.Elapsed.TotalSeconds, "F2")}");
        o.WriteLine($"cartridge_gap_closed={F(report.GapClosed, "F6")}");
        return 0;
    }

    static double _lastProgress = double.NegativeInfinity;
    static readonly Stopwatch ProgressClock = Stopwatch.StartNew();
    static void Progress(string what, int done, int total)
    {
        double now = ProgressClock.Elapsed.TotalSeconds;
        if (done < total && now - _lastProgress < 1.0) return;
        _lastProgress = now;
        Console.Error.WriteLine($"{what} {done}/{total}");
    }

    /// <summary>Invariant formatting; a value that rounds to zero prints without a minus sign (KL can be −1e-9 from rounding).</summary>
    static string F(double v, string format)
    {
        string s = v.ToString(format, CultureInfo.InvariantCulture);
        return s.StartsWith('-') && double.Parse(s, CultureInfo.InvariantCulture) == 0 ? s[1..] : s;
    }
}
