using Cas.Engine.Models;

namespace Cas.Training.Tests.Training;

/// <summary>
/// A deliberately plain float64 forward of the Llama/Qwen2/Qwen3 family with a KV prefix, written
/// independently of the engine's kernels (loops only), for finite-difference and loss checks.
/// </summary>
static class Reference64
{
    /// <summary>Mean over target positions of −Σ p_j log softmax(z)[id_j]; prefix K/V as [layer][kv_heads, p, head_dim].</summary>
    public static double Loss(Model m, double[][] pk, double[][] pv, int p, IReadOnlyList<TrainingSequence> batch)
    {
        double sum = 0; int count = 0;
        foreach (var s in batch) sum += SequenceLoss(m, pk, pv, p, s, ref count);
        return sum / count;
    }

    static double SequenceLoss(Model m, double[][] pk, double[][] pv, int p, TrainingSequence s, ref int count)
    {
        var c = m.Config; var W = m.Weights;
        int T = s.Tokens.Length, D = c.Dim, hd = c.HeadDim, H = c.Heads, G = c.KvHeads, F = c.HiddenDim, group = H / G;
        var x = new double[T, D];
        for (int t = 0; t < T; t++) for (int i = 0; i < D; i++) x[t, i] = W.TokenEmbedding[s.Tokens[t] * D + i];

        for (int l = 0; l < c.Layers; l++)
        {
            var w = W.Layers[l];
            var xn = Norm(x, w.AttnNorm, c.NormEps);
            var q = Lin(xn, w.Wq, c.QDim, w.Bq); var k = Lin(xn, w.Wk, c.KvDim, w.Bk); var v = Lin(xn, w.Wv, c.KvDim, w.Bv);
            for (int t = 0; t < T; t++)
            {
                for (int h = 0; h < H; h++) { if (w.QNorm != null) HeadNorm(q, t, h * hd, hd, w.QNorm, c.NormEps); Rope(c, q, t, h * hd, p + t); }
                for (int g = 0; g < G; g++) { if (w.KNorm != null) HeadNorm(k, t, g * hd, hd, w.KNorm, c.NormEps); Rope(c, k, t, g * hd, p + t); }
            }
            var att = new double[T, c.QDim];
            for (int h = 0; h < H; h++)
            {
                int g = h / group;
                for (int i = 0; i < T; i++)
                {
                    int L = p + i + 1;
                    var sc = new double[L];
                    for (int j = 0; j < L; j++)
                    {
                        double d = 0;
                        for (int e = 0; e < hd; e++)
                            d += q[i, h * hd + e] * (j < p ? pk[l][(g * p + j) * hd + e] : k[j - p, g * hd + e]);
                        sc[j] = d / Math.Sqrt(hd);
                    }
                    double mx = sc.Max(), z = 0;
                    for (int j = 0; j < L; j++) { sc[j] = Math.Exp(sc[j] - mx); z += sc[j]; }
                    for (int j = 0; j < L; j++)
                        for (int e = 0; e < hd; e++)
                            att[i, h * hd + e] += sc[j] / z * (j < p ? pv[l][(g * p + j) * hd + e] : v[j - p, g * hd + e]);
                }
            }
            Add(x, Lin(att, w.Wo, D, null));
            var xn2 = Norm(x, w.FfnNorm, c.NormEps);
            var gate = Lin(xn2, w.WGate, F, null); var up = Lin(xn2, w.WUp, F, null);
            for (int t = 0; t < T; t++) for (int i = 0; i < F; i++) gate[t, i] = gate[t, i] / (1 + Math.Exp(-gate[t, i])) * up[t, i];
            Add(x, Lin(gate, w.WDown, D, null));
        }
        var xf = Norm(x, W.FinalNorm, c.NormEps);
        var logits = Lin(xf, W.LmHead, c.VocabSize, null);
        double loss = 0;
        for (int t = 0; t < T; t++)
        {
            if (!s.Targets.HasTarget(t)) continue;
            count++;
            double mx = double.NegativeInfinity;
            for (int i = 0; i < c.VocabSize; i++) mx = Math.Max(mx, logits[t, i]);
            double z = 0;
            for (int i = 0; i < c.VocabSize; i++) z += Math.Exp(logits[t, i] - mx);
            double logZ = mx + Math.Log(z);
            var ids = s.Targets.IdsAt(t); var lps = s.Targets.LogProbsAt(t);
            for (int j = 0; j < ids.Length; j++) loss -= Math.Exp(lps[j]) * (logits[t, ids[j]] - logZ);
        }
        return loss;
    }

    static double[,] Norm(double[,] x, float[] w, float eps)
    {
        int T = x.GetLength(0), D = x.GetLength(1);
        var y = new double[T, D];
        for (int t = 0; t < T; t++)
        {
            double ss = 0;
            for (int i = 0; i < D; i++) ss += x[t, i] * x[t, i];
            double inv = 1 / Math.Sqrt(ss / D + eps);
            for (int i = 0; i < D; i++) y[t, i] = x[t, i] * inv * w[i];
        }
        return y;
    }

    static void HeadNorm(double[,] a, int t, int off, int hd, float[] w, float eps)
    {
        double ss = 0;
        for (int e = 0; e < hd; e++) ss += a[t, off + e] * a[t, off + e];
        double inv = 1 / Math.Sqrt(ss / hd + eps);
        for (int e = 0; e < hd; e++) a[t, off + e] *= inv * w[e];
    }

    /// <summary>y = x · Wᵀ (+ b), W row-major [out, in].</summary>
    static double[,] Lin(double[,] x, float[] W, int outDim, float[]? b)
    {
        int T = x.GetLength(0), inDim = x.GetLength(1);
        var y = new double[T, outDim];
        for (int t = 0; t < T; t++)
            for (int o = 0; o < outDim; o++)
            {
                double d = b?[o] ?? 0;
                for (int i = 0; i < inDim; i++) d += x[t, i] * W[o * inDim + i];
                y[t, o] = d;
            }
        return y;
    }

    static void Add(double[,] x, double[,] y)
    {
        for (int t = 0; t < x.GetLength(0); t++) for (int i = 0; i < x.GetLength(1); i++) x[t, i] += y[t, i];
    }

    /// <summary>Rotary embedding of one head at one position (inv_freq rounded to float32, as Hugging Face computes it).</summary>
    static void Rope(ModelConfig c, double[,] a, int t, int off, int pos)
    {
        int hd = c.HeadDim, half = hd / 2;
        for (int i = 0; i < half; i++)
        {
            double freq = (float)(1.0 / Math.Pow(c.RopeTheta, 2.0 * i / hd));
            double cs = Math.Cos(pos * freq), sn = Math.Sin(pos * freq);
            int i0 = c.Rope == RopeStyle.Halves ? off + i : off + 2 * i;
            int i1 = c.Rope == RopeStyle.Halves ? off + i + half : off + 2 * i + 1;
            double x0 = a[t, i0], x1 = a[t, i1];
            a[t, i0] = x0 * cs - x1 * sn;
            a[t, i1] = x1 * cs + x0 * sn;
        }
    }
}
