using Cas.Engine;

namespace Cas.Training;

/// <summary>A contiguous run of trainable elements inside one parameter array.</summary>
public readonly record struct ParameterRange(int Array, int Start, int Length);

/// <summary>
/// AdamW (decoupled weight decay) with fp32 moments, as torch.optim.AdamW computes it:
/// <code>
///   p ← p·(1 − lr·wd)
///   m ← β1·m + (1−β1)·g;   v ← β2·v + (1−β2)·g²
///   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
/// </code>
/// Only the elements inside the given <see cref="ParameterRange"/>s are read or changed; everything else (frozen
/// slots) keeps its value and zero moments.
/// </summary>
public sealed class AdamW
{
    public AdamW(IReadOnlyList<int> sizes, IReadOnlyList<ParameterRange> trainable, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weightDecay = 0)
    {
        ArgumentNullException.ThrowIfNull(sizes); ArgumentNullException.ThrowIfNull(trainable);
        if (!(beta1 >= 0 && beta1 < 1)) throw new InvalidRequestException($"AdamW β1 must lie in [0, 1), got {beta1}.");
        if (!(beta2 >= 0 && beta2 < 1)) throw new InvalidRequestException($"AdamW β2 must lie in [0, 1), got {beta2}.");
        if (!(eps > 0)) throw new InvalidRequestException($"AdamW ε must be positive, got {eps}.");
        if (!(weightDecay >= 0) || double.IsInfinity(weightDecay)) throw new InvalidRequestException($"weight decay must be ≥ 0, got {weightDecay}.");
        foreach (var r in trainable)
            if (r.Array < 0 || r.Array >= sizes.Count || r.Start < 0 || r.Length < 0 || r.Start + r.Length > sizes[r.Array])
                throw new ArgumentException($"trainable range {r} lies outside the parameter arrays.");
        Beta1 = beta1; Beta2 = beta2; Eps = eps; WeightDecay = weightDecay;
        Trainable = trainable;
        M = new float[sizes.Count][]; V = new float[sizes.Count][];
        for (int i = 0; i < sizes.Count; i++) { M[i] = new float[sizes[i]]; V[i] = new float[sizes[i]]; }
    }

    // Hyper-parameters are doubles, as in PyTorch, and rounded to fp32 where it rounds them (1 − β is formed in double).
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; }
    public IReadOnlyList<ParameterRange> Trainable { get; }
    /// <summary>First moments, one array per parameter array.</summary>
    public float[][] M { get; }
    /// <summary>Second moments.</summary>
    public float[][] V { get; }
    /// <summary>Updates applied so far (t of the bias correction after the next update is Step + 1).</summary>
    public long Step { get; set; }

    /// <summary>One update of every trainable element with learning rate <paramref name="lr"/>.</summary>
    public void Update(IReadOnlyList<float[]> parameters, IReadOnlyList<float[]> gradients, float lr)
    {
        if (parameters.Count != M.Length || gradients.Count != M.Length)
            throw new ArgumentException($"AdamW was made for {M.Length} parameter arrays.");
        Step++;
        double bc1 = 1 - Math.Pow(Beta1, Step), bc2 = 1 - Math.Pow(Beta2, Step);
        float stepSize = (float)(lr / bc1);
        float bc2Sqrt = (float)Math.Sqrt(bc2);
        float decay = (float)(1 - lr * WeightDecay);
        float b1 = (float)Beta1, b2 = (float)Beta2, a1 = (float)(1 - Beta1), a2 = (float)(1 - Beta2), eps = (float)Eps;
        foreach (var r in Trainable)
        {
            var p = parameters[r.Array].AsSpan(r.Start, r.Length);
            var g = gradients[r.Array].AsSpan(r.Start, r.Length);
            var m = M[r.Array].AsSpan(r.Start, r.Length);
            var v = V[r.Array].AsSpan(r.Start, r.Length);
            for (int i = 0; i < p.Length; i++)
            {
                float gi = g[i];
                if (WeightDecay != 0) p[i] *= decay;
                m[i] = m[i] * b1 + a1 * gi;
                v[i] = v[i] * b2 + a2 * gi * gi;
                float denom = MathF.Sqrt(v[i]) / bc2Sqrt + eps;
                p[i] -= stepSize * m[i] / denom;
            }
        }
    }
}

