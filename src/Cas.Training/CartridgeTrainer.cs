using System.Diagnostics;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;

namespace Cas.Training;

/// <summary>After each step: where the run stands.</summary>
/// <param name="Loss">Mean loss per target token of this step's batch (before its update).</param>
/// <param name="ExcessLoss">
/// Loss minus the teacher's entropy −Σ p·log p on the same batch: the KL divergence to the teacher on its kept support,
/// 0 when the student matches the teacher (slightly negative is possible when the kept mass s &lt; 1: the bound is s·log s).
/// Equals Loss for next-token data.</param>
/// <param name="GradNorm">Global gradient norm before clipping.</param>
public readonly record struct TrainingProgress(
    int Step, int TotalSteps, float Loss, double ExcessLoss, float LearningRate, double GradNorm,
    double TokensPerSecond, TimeSpan Elapsed, TimeSpan Eta, bool Checkpointed);

/// <summary>What a call to <see cref="CartridgeTrainer.Run"/> did.</summary>
public sealed record TrainingResult(
    int Steps, bool Finished, double? InitialLoss, double? FinalLoss, double? HeldOutInitial, double? HeldOutFinal,
    long Tokens, TimeSpan Elapsed)
{
    public double TokensPerSecond => Elapsed.TotalSeconds > 0 ? Tokens / Elapsed.TotalSeconds : 0;
}

/// <summary>Training stopped because the loss or the gradient stopped being finite.</summary>
public sealed class TrainingDivergedException : CasException
{
    public TrainingDivergedException(string message) : base(message) { }
}

/// <summary>
/// Trains a cartridge against a frozen model by context distillation (or next-token prediction, depending on the
/// examples' targets). Each step packs <see cref="TrainingOptions.BatchSize"/> examples per micro-batch, sums the gradients
/// of <see cref="TrainingOptions.Accumulate"/> micro-batches (loss normalised per target token over all of them), clips
/// the global gradient norm, and takes one AdamW step with the scheduled learning rate; frozen slots never change.
/// Checkpoints are written atomically every <see cref="TrainingOptions.CheckpointEvery"/> steps; a resumed run repeats
/// the uninterrupted one bit for bit (same batches, same arithmetic).
/// Not thread-safe; one trainer per run.
/// </summary>
public sealed class CartridgeTrainer
{
    readonly Model _model;

    public CartridgeTrainer(Model model) => _model = model ?? throw new ArgumentNullException(nameof(model));

    /// <summary>How many recent steps <see cref="TrainingResult.FinalLoss"/> averages.</summary>
    public static int FinalLossWindow(int steps) => Math.Clamp(steps / 10, 1, 10);

