using System.Numerics.Tensors;
using Cas.Engine;

namespace Cas.Data;

/// <summary>
/// The teacher's sparse distribution for one position: the most probable tokens under
/// softmax(logits) (temperature 1, whatever the agent sampled with), most probable first, kept until
/// their cumulative probability reaches a mass (0.99) or a count (20) is reached, with natural-log
/// probabilities from a numerically stable log-softmax: log p_i = x_i - (m + log Σ exp(x_j - m)),
/// m = max x, the sum taken in double precision.
/// </summary>
public static class TeacherTopK
{
    /// <summary>Most entries per position by default (as in the reference).</summary>
    public const int DefaultMaxK = 20;
    /// <summary>Cumulative probability at which the list is cut by default.</summary>
    public const double DefaultMass = 0.99;

    [ThreadStatic] static float[]? t_scratch;

    /// <summary>
    /// log Σ exp(x_j), computed as m + log Σ exp(x_j - m) (vectorized exp, the sum accumulated in double).
    /// Throws <see cref="InvalidRequestException"/> on a NaN or +infinite logit, or when every logit is -infinity.
    /// </summary>
    public static double LogSumExp(ReadOnlySpan<float> logits)
    {
        if (logits.IsEmpty) throw new ArgumentException("no logits.", nameof(logits));
        float m = TensorPrimitives.Max(logits); // NaN when any logit is NaN
        if (float.IsNaN(m))
            throw new InvalidRequestException($"the model produced a NaN logit (token {logits.IndexOf(float.NaN)}); its weights or inputs are broken.");
        if (float.IsPositiveInfinity(m)) throw new InvalidRequestException("the model produced an infinite logit; its weights or inputs are broken.");
        if (float.IsNegativeInfinity(m)) throw new InvalidRequestException("every logit is -infinity; there is no distribution to keep.");
        var scratch = t_scratch is { } t && t.Length >= logits.Length ? t : t_scratch = new float[logits.Length];
        var e = scratch.AsSpan(0, logits.Length);
        TensorPrimitives.Subtract(logits, m, e);
        TensorPrimitives.Exp(e, e);
        double sum = 0;
        for (int i = 0; i < e.Length; i++) sum += e[i];
        return m + Math.Log(sum);
    }

    /// <summary>
    /// Writes the kept entries into <paramref name="ids"/> and <paramref name="logProbs"/> (each at least
    /// <paramref name="maxK"/> long) and returns how many were kept: the top tokens by logit (ties by
    /// smaller id), in descending order, up to and including the first at which the cumulative probability
    /// is at least <paramref name="mass"/>, and never more than <paramref name="maxK"/>.
    /// </summary>
    public static int Select(ReadOnlySpan<float> logits, int maxK, double mass, Span<int> ids, Span<float> logProbs)
    {
        if (maxK < 1 || maxK > SparseTargets.MaxK) throw new ArgumentOutOfRangeException(nameof(maxK), $"must be in 1..{SparseTargets.MaxK}");
        if (!(mass > 0 && mass <= 1)) throw new ArgumentOutOfRangeException(nameof(mass), "must be in (0, 1]");
        if (ids.Length < maxK || logProbs.Length < maxK) throw new ArgumentException($"output spans need room for {maxK} entries.");
        double lse = LogSumExp(logits);
        int k = Math.Min(maxK, logits.Length);

        // Keep the k largest in a small array sorted descending (ties: smaller id first, which the scan
        // order gives for free since a later equal value never displaces an earlier one).
        Span<float> top = stackalloc float[k];
        var topIds = ids[..k];
        int count = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float x = logits[i];
            if (count == k && x <= top[k - 1]) continue;
            int at = count < k ? count++ : k - 1;
            while (at > 0 && top[at - 1] < x) { top[at] = top[at - 1]; topIds[at] = topIds[at - 1]; at--; }
            top[at] = x; topIds[at] = i;
        }

        double cumulative = 0;
        for (int j = 0; j < count; j++)
        {
            double lp = top[j] - lse;
            logProbs[j] = (float)lp;
            cumulative += Math.Exp(lp);
            if (cumulative >= mass) return j + 1;
        }
        return count;
    }
}
