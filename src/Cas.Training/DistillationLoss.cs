using System.Numerics.Tensors;

namespace Cas.Training;

/// <summary>
/// The training loss of one position: cross-entropy of the student against the teacher's kept support,
///   L = −Σ_j p_j · log softmax(z)[id_j],   p_j = exp(logProbs[j])  (not renormalised),
/// which equals KL(teacher‖student) on that support up to a constant that does not depend on z. Gradient:
///   dL/dz = softmax(z) · Σ_j p_j − scatter(ids, p).
/// PyTorch: -(lp.exp() * torch.log_softmax(z, -1)[ids]).sum()
/// </summary>
public static class DistillationLoss
{
    /// <summary>
    /// Returns L for one position. When <paramref name="dLogits"/> is not empty it receives gradScale · dL/dz;
    /// it may be the same memory as <paramref name="logits"/> (the logits are read before they are overwritten).
    /// </summary>
    public static float Compute(ReadOnlySpan<float> logits, ReadOnlySpan<int> ids, ReadOnlySpan<float> logProbs,
        Span<float> dLogits, float gradScale = 1f)
    {
        if (ids.Length != logProbs.Length) throw new ArgumentException("ids and logProbs must have the same length.");
        if (!dLogits.IsEmpty && dLogits.Length != logits.Length) throw new ArgumentException("dLogits must be as long as logits.");
        float max = TensorPrimitives.Max(logits);

        // Σ p_j (z_j − max) and Σ p_j, read before dLogits (possibly the same memory) is written.
        double pz = 0, pSum = 0;
        for (int j = 0; j < ids.Length; j++)
        {
            double pj = Math.Exp(logProbs[j]);
            pz += pj * (logits[ids[j]] - max);
            pSum += pj;
        }

        double sum;
        if (dLogits.IsEmpty)
            sum = SumExpShifted(logits, max);
        else
        {
            TensorPrimitives.Subtract(logits, max, dLogits);
            TensorPrimitives.Exp(dLogits, dLogits);
            sum = TensorPrimitives.Sum(dLogits);
        }
        double logZ = Math.Log(sum); // log Σ exp(z − max)
        float loss = (float)(pSum * logZ - pz);

        if (!dLogits.IsEmpty)
        {
            TensorPrimitives.Multiply(dLogits, (float)(gradScale * pSum / sum), dLogits);
            for (int j = 0; j < ids.Length; j++)
                dLogits[ids[j]] -= (float)(gradScale * Math.Exp(logProbs[j]));
        }
        return loss;
    }

    /// <summary>Σ exp(z − max) without a destination buffer (chunks on the stack).</summary>
    static double SumExpShifted(ReadOnlySpan<float> z, float max)
    {
        Span<float> tmp = stackalloc float[512];
        double sum = 0;
        for (int i = 0; i < z.Length; i += tmp.Length)
        {
            int n = Math.Min(tmp.Length, z.Length - i);
            var t = tmp.Slice(0, n);
            TensorPrimitives.Subtract(z.Slice(i, n), max, t);
            TensorPrimitives.Exp(t, t);
            sum += TensorPrimitives.Sum(t);
        }
        return sum;
    }
}
