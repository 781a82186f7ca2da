using System.Globalization;
using System.Text;
using Cas.Engine;

namespace Cas.SelfStudy;

/// <summary>
/// Relative weights of the seed kinds, e.g. parsed from "question=2,summarization=1,use_case=1".
/// Kinds not mentioned get weight 0. Sampling is deterministic given a seed and sample index.
/// </summary>
public sealed class SeedPromptMix
{
    readonly double[] weights;
    readonly double total;

    SeedPromptMix(double[] w)
    {
        weights = w;
        foreach (var x in w) total += x;
    }

    /// <summary>All six kinds with equal weight.</summary>
    public static SeedPromptMix Uniform { get; } = new([1, 1, 1, 1, 1, 1]);

    /// <summary>
    /// Builds a mix from explicit weights. Throws <see cref="InvalidRequestException"/> for a negative or
    /// non-finite weight or when all weights are zero.
    /// </summary>
    public static SeedPromptMix FromWeights(IReadOnlyDictionary<SeedPromptKind, double> weights)
    {
        var w = new double[SeedPromptKinds.All.Count];
        foreach (var (k, v) in weights)
        {
            if (!Enum.IsDefined(k)) throw new InvalidRequestException($"unknown seed prompt kind {(int)k}.");
            if (!double.IsFinite(v) || v < 0)
                throw new InvalidRequestException($"seed prompt weight for {SeedPromptKinds.Name(k)} is {v}; weights must be finite and >= 0.");
            w[(int)k] = v;
        }
        if (w.All(x => x == 0))
            throw new InvalidRequestException("all seed prompt weights are zero; give at least one kind a positive weight.");
        return new SeedPromptMix(w);
    }

    /// <summary>
    /// Parses "kind=weight,kind=weight,...". Kinds: structuring, summarization, question, use_case,
    /// creative, generic (case-insensitive). A bare kind means weight 1. Weights use '.' as the decimal
    /// point. Errors (unknown kind, repeated kind, bad/negative weight, all zero, empty) throw
    /// <see cref="InvalidRequestException"/> with the offending part.
    /// </summary>
    public static SeedPromptMix Parse(string spec)
    {
        if (string.IsNullOrWhiteSpace(spec))
            throw new InvalidRequestException($"empty seed prompt mix; write e.g. \"{Uniform}\".");
        var w = new Dictionary<SeedPromptKind, double>();
        foreach (var rawPart in spec.Split(','))
        {
            string part = rawPart.Trim();
            if (part.Length == 0)
                throw new InvalidRequestException($"seed prompt mix \"{spec}\" has an empty entry; separate kind=weight pairs with single commas.");
            int eq = part.IndexOf('=');
            string name = eq < 0 ? part : part[..eq].Trim();
            if (!SeedPromptKinds.TryParse(name, out var kind))
                throw new InvalidRequestException($"seed prompt mix \"{spec}\": unknown kind '{name}'; expected one of {string.Join(", ", SeedPromptKinds.All.Select(SeedPromptKinds.Name))}.");
            double weight = 1;
            if (eq >= 0)
            {
                string ws = part[(eq + 1)..].Trim();
                if (!double.TryParse(ws, NumberStyles.Float, CultureInfo.InvariantCulture, out weight))
                    throw new InvalidRequestException($"seed prompt mix \"{spec}\": weight '{ws}' for {name} is not a number.");
            }
            if (!double.IsFinite(weight) || weight < 0)
                throw new InvalidRequestException($"seed prompt mix \"{spec}\": weight {weight} for {name} must be finite and >= 0.");
            if (!w.TryAdd(kind, weight))
                throw new InvalidRequestException($"seed prompt mix \"{spec}\": {SeedPromptKinds.Name(kind)} is given twice.");
        }
        return FromWeights(w);
    }

    /// <summary>Weight of <paramref name="kind"/> (0 when not in the mix).</summary>
    public double Weight(SeedPromptKind kind) => weights[(int)kind];

    /// <summary>Probability of drawing <paramref name="kind"/>.</summary>
    public double Probability(SeedPromptKind kind) => weights[(int)kind] / total;

    /// <summary>Draws a kind with probability proportional to its weight.</summary>
    public SeedPromptKind SampleKind(DeterministicRng rng)
    {
        double u = rng.NextDouble() * total;
        int last = -1;
        for (int i = 0; i < weights.Length; i++)
        {
            if (weights[i] <= 0) continue;
            last = i;
            if (u < weights[i]) return (SeedPromptKind)i;
            u -= weights[i];
        }
        return (SeedPromptKind)last; // rounding left u just above the last positive weight
    }

    /// <summary>Draws a kind, then one of its phrasings (and a format for structuring).</summary>
    public SeedPrompt Sample(DeterministicRng rng) => SeedPrompts.Sample(SampleKind(rng), rng);

    /// <summary>The seed prompt of sample <paramref name="index"/> in a run seeded with <paramref name="seed"/>.</summary>
    public SeedPrompt SampleAt(ulong seed, long index) => Sample(DeterministicRng.ForIndex(seed, index, PromptStream));

    /// <summary>RNG stream id used by <see cref="SampleAt"/> (distinct from the chunker's).</summary>
    public const ulong PromptStream = 2;

    /// <summary>The mix in Parse syntax, kinds with weight 0 left out.</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        foreach (var k in SeedPromptKinds.All)
        {
            if (weights[(int)k] == 0) continue;
            if (sb.Length > 0) sb.Append(',');
            sb.Append(SeedPromptKinds.Name(k)).Append('=').Append(weights[(int)k].ToString("R", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }
}
