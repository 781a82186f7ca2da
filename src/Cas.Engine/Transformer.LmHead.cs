using System.Numerics.Tensors;
using Cas.Engine.Compute;

namespace Cas.Engine;

/// <summary>
/// The LM head, logits = W_head · RMSNorm(x), forward and backward: logits of chosen rows for generation and
/// evaluation, the pooled RMSNorm(x) for dense retrieval, and for training the sparse distillation loss (<see cref="DistillationLoss"/>) with its gradient.
/// </summary>
public sealed partial class Transformer
{
    // Training LM head blocks: [B, vocab], [B, dim], [B, dim], [B], [B] with B = LmHeadRows.
    float[] _logits = [], _xb = [], _dxb = [], _invF = [], _rowLoss = [];
    int[] _tRow = [], _tSeq = [], _tPos = [];   // [cap] target rows of the current training batch

    /// <summary>Logits of every row: dst [rows, vocab] (the inference buffers' Xn is scratch).</summary>
    void AllLogits(float[] x, int rows, Span<float> dst)
    {
        NormRows(x, _w.FinalNorm, rows, _inference.Xn, null);
        Ops.Linear(_inference.Xn.AsSpan(0, rows * _c.Dim), rows, _w.LmHead, _c.VocabSize, _c.Dim, dst);
    }

    /// <summary>sum += Σ_r RMSNorm_final(x[r]) over the rows: what the LM head would read, pooled (the inference buffers' Xn is scratch).</summary>
    void SumFinalNormed(float[] x, int rows, Span<float> sum)
    {
        int dim = _c.Dim;
        NormRows(x, _w.FinalNorm, rows, _inference.Xn, null);
        for (int r = 0; r < rows; r++)
            TensorPrimitives.Add(sum, _inference.Xn.AsSpan(r * dim, dim), sum);
    }

    /// <summary>
    /// LM head for the last row of every segment that ends its sequence. The rows are gathered and
    /// multiplied in one product when their sequences are consecutive (the decode case), so the
    /// [vocab, dim] head is read once per step rather than once per sequence.
    /// </summary>
    void LastTokenLogits(Span<float> lastLogits)
    {
        int dim = _c.Dim, vocab = _c.VocabSize, n = 0, firstSeq = -1;
        var x = _inference.XOut; var xn = _inference.Xn;
        bool consecutive = true;
        foreach (var sg in _segments)
        {
            if (!sg.EndsSequence) continue;
            if (n == 0) firstSeq = sg.Seq; else if (sg.Seq != firstSeq + n) consecutive = false;
            int r = sg.Row + sg.Count - 1;
            Ops.RmsNorm(x.AsSpan(r * dim, dim), _w.FinalNorm, _c.NormEps, xn.AsSpan(n * dim, dim));
            n++;
        }
        if (n == 0) return;
        if (consecutive)
        {
            Ops.Linear(xn.AsSpan(0, n * dim), n, _w.LmHead, vocab, dim, lastLogits.Slice(firstSeq * vocab, n * vocab));
            return;
        }
        int i = 0;
        foreach (var sg in _segments)
        {
            if (!sg.EndsSequence) continue;
            Ops.Linear(xn.AsSpan(i * dim, dim), 1, _w.LmHead, vocab, dim, lastLogits.Slice(sg.Seq * vocab, vocab));
            i++;
        }
    }

    /// <summary>
    /// Training head: LM head and <see cref="DistillationLoss"/> on the batch's target rows of the final residual x, in
    /// blocks of <see cref="LmHeadRows"/>. With grad, also writes the gradient of (loss sum · gradScale) with respect to
    /// x into _dx (the backward pass starts there). Returns the loss sum.
    /// </summary>
    double SparseHead(float[] x, int rows, bool grad, float gradScale)
    {
        int dim = _c.Dim, vocab = _c.VocabSize, n = LastTargetPositions, B = LmHeadRows;
        float eps = _c.NormEps;
        if (grad) Array.Clear(_dx, 0, rows * dim);
        double sum = 0;
        var batch = _batch;
        for (int b0 = 0; b0 < n; b0 += B)
        {
            int nb = Math.Min(B, n - b0);
            Ops.ParallelRows(nb, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                    _invF[i] = Ops.RmsNorm(x.AsSpan(_tRow[b0 + i] * dim, dim), _w.FinalNorm, eps, _xb.AsSpan(i * dim, dim));
            });
            Mark(DecoderPhase.Elementwise);
            Ops.Linear(_xb.AsSpan(0, nb * dim), nb, _w.LmHead, vocab, dim, _logits.AsSpan(0, nb * vocab));
            Mark(DecoderPhase.LmHead);
            Ops.ParallelRows(nb, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                {
                    var sq = batch[_tSeq[b0 + i]]; int t = _tPos[b0 + i];
                    var z = _logits.AsSpan(i * vocab, vocab);
                    _rowLoss[i] = DistillationLoss.Compute(z, sq.IdsAt(t), sq.LogProbsAt(t), grad ? z : default, gradScale);
                }
            });
            for (int i = 0; i < nb; i++) sum += _rowLoss[i];
            Mark(DecoderPhase.Loss);
            if (!grad) continue;
            // dxn = dlogits · W   ([nb, vocab] · [vocab, dim])
            WeightProduct.Times(_logits, vocab, nb, _w.LmHead, vocab, dim, 0f, _dxb, dim);
            Mark(DecoderPhase.LmHead);
            Ops.ParallelRows(nb, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                {
                    int r = _tRow[b0 + i];
                    Ops.RmsNormBackward(x.AsSpan(r * dim, dim), _invF[i], _w.FinalNorm, _dxb.AsSpan(i * dim, dim), _dx.AsSpan(r * dim, dim), accumulate: false);
                }
            });
        }
        return sum;
    }
}

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
