using System.Diagnostics;

namespace Cas.Engine.Compute;

/// <summary>
/// Parts of a decoder call, for profiling: forward projections/MLP SGEMMs, forward attention, forward elementwise work
/// (norms, RoPE, SwiGLU), LM head SGEMMs (forward and backward), the loss over the vocabulary, and the backward
/// counterparts.
/// </summary>
public enum DecoderPhase { Projections, Attention, Elementwise, LmHead, Loss, BackwardProjections, BackwardAttention, BackwardElementwise, Count }

/// <summary>
/// Wall time per <see cref="DecoderPhase"/>: <see cref="Mark"/> charges the time since the previous mark to a phase.
/// Kept out of the math: a decoder without a timer skips the clock entirely.
/// </summary>
public sealed class PhaseTimer
{
    long _mark = Stopwatch.GetTimestamp();

    /// <summary>Seconds per phase so far (index by (int)phase; clear it to restart).</summary>
    public double[] Seconds { get; } = new double[(int)DecoderPhase.Count];

    /// <summary>Starts a new interval without charging the time before it.</summary>
    public void Restart() => _mark = Stopwatch.GetTimestamp();

    public void Mark(DecoderPhase phase)
    {
        long now = Stopwatch.GetTimestamp();
        Seconds[(int)phase] += (now - _mark) / (double)Stopwatch.Frequency;
        _mark = now;
    }
}
