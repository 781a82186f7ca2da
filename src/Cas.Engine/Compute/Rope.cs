using Cas.Engine.Models;

namespace Cas.Engine.Compute;

/// <summary>
/// Rotary position embeddings. Frequencies inv_freq[i] = theta^(-2i/head_dim), optionally rescaled
/// Llama-3.1 style; angles are computed in double for each position (no table to outgrow).
/// </summary>
public sealed class Rope
{
    readonly double[] _invFreq; // [head_dim/2]
    public RopeStyle Style { get; }
    public int HeadDim { get; }

    public Rope(ModelConfig c)
    {
        HeadDim = c.HeadDim; Style = c.Rope;
        int half = c.HeadDim / 2;
        _invFreq = new double[half];
        for (int i = 0; i < half; i++)
            // HF computes inv_freq in float32; round the same way so long positions agree.
            _invFreq[i] = (float)(1.0 / Math.Pow(c.RopeTheta, 2.0 * i / c.HeadDim));
        if (c.RopeScaling is { } s) ApplyLlama3Scaling(_invFreq, s);
    }

    static void ApplyLlama3Scaling(double[] invFreq, Llama3RopeScaling s)
    {
        double lowWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
        double highWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
        for (int i = 0; i < invFreq.Length; i++)
        {
            double f = invFreq[i], wavelen = 2 * Math.PI / f;
            if (wavelen < highWavelen) continue;                               // high frequency: unchanged
            if (wavelen > lowWavelen) { invFreq[i] = f / s.Factor; continue; } // low frequency: scaled
            double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
            invFreq[i] = (1 - smooth) * f / s.Factor + smooth * f;
        }
    }

    /// <summary>Fills cos/sin [head_dim/2] for one position.</summary>
    public void Angles(int position, Span<float> cos, Span<float> sin)
    {
        for (int i = 0; i < _invFreq.Length; i++)
        {
            double a = position * _invFreq[i];
            cos[i] = (float)Math.Cos(a); sin[i] = (float)Math.Sin(a);
        }
    }

    /// <summary>Rotates one head vector x[head_dim] in place by the angles of its position.</summary>
    public void Rotate(Span<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = HeadDim / 2;
        if (Style == RopeStyle.Halves)
        {
            for (int i = 0; i < half; i++)
            {
                float x0 = x[i], x1 = x[i + half];
                x[i] = x0 * cos[i] - x1 * sin[i];
                x[i + half] = x1 * cos[i] + x0 * sin[i];
            }
        }
        else
        {
            for (int i = 0; i < half; i++)
            {
                float x0 = x[2 * i], x1 = x[2 * i + 1];
                x[2 * i] = x0 * cos[i] - x1 * sin[i];
                x[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }

    /// <summary>The inverse rotation (rotation by −angle); used by backward passes.</summary>
    public void RotateBack(Span<float> x, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = HeadDim / 2;
        if (Style == RopeStyle.Halves)
        {
            for (int i = 0; i < half; i++)
            {
                float x0 = x[i], x1 = x[i + half];
                x[i] = x0 * cos[i] + x1 * sin[i];
                x[i + half] = x1 * cos[i] - x0 * sin[i];
            }
        }
        else
        {
            for (int i = 0; i < half; i++)
            {
                float x0 = x[2 * i], x1 = x[2 * i + 1];
                x[2 * i] = x0 * cos[i] + x1 * sin[i];
                x[2 * i + 1] = -x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}