/// <summary>Global-norm gradient clipping over the trainable elements (torch.nn.utils.clip_grad_norm_).</summary>
public static class GradientClipping
{
    /// <summary>√(Σ g²) over the trainable ranges, accumulated in double.</summary>
    public static double GlobalNorm(IReadOnlyList<float[]> gradients, IReadOnlyList<ParameterRange> ranges)
    {
        double sum = 0;
        foreach (var r in ranges)
            foreach (float g in gradients[r.Array].AsSpan(r.Start, r.Length)) sum += (double)g * g;
        return Math.Sqrt(sum);
    }

    /// <summary>
    /// Scales the gradients by maxNorm / (norm + 1e-6) when that is below 1. maxNorm ≤ 0 disables clipping.
    /// Returns the norm before clipping.
    /// </summary>
    public static double Clip(IReadOnlyList<float[]> gradients, IReadOnlyList<ParameterRange> ranges, double maxNorm)
    {
        double norm = GlobalNorm(gradients, ranges);
        if (maxNorm <= 0 || !double.IsFinite(norm)) return norm;
        double coef = maxNorm / (norm + 1e-6);
        if (coef >= 1) return norm;
        float c = (float)coef;
        foreach (var r in ranges)
        {
            var g = gradients[r.Array].AsSpan(r.Start, r.Length);
            for (int i = 0; i < g.Length; i++) g[i] *= c;
        }
        return norm;
    }
}

public enum LrScheduleKind { Linear, Cosine }

/// <summary>
/// Learning rate per update: linear warmup from peak/W to the peak over the first W updates, then linear or
/// cosine decay that reaches floor = peak·floorFraction at the last update.
/// <code>
///   s &lt; W:  lr = peak·(s+1)/W
///   s ≥ W:  f = (s−W+1)/(N−W);  linear: floor + (peak−floor)·(1−f);  cosine: floor + (peak−floor)·(1+cos πf)/2
/// </code>
/// s is the 0-based update index, N the total number of updates.
/// </summary>
public sealed record LrSchedule
{
    public LrSchedule(float peak, int totalSteps, int warmupSteps, LrScheduleKind kind = LrScheduleKind.Linear, float floorFraction = 0.02f)
    {
        if (!(peak > 0) || float.IsInfinity(peak)) throw new InvalidRequestException($"the learning rate must be positive, got {peak}.");
        if (totalSteps <= 0) throw new InvalidRequestException($"the number of steps must be positive, got {totalSteps}.");
        if (warmupSteps < 1 || warmupSteps > totalSteps) throw new InvalidRequestException($"warmup steps must lie in [1, {totalSteps}], got {warmupSteps}.");
        if (!(floorFraction >= 0 && floorFraction <= 1)) throw new InvalidRequestException($"the lr floor fraction must lie in [0, 1], got {floorFraction}.");
        Peak = peak; TotalSteps = totalSteps; WarmupSteps = warmupSteps; Kind = kind; FloorFraction = floorFraction;
    }

    public float Peak { get; }
    public int TotalSteps { get; }
    public int WarmupSteps { get; }
    public LrScheduleKind Kind { get; }
    public float FloorFraction { get; }

    /// <summary>Warmup updates for a fraction of the run: round(fraction·N), at least 1 and at most N.</summary>
    public static int WarmupFor(int totalSteps, double fraction)
    {
        if (!(fraction >= 0 && fraction <= 1)) throw new InvalidRequestException($"the warmup fraction must lie in [0, 1], got {fraction}.");
        return Math.Clamp((int)Math.Round(fraction * totalSteps, MidpointRounding.AwayFromZero), 1, Math.Max(1, totalSteps));
    }

    public float At(int step)
    {
        if (step < 0) throw new ArgumentOutOfRangeException(nameof(step));
        if (step < WarmupSteps) return (float)((double)Peak * (step + 1) / WarmupSteps);
        int decaySteps = TotalSteps - WarmupSteps;
        double floor = (double)Peak * FloorFraction;
        if (decaySteps <= 0) return (float)floor;
        double f = Math.Min(1.0, (double)(step - WarmupSteps + 1) / decaySteps);
        double shape = Kind == LrScheduleKind.Cosine ? 0.5 * (1 + Math.Cos(Math.PI * f)) : 1 - f;
        return (float)(floor + (Peak - floor) * shape);
    }
}
