using Cas.Engine;

namespace Cas.Training;

/// <summary>
/// One training sequence: the input tokens the student sees after the cartridge, and per position the
/// distillation targets for the next token.
/// </summary>
public sealed record TrainingSequence
{
    public TrainingSequence(int[] Tokens, SparseTargets Targets)
    {
        ArgumentNullException.ThrowIfNull(Tokens); ArgumentNullException.ThrowIfNull(Targets);
        if (Targets.Length != Tokens.Length)
            throw new InvalidRequestException($"training sequence: {Tokens.Length} tokens but targets for {Targets.Length} positions; they must match.");
        this.Tokens = Tokens; this.Targets = Targets;
    }

    public int[] Tokens { get; }
    public SparseTargets Targets { get; }

    public void Deconstruct(out int[] tokens, out SparseTargets targets) { tokens = Tokens; targets = Targets; }

    /// <summary>A sequence trained on its own next tokens (NTP), optionally only for positions in [start, end).</summary>
    public static TrainingSequence NextToken(int[] tokens, int start = 0, int end = int.MaxValue) =>
        new(tokens, SparseTargets.NextToken(tokens, start, end));
}
