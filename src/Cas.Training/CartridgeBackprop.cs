using Cas.Engine;
using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Training;

/// <summary>
/// Loss and gradient of cartridges (trainable <see cref="KvPrefix"/>es) in front of a FROZEN model, for
/// <see cref="TrainingSequence"/> batches: a thin caller of the engine's decoder (<see cref="Transformer.SparseLoss"/>,
/// <see cref="Transformer.SparseLossAndGradient"/>), which runs the same forward pass as generation and its backward to
/// the prefix K/V. The loss is Σ over target positions of <see cref="DistillationLoss"/>, divided by the batch's target
/// positions (or a given divisor, for micro-batches).
///
/// Two forms: one cartridge in front of every sequence (<see cref="LossAndGradient(KvPrefix, IReadOnlyList{TrainingSequence}, float[][], float[][], bool, int)"/>),
/// or CAS-style batches where sequence i has its own prefix — its gold cartridge alone or composed with distractors —
/// and every trainable cartridge's gradient sums over the sequences that used it
/// (<see cref="LossAndGradient(IReadOnlyList{ComposedPrefix}, IReadOnlyList{TrainingSequence}, IReadOnlyList{KvGradient}, bool, int)"/>).
/// Not thread-safe: one instance per concurrent trainer (instances can share the Model).
/// </summary>
public sealed class CartridgeBackprop
{
    readonly Transformer _t;
    readonly PhaseTimer _timer = new();
    readonly List<PrefixedSequence> _rows = new();

    /// <param name="model">The frozen model.</param>
    /// <param name="maxTokens">Token rows (all sequences of a batch together) to allocate for up front.</param>
    /// <param name="training">False for a loss-only instance (saves one layer's activations instead of all).</param>
    /// <param name="lmHeadRows">Rows per LM head block (bounds the [rows, vocab] logits buffer).</param>
    public CartridgeBackprop(Model model, int maxTokens = 1024, bool training = true, int lmHeadRows = 128)
    {
        if (maxTokens <= 0) throw new ArgumentOutOfRangeException(nameof(maxTokens), "maxTokens must be positive.");
        if (lmHeadRows <= 0) throw new ArgumentOutOfRangeException(nameof(lmHeadRows), "lmHeadRows must be positive.");
        Model = model;
        // maxChunkTokens 1: this decoder is used for training only, so its inference buffers stay one row.
        _t = new Transformer(model, maxChunkTokens: 1) { LmHeadRows = lmHeadRows, Timer = _timer };
        _t.ReserveTraining(maxTokens, training);
        Training = training;
    }

    public Model Model { get; }
    public ModelConfig Config => Model.Config;
    /// <summary>False for a loss-only instance.</summary>
    public bool Training { get; }
    /// <summary>Token rows the activation buffers currently hold.</summary>
    public int MaxTokens => _t.TrainingRows;
    public int LmHeadRows => _t.LmHeadRows;
    /// <summary>Positions with targets in the last call (the default divisor of the loss).</summary>
    public int LastTargetPositions => _t.LastTargetPositions;
    /// <summary>Σ of the per-position losses in the last call (before dividing).</summary>
    public double LastLossSum { get; private set; }

    /// <summary>Seconds spent per <see cref="DecoderPhase"/> by the calls so far (index by (int)phase; clear it to restart).</summary>
    public double[] PhaseSeconds => _timer.Seconds;

    internal int AttentionBlockRows { get => _t.AttentionBlockRows; set => _t.AttentionBlockRows = value; }
    internal int ScoreBufferFloats { get => _t.ScoreBufferFloats; set => _t.ScoreBufferFloats = value; }

    /// <summary>Bytes of the per-token buffers for <paramref name="tokens"/> rows (see <see cref="Transformer.TrainingActivationBytes"/>).</summary>
    public static long ActivationBytes(ModelConfig c, int tokens, bool training = true) => Transformer.TrainingActivationBytes(c, tokens, training);

    /// <summary>Bytes currently held by this instance's training buffers (activations, scratch, LM head block).</summary>
    public long AllocatedBytes => _t.TrainingAllocatedBytes;

    // ------------------------------------------------------------------------------------------------
    // One cartridge in front of every sequence