    /// <summary>
    /// Runs <paramref name="state"/> until its last step (or until <paramref name="stopAfterStep"/> updates are done, or
    /// cancellation, which first writes a checkpoint). When <paramref name="heldOut"/> is given, its loss is measured
    /// before the first step and after the last one. Updates the cartridge's metadata (steps, losses) as it goes.
    /// </summary>
    public TrainingResult Run(TrainingState state, TrainingExamples data, TrainingExamples? heldOut = null, string? checkpointPath = null,
        Action<TrainingProgress>? progress = null, int stopAfterStep = int.MaxValue, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(state); ArgumentNullException.ThrowIfNull(data);
        var o = state.Options;
        var prefix = state.Cartridge.Prefix;
        var cfg = _model.Config;
        if (prefix.Layers != cfg.Layers || prefix.KvHeads != cfg.KvHeads || prefix.HeadDim != cfg.HeadDim)
            throw new CartridgeMismatchException($"the cartridge's KV shape (layers {prefix.Layers}, kv_heads {prefix.KvHeads}, head_dim {prefix.HeadDim}) does not fit the model (layers {cfg.Layers}, kv_heads {cfg.KvHeads}, head_dim {cfg.HeadDim}).");
        if (data.Fingerprint != state.DataFingerprint) state.EnsureSameRun(o, data, checkpointPath);
        int longest = Math.Max(data.MaxLength, heldOut?.MaxLength ?? 0);
        if (prefix.Length + longest > cfg.MaxSeqLen)
            throw new InvalidRequestException(
                $"the cartridge's {prefix.Length} slots plus the longest example ({longest} tokens) need {prefix.Length + longest} positions but the model's context is {cfg.MaxSeqLen}; use a smaller --tokens or shorter examples.");

        var backprop = new CartridgeBackprop(_model, Math.Max(1, o.BatchSize * data.MaxLength));
        var grads = new float[state.Parameters.Count][];
        for (int a = 0; a < grads.Length; a++) grads[a] = new float[state.Parameters[a].Length];
        var dKeys = new float[prefix.Layers][]; var dValues = new float[prefix.Layers][];
        for (int l = 0; l < prefix.Layers; l++) { dKeys[l] = grads[2 * l]; dValues[l] = grads[2 * l + 1]; }
        var ranges = state.Optimizer.Trainable;
        var schedule = o.CreateSchedule();
        var order = new DataOrder(data.Count, o.Seed);
        var micro = new List<TrainingSequence>[o.Accumulate];
        for (int a = 0; a < micro.Length; a++) micro[a] = new List<TrainingSequence>(o.BatchSize);

        if (heldOut != null && state.Step == 0 && state.HeldOutInitial == null)
            state.HeldOutInitial = Evaluate(prefix, heldOut, o.BatchSize);

        var clock = Stopwatch.StartNew();
        long tokens = 0;
        int firstStep = state.Step;
        try
        {
            while (state.Step < o.Steps && state.Step < stopAfterStep)
            {
                cancel.ThrowIfCancellationRequested();
                var cursor = state.Cursor;
                int divisor = 0;
                double entropy = 0;
                for (int a = 0; a < micro.Length; a++)
                {
                    micro[a].Clear();
                    for (int b = 0; b < o.BatchSize; b++)
                    {
                        int index = order.Next(ref cursor);
                        var ex = data[index];
                        entropy += data.EntropySum(index);
                        micro[a].Add(ex);
                        divisor += ex.Targets.TargetPositions;
                        tokens += ex.Tokens.Length;
                    }
                }
                double lossSum = 0;
                for (int a = 0; a < micro.Length; a++)
                {
                    backprop.LossAndGradient(prefix, micro[a], dKeys, dValues, accumulate: a > 0, divisor: divisor);
                    lossSum += backprop.LastLossSum;
                }
                float loss = (float)(lossSum / divisor);
                double norm = GradientClipping.Clip(grads, ranges, o.ClipNorm);
                if (!float.IsFinite(loss) || !double.IsFinite(norm))
                    throw new TrainingDivergedException(
                        $"step {state.Step + 1}: the {(float.IsFinite(loss) ? "gradient norm" : "loss")} is {(float.IsFinite(loss) ? norm : loss)}; training diverged. " +
                        "The last checkpoint is intact; lower --lr or check the data.");
                float lr = schedule.At(state.Step);
                state.Optimizer.Update(state.Parameters, grads, lr);
                state.Cursor = cursor;
                state.Losses.Add(loss);
                UpdateMetadata(state);

                bool checkpointed = false;
                if (checkpointPath != null && o.CheckpointEvery > 0 && state.Step % o.CheckpointEvery == 0)
                {
                    state.SaveCheckpoint(checkpointPath);
                    checkpointed = true;
                }
                if (progress != null)
                {
                    var elapsed = clock.Elapsed;
                    int done = state.Step - firstStep;
                    var eta = TimeSpan.FromSeconds(elapsed.TotalSeconds / done * (o.Steps - state.Step));
                    progress(new TrainingProgress(state.Step, o.Steps, loss, (lossSum - entropy) / divisor, lr, norm, tokens / Math.Max(1e-9, elapsed.TotalSeconds), elapsed, eta, checkpointed));
                }
            }
        }
        catch (OperationCanceledException) when (checkpointPath != null && state.Step > firstStep)
        {
            state.SaveCheckpoint(checkpointPath);
            throw;
        }

        double? heldOutFinal = null;
        if (heldOut != null && state.Finished)
        {
            heldOutFinal = Evaluate(prefix, heldOut, o.BatchSize);
            state.Cartridge.HeldOutLoss = heldOutFinal;
        }
        clock.Stop();
        return new TrainingResult(state.Step, state.Finished, state.Cartridge.InitialLoss, state.Cartridge.FinalLoss,
            state.HeldOutInitial, heldOutFinal, tokens, clock.Elapsed);
    }

    /// <summary>Mean loss per target token of <paramref name="prefix"/> over all of <paramref name="examples"/>.</summary>
    public double Evaluate(KvPrefix prefix, TrainingExamples examples, int batchSize = 8)
    {
        ArgumentNullException.ThrowIfNull(prefix); ArgumentNullException.ThrowIfNull(examples);
        var bp = new CartridgeBackprop(_model, Math.Max(1, batchSize * examples.MaxLength), training: false);
        var batch = new List<TrainingSequence>(batchSize);
        double sum = 0;
        for (int i = 0; i < examples.Count; i += batchSize)
        {
            batch.Clear();
            for (int j = i; j < Math.Min(examples.Count, i + batchSize); j++) batch.Add(examples[j]);
            bp.Loss(prefix, batch);
            sum += bp.LastLossSum;
        }
        return sum / examples.TargetPositions;
    }

    static void UpdateMetadata(TrainingState state)
    {
        var c = state.Cartridge;
        var losses = state.Losses;
        c.StepsTrained = state.Step;
        c.InitialLoss = losses.Count > 0 ? losses[0] : null;
        int w = FinalLossWindow(losses.Count);
        double sum = 0;
        for (int i = losses.Count - w; i < losses.Count; i++) sum += losses[i];
        c.FinalLoss = losses.Count > 0 ? sum / w : null;
    }
}
