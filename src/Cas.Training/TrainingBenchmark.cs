using System.Diagnostics;
using Cas.Engine;
using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Training;

/// <summary>Figures of one training-step measurement (see <see cref="TrainingBenchmark.Run"/>).</summary>
public sealed record TrainBenchResult(
    string Model, int PrefixLength, int Sequences, int SequenceLength, int TopK,
    int TimedSteps,
    double SecondsPerStep,      // best of the timed LossAndGradient calls
    double MedianSecondsPerStep,
    double GFlopPerStep,        // useful work, CartridgeBackprop.StepFlops
    double GFlops,              // GFlopPerStep / SecondsPerStep
    double TokensPerSecond,     // trained tokens per second
    double ForwardSeconds,      // loss-only forward of the same batch (best)
    double ForwardTokensPerSecond,
    long AllocatedBytes,        // CartridgeBackprop buffers for this batch
    string Blas,                // BLAS backend used for the large products
    double LoadAverage,         // 1-minute load average when the run ended (NaN if unknown): other work on the cores skews timings
    float Loss);

/// <summary>Times one cartridge training step (forward + backward to the prefix) on a random-weight model.</summary>
public static class TrainingBenchmark
{
    /// <summary>SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 KV heads, head_dim 64, MLP 1536, vocab 49152, tied).</summary>
    public static ModelConfig SmolLM2_135M { get; } = new()
    {
        Architecture = Architecture.Llama, Dim = 576, HiddenDim = 1536, Layers = 30, Heads = 9, KvHeads = 3, HeadDim = 64,
        VocabSize = 49152, MaxSeqLen = 8192, RopeTheta = 100000f, NormEps = 1e-5f, Rope = RopeStyle.Halves, TiedEmbeddings = true,
    };

    /// <summary>
    /// Builds a random-weight model of <paramref name="config"/> (default SmolLM2-135M), a random cartridge of
    /// <paramref name="prefixLength"/> slots and <paramref name="sequences"/> × <paramref name="sequenceLength"/> tokens
    /// with top-<paramref name="topK"/> sparse targets on every position, runs one warm-up step and
    /// <paramref name="steps"/> timed steps. <paramref name="backend"/> forces a BLAS backend (process-wide) when given.
    /// </summary>
    public static TrainBenchResult Run(ModelConfig? config = null, int prefixLength = 512, int sequences = 4, int sequenceLength = 256,
        int topK = 20, int steps = 3, ulong seed = 7, BlasBackend? backend = null, Action<string>? log = null)
    {
        var c = config ?? SmolLM2_135M;
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), "at least one timed step is needed.");
        if (backend is { } b && !Blas.TryUse(b))
            throw new InvalidRequestException($"BLAS backend {b} is not installed here (Blis: libblis4-pthread, OpenBlas: libopenblas0-pthread).");
        log?.Invoke($"building random {c.Architecture} model (dim {c.Dim}, {c.Layers} layers, vocab {c.VocabSize})");
        var model = RandomWeights.Create(c, seed);
        var rng = new Random((int)seed);
        var prefix = RandomPrefix(c, prefixLength, rng, 0.5f);
        var batch = new TrainingSequence[sequences];
        for (int s = 0; s < sequences; s++) batch[s] = RandomSequence(c.VocabSize, sequenceLength, topK, rng);

        int rows = sequences * sequenceLength;
        var bp = new CartridgeBackprop(model, rows);
        var dK = new float[c.Layers][]; var dV = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++) { dK[l] = new float[prefix.Keys[l].Length]; dV[l] = new float[dK[l].Length]; }

        float loss = bp.LossAndGradient(prefix, batch, dK, dV); // warm-up (JIT, BLAS threads, page faults)
        var times = new double[steps];
        var bestPhases = new double[bp.PhaseSeconds.Length];
        for (int i = 0; i < steps; i++)
        {
            Array.Clear(bp.PhaseSeconds);
            var sw = Stopwatch.StartNew();
            loss = bp.LossAndGradient(prefix, batch, dK, dV);
            times[i] = sw.Elapsed.TotalSeconds;
            if (times[i] <= times[..i].DefaultIfEmpty(double.MaxValue).Min()) bp.PhaseSeconds.CopyTo(bestPhases, 0);
            log?.Invoke($"step {i + 1}/{steps}: {times[i]:F3} s, loss {loss:F4}");
        }
        LastPhases = Enum.GetValues<DecoderPhase>().Where(p => p != DecoderPhase.Count)
            .ToDictionary(p => p.ToString(), p => bestPhases[(int)p]);
        Array.Sort(times);
        double best = times[0], median = times[steps / 2];

        double fwd = double.MaxValue;
        for (int i = 0; i < 2; i++)
        {
            var sw = Stopwatch.StartNew();
            bp.Loss(prefix, batch);
            fwd = Math.Min(fwd, sw.Elapsed.TotalSeconds);
        }

        var lengths = new int[sequences]; Array.Fill(lengths, sequenceLength);
        int targets = 0; foreach (var s in batch) targets += s.Targets.TargetPositions;
        double flops = CartridgeBackprop.StepFlops(c, prefixLength, lengths, targets);
        return new TrainBenchResult(model.Source, prefixLength, sequences, sequenceLength, topK, steps,
            best, median, flops / 1e9, flops / best / 1e9, rows / best, fwd, rows / fwd,
            bp.AllocatedBytes, Blas.LargeBackend.ToString(), LoadAverage(), loss);
    }

    /// <summary>Seconds per phase of the fastest timed step of the last <see cref="Run"/>.</summary>
    public static IReadOnlyDictionary<string, double> LastPhases { get; private set; } = new Dictionary<string, double>();

    static double LoadAverage()
    {
        try { return double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return double.NaN; }
    }

    /// <summary>A cartridge with N(0, std²) keys and values.</summary>
    public static KvPrefix RandomPrefix(ModelConfig c, int length, Random rng, float std)
    {
        var p = KvPrefix.Zeros(c, length);
        for (int l = 0; l < c.Layers; l++)
            for (int i = 0; i < p.Keys[l].Length; i++) { p.Keys[l][i] = std * Normal(rng); p.Values[l][i] = std * Normal(rng); }
        return p;
    }

    /// <summary>Random tokens; every position gets topK distinct random ids with the log-probs of a random distribution's top-k.</summary>
    public static TrainingSequence RandomSequence(int vocab, int length, int topK, Random rng)
    {
        var tokens = new int[length];
        for (int i = 0; i < length; i++) tokens[i] = rng.Next(vocab);
        var b = new SparseTargets.Builder(length);
        var ids = new int[topK]; var lps = new float[topK]; var w = new double[topK];
        for (int t = 0; t < length; t++)
        {
            double total = 0;
            for (int j = 0; j < topK; j++) { w[j] = Math.Exp(2 * Normal(rng)); total += w[j]; }
            total /= 0.9; // the kept support holds 90% of the teacher's mass
            Array.Sort(w); Array.Reverse(w);
            for (int j = 0; j < topK; j++)
            {
                int id;
                do id = rng.Next(vocab); while (Array.IndexOf(ids, id, 0, j) >= 0);
                ids[j] = id; lps[j] = (float)Math.Log(w[j] / total);
            }
            b.Add(t, ids, lps);
        }
        return new TrainingSequence(tokens, b.Build());
    }

    static float Normal(Random r) => (float)(Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble()));
}