    /// <summary>
    /// Mean loss over the batch's target positions (or Σ/divisor when <paramref name="divisor"/> &gt; 0),
    /// forward only. Usable on a loss-only instance.
    /// </summary>
    public float Loss(KvPrefix prefix, IReadOnlyList<TrainingSequence> batch, int divisor = 0)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        return Loss(Same(ComposedPrefix.Of(prefix), batch), batch, divisor);
    }

    /// <summary>
    /// Returns the loss (Σ over target positions of <see cref="DistillationLoss"/> / divisor; divisor defaults to
    /// this batch's number of target positions, i.e. the mean per target token) and its gradient with respect to
    /// prefix.Keys and prefix.Values, written to dKeys/dValues (same shapes: [layer][kv_heads, p, head_dim]).
    /// accumulate = false overwrites them; true adds to them (micro-batches: pass the total target positions of
    /// all micro-batches as <paramref name="divisor"/> so the sum of their gradients is the gradient of the global mean).
    /// </summary>
    public float LossAndGradient(KvPrefix prefix, IReadOnlyList<TrainingSequence> batch, float[][] dKeys, float[][] dValues,
        bool accumulate = false, int divisor = 0)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        if (prefix.Layers != Config.Layers || prefix.KvHeads != Config.KvHeads || prefix.HeadDim != Config.HeadDim)
            throw new InvalidRequestException($"cartridge shape (layers {prefix.Layers}, kv_heads {prefix.KvHeads}, head_dim {prefix.HeadDim}) does not match the model (layers {Config.Layers}, kv_heads {Config.KvHeads}, head_dim {Config.HeadDim}).");
        var grad = new KvGradient(prefix, dKeys, dValues);
        return LossAndGradient(Same(ComposedPrefix.Of(prefix), batch), batch, [grad], accumulate, divisor);
    }

    // ------------------------------------------------------------------------------------------------
    // A prefix per sequence (CAS: gold cartridge + distractors)

    /// <summary>
    /// Forward-only loss of a batch where sequence i sits behind <paramref name="prefixes"/>[i]: Σ/divisor (default: the
    /// batch's target positions). Usable on a loss-only instance.
    /// </summary>
    public float Loss(IReadOnlyList<ComposedPrefix> prefixes, IReadOnlyList<TrainingSequence> batch, int divisor = 0)
    {
        double sum = _t.SparseLoss(Rows(prefixes, batch));
        LastLossSum = sum;
        return LastTargetPositions == 0 ? 0f : (float)(sum / (divisor > 0 ? divisor : LastTargetPositions));
    }

    /// <summary>
    /// Loss of a batch where sequence i sits behind <paramref name="prefixes"/>[i] (an ordered list of cartridge
    /// references; keys not re-rotated), and the gradient of that loss with respect to every cartridge in
    /// <paramref name="gradients"/>: each gets the sum over all sequences whose prefix contains it (at whatever offset).
    /// Cartridges of the prefixes without a gradient are frozen. accumulate = false first zeroes every given gradient;
    /// true adds to them. Loss and divisor as in the single-cartridge form.
    /// </summary>
    public float LossAndGradient(IReadOnlyList<ComposedPrefix> prefixes, IReadOnlyList<TrainingSequence> batch,
        IReadOnlyList<KvGradient> gradients, bool accumulate = false, int divisor = 0)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        if (!Training) throw new InvalidOperationException("this CartridgeBackprop was created with training: false; it computes losses only.");
        var rows = Rows(prefixes, batch);
        int targets = 0;
        foreach (var s in batch) targets += s.Targets.TargetPositions;
        if (!accumulate) foreach (var g in gradients) g.Clear();
        float scale = targets == 0 ? 0f : 1f / (divisor > 0 ? divisor : targets);
        double sum = _t.SparseLossAndGradient(rows, gradients, scale);
        LastLossSum = sum;
        return (float)(sum * scale);
    }

    List<PrefixedSequence> Rows(IReadOnlyList<ComposedPrefix> prefixes, IReadOnlyList<TrainingSequence> batch)
    {
        ArgumentNullException.ThrowIfNull(prefixes); ArgumentNullException.ThrowIfNull(batch);
        if (prefixes.Count != batch.Count) throw new ArgumentException($"one prefix per sequence is required ({batch.Count} sequences, {prefixes.Count} prefixes).");
        _rows.Clear();
        for (int s = 0; s < batch.Count; s++)
        {
            var sq = batch[s] ?? throw new ArgumentException($"sequence {s} is null.");
            var t = sq.Targets;
            _rows.Add(new PrefixedSequence(prefixes[s], sq.Tokens, t.Offsets, t.Ids, t.LogProbs));
        }
        return _rows;
    }

    static ComposedPrefix[] Same(ComposedPrefix p, IReadOnlyList<TrainingSequence> batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var a = new ComposedPrefix[batch.Count];
        Array.Fill(a, p);
        return a;
    }

    // ------------------------------------------------------------------------------------------------
    // Work accounting

    /// <summary>
    /// Useful floating-point operations (2 per multiply-add) of one <see cref="LossAndGradient(KvPrefix, IReadOnlyList{TrainingSequence}, float[][], float[][], bool, int)"/>
    /// call: forward projections/MLP and attention over visible (causal) pairs only, LM head forward and backward on the
    /// target positions, and the backward products actually needed (no dq or token dk/dv below layer 0).
    /// Attention probabilities recomputed in backward are counted (they are work done).
    /// </summary>
    public static double StepFlops(ModelConfig c, int prefixLength, IReadOnlyList<int> lengths, int targetPositions)
    {
        double n = 0, visible = 0, prefixPairs = 0;
        foreach (int T in lengths) { n += T; visible += (double)T * prefixLength + T * (T + 1) / 2.0; prefixPairs += (double)T * prefixLength; }
        double qkv = 2.0 * n * c.Dim * (c.QDim + 2.0 * c.KvDim);
        double o = 2.0 * n * c.QDim * c.Dim;
        double mlp = 2.0 * n * 3.0 * c.Dim * c.HiddenDim;
        double attFwd = 4.0 * c.HeadDim * c.Heads * visible;                       // QKᵀ, PV
        double attBwd = 10.0 * c.HeadDim * c.Heads * visible;                      // QKᵀ again, dP, dV, dK, dQ
        double attBwdBottom = 4.0 * c.HeadDim * c.Heads * visible + 4.0 * c.HeadDim * c.Heads * prefixPairs; // QKᵀ, dP; prefix dV, dK
        double head = 2.0 * 2.0 * targetPositions * c.Dim * c.VocabSize;
        double forward = c.Layers * (qkv + o + mlp + attFwd);
        double backward = (c.Layers - 1) * (qkv + o + mlp + attBwd) + (o + mlp + attBwdBottom);
        return forward + backward + head;
    }
}
