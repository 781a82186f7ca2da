using System.Numerics.Tensors;
using Cas.Engine;
using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Training;

/// <summary>
/// Loss and gradient of a cartridge (a trainable <see cref="KvPrefix"/>) in front of a FROZEN
/// Llama/Qwen2/Qwen3 model. Gradients flow through the model to the prefix K and V of every layer only;
/// no weight gradients are formed.
///
/// A batch is several sequences ("packed conversations"). Each attends to the whole prefix and causally
/// to its own tokens; its tokens sit at positions p..p+T_i-1 (p = prefix length), as at inference.
/// All tokens of the batch are stacked as rows of one activation matrix so every projection is one SGEMM.
///
/// Memory: the forward pass saves, per layer and token row, the residual input and mid-block residual,
/// both norms' 1/rms, the rotated q, the k and v, the MLP gate and up pre-activations (and for Qwen3 the
/// pre-norm q/k and their 1/rms): 2·dim + 2 + qd + 2·kvd + 2·hidden floats (+ qd + kvd + heads + kv_heads
/// for Qwen3); see <see cref="ActivationBytes"/>. Attention probabilities are NOT stored: backward recomputes
/// them per KV group in bounded row chunks, which costs one more QKᵀ product but keeps memory linear in the
/// token count. The LM head runs in blocks of <see cref="LmHeadRows"/> rows, only on positions that have
/// targets, so the [rows, vocab] buffer stays bounded.
///
/// Work: every large product is a <see cref="Blas.Sgemm"/> call (BLAS uses all cores); row-wise elementwise
/// work (norms, RoPE, softmax, SwiGLU) is TensorPrimitives split over the cores. Backward forms input
/// gradients only: dxn = dq·Wq + dk·Wk + dv·Wv etc. as accumulating SGEMMs; below layer 0 nothing but the
/// prefix gradient is computed.
///
/// Buffers are allocated once for <see cref="MaxTokens"/> rows and grow (once) if a larger batch arrives.
/// Not thread-safe: one instance per concurrent trainer (instances can share the Model).
/// </summary>
public sealed class CartridgeBackprop
{
    readonly ModelConfig _c;
    readonly ModelWeights _w;
    readonly Rope _rope;
    readonly bool _training;

    int _cap;                   // token rows the buffers hold
    LayerSaves[] _saves = [];   // [layers] when training, [1] for loss-only use
    float[] _xF = [];           // [cap, dim]  residual after the last layer
    float[] _cos = [], _sin = []; // [cap, head_dim/2]
    float[] _xn = [];           // [cap, dim]  normed block input
    float[] _att = [];          // [cap, qd]   attention output (before o_proj)
    float[] _h = [];            // [cap, hidden] silu(gate)·up
    // backward
    float[] _dx = [], _dxn = [];   // [cap, dim]
    float[] _dg = [], _du = [];    // [cap, hidden]
    float[] _dAtt = [], _dq = [];  // [cap, qd]
    float[] _dk = [], _dv = [];    // [cap, kvd]
    // LM head blocks
    readonly float[] _logits, _xb, _dxb, _invF, _rowLoss; // [B, vocab], [B, dim], [B, dim], [B], [B]
    int[] _tRow = [], _tSeq = [], _tPos = [];           // [cap] target rows of the current batch
    // attention scratch: S and dP chunks [chunk rows, p + longest T]; packed q, o (or dO) and dq of one KV group
    // [rows·group, head_dim]. They grow to the largest batch seen.
    float[] _s = [], _dp = [], _qp = [], _op = [], _dqp = [];

    readonly List<Seq> _seqs = new();
    record struct Seq(int Row, int Count);

    // Attention work layout of the current batch. For one KV group, the queries of all its heads and all token rows
    // are packed as rows r·group + j (token row r, j-th head of the group). A unit is a block of consecutive tokens
    // [T0, T1) of one sequence (its packed rows are contiguous); a chunk is a run of consecutive units whose
    // score rows fit the S buffer. The prefix part of every product runs once per chunk (one large SGEMM), the
    // token part once per unit (the unit sees its sequence's tokens 0..T1-1 only: the causal triangle beyond it is skipped).
    readonly List<Unit> _units = new();
    readonly List<Chunk> _chunks = new();
    record struct Unit(int Seq, int T0, int T1, int Rho, int M);      // Rho: first packed row; M: packed rows
    record struct Chunk(int FirstUnit, int Units, int Rho, int M);
    int[] _tIdx = [];  // [cap] position of each token row within its sequence
    int _ld;           // row stride of the S/dP buffers: p + longest sequence
    /// <summary>S and dP chunks hold at most this many floats each (unless one unit needs more). Tests set it small.</summary>
    internal int ScoreBufferFloats { get; set; } = 4 << 20;

    /// <summary>Seconds spent per <see cref="Phase"/> by the calls so far (index by (int)phase; clear it to restart).</summary>
    public double[] PhaseSeconds { get; } = new double[(int)Phase.Count];

    /// <summary>
    /// Parts of a call: forward projections/MLP SGEMMs, forward attention, forward elementwise work (norms, RoPE, SwiGLU),
    /// LM head SGEMMs (forward and backward), the loss over the vocabulary, and the backward counterparts.
    /// </summary>
    public enum Phase { Projections, Attention, Elementwise, LmHead, Loss, BackwardProjections, BackwardAttention, BackwardElementwise, Count }
    long _mark;
    void Mark(Phase p) { long now = System.Diagnostics.Stopwatch.GetTimestamp(); PhaseSeconds[(int)p] += (now - _mark) / (double)System.Diagnostics.Stopwatch.Frequency; _mark = now; }

    sealed class LayerSaves
    {
        public required float[] XIn, XMid, Inv1, Inv2, Q, K, V, Gate, Up;
        public float[]? QPre, KPre, QInv, KInv; // Qwen3 q/k norm
    }

    /// <param name="model">The frozen model.</param>
    /// <param name="maxTokens">Token rows (all sequences of a batch together) to allocate for up front.</param>
    /// <param name="training">False for a loss-only instance (saves one layer's activations instead of all).</param>
    /// <param name="lmHeadRows">Rows per LM head block (bounds the [rows, vocab] logits buffer).</param>
    public CartridgeBackprop(Model model, int maxTokens = 1024, bool training = true, int lmHeadRows = 128)
    {
        if (maxTokens <= 0) throw new ArgumentOutOfRangeException(nameof(maxTokens), "maxTokens must be positive.");
        if (lmHeadRows <= 0) throw new ArgumentOutOfRangeException(nameof(lmHeadRows), "lmHeadRows must be positive.");
        Model = model; _c = model.Config; _w = model.Weights; _rope = new Rope(_c); _training = training;
        LmHeadRows = lmHeadRows;
        _logits = GC.AllocateUninitializedArray<float>(lmHeadRows * _c.VocabSize);
        _xb = new float[lmHeadRows * _c.Dim]; _dxb = new float[lmHeadRows * _c.Dim];
        _invF = new float[lmHeadRows]; _rowLoss = new float[lmHeadRows];
        Grow(maxTokens);
    }

    public Model Model { get; }
    public ModelConfig Config => _c;
    /// <summary>Token rows the activation buffers currently hold.</summary>
    public int MaxTokens => _cap;
    public int LmHeadRows { get; }
    /// <summary>Positions with targets in the last call (the default divisor of the loss).</summary>
    public int LastTargetPositions { get; private set; }
    /// <summary>Σ of the per-position losses in the last call (before dividing).</summary>
    public double LastLossSum { get; private set; }

    /// <summary>
    /// Bytes of the per-token buffers for <paramref name="tokens"/> rows (planning estimate). Not included: the attention
    /// score chunks (2 × at most 16 MiB), the LM head block (lmHeadRows × vocab floats) and small per-row index arrays.
    /// </summary>
    public static long ActivationBytes(ModelConfig c, int tokens, bool training = true)
    {
        long perLayer = (training ? 2L : 1L) * c.Dim + 2 + c.QDim + 2L * c.KvDim + 2L * c.HiddenDim;
        if (c.QkNorm) perLayer += c.QDim + c.KvDim + c.Heads + c.KvHeads;
        long saves = (training ? c.Layers : 1) * perLayer;
        long packed = (long)c.QDim / c.KvHeads;
        long scratch = c.HeadDim + c.Dim + c.QDim + c.HiddenDim + 2 * packed; // cos/sin, xn, att, h, packed q/o
        if (training) scratch += c.Dim + 2L * c.Dim + 2L * c.HiddenDim + 2L * c.QDim + 2L * c.KvDim + packed; // xF, dx/dxn, dg/du, dAtt/dq, dk/dv, dq packed
        return 4L * tokens * (saves + scratch);
    }

    /// <summary>Bytes currently held by this instance's float buffers (activations, scratch, LM head block).</summary>
    public long AllocatedBytes
    {
        get
        {
            long n = 0;
            foreach (var sv in _saves)
                foreach (var a in new[] { sv.XIn, sv.XMid, sv.Inv1, sv.Inv2, sv.Q, sv.K, sv.V, sv.Gate, sv.Up, sv.QPre, sv.KPre, sv.QInv, sv.KInv })
                    n += a?.Length ?? 0;
            foreach (var a in new[] { _xF, _cos, _sin, _xn, _att, _h, _dx, _dxn, _dg, _du, _dAtt, _dq, _dk, _dv, _logits, _xb, _dxb, _invF, _rowLoss, _s, _dp, _qp, _op, _dqp })
                n += a.Length;
            return 4 * n;
        }
    }

    void Grow(int rows)
    {
        if (rows <= _cap) return;
        int C = rows, dim = _c.Dim, qd = _c.QDim, kvd = _c.KvDim, hidden = _c.HiddenDim, half = _c.HeadDim / 2;
        static float[] A(long n) => GC.AllocateUninitializedArray<float>(checked((int)n));
        _saves = new LayerSaves[_training ? _c.Layers : 1];
        for (int l = 0; l < _saves.Length; l++)
            _saves[l] = new LayerSaves
            {
                XIn = A((long)C * dim), XMid = _training ? A((long)C * dim) : [], Inv1 = A(C), Inv2 = A(C),
                Q = A((long)C * qd), K = A((long)C * kvd), V = A((long)C * kvd),
                Gate = A((long)C * hidden), Up = A((long)C * hidden),
                QPre = _c.QkNorm ? A((long)C * qd) : null, KPre = _c.QkNorm ? A((long)C * kvd) : null,
                QInv = _c.QkNorm ? A((long)C * _c.Heads) : null, KInv = _c.QkNorm ? A((long)C * _c.KvHeads) : null,
            };
        _xF = _training ? A((long)C * dim) : [];
        _cos = A((long)C * half); _sin = A((long)C * half);
        _xn = A((long)C * dim); _att = A((long)C * qd); _h = A((long)C * hidden);
        if (_training)
        {
            _dx = A((long)C * dim); _dxn = A((long)C * dim);
            _dg = A((long)C * hidden); _du = A((long)C * hidden);
            _dAtt = A((long)C * qd); _dq = A((long)C * qd);
            _dk = A((long)C * kvd); _dv = A((long)C * kvd);
        }
        _tRow = new int[C]; _tSeq = new int[C]; _tPos = new int[C]; _tIdx = new int[C];
        _cap = C;
    }

    // ------------------------------------------------------------------------------------------------
    // Public entry points

    /// <summary>
    /// Mean loss over the batch's target positions (or Σ/divisor when <paramref name="divisor"/> &gt; 0),
    /// forward only. Usable on a loss-only instance.
    /// </summary>
    public float Loss(KvPrefix prefix, IReadOnlyList<TrainingSequence> batch, int divisor = 0)
    {
        int rows = Prepare(prefix, batch, null, null);
        if (rows == 0 || LastTargetPositions == 0) { LastLossSum = 0; return 0f; }
        _mark = System.Diagnostics.Stopwatch.GetTimestamp();
        var x = Forward(prefix, rows, save: false);
        double sum = Head(x, rows, grad: false, 0f);
        LastLossSum = sum;
        return (float)(sum / (divisor > 0 ? divisor : LastTargetPositions));
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
        if (!_training) throw new InvalidOperationException("this CartridgeBackprop was created with training: false; it computes losses only.");
        int rows = Prepare(prefix, batch, dKeys, dValues);
        if (!accumulate)
            for (int l = 0; l < _c.Layers; l++) { Array.Clear(dKeys[l]); Array.Clear(dValues[l]); }
        if (rows == 0 || LastTargetPositions == 0) { LastLossSum = 0; return 0f; }
        float inv = 1f / (divisor > 0 ? divisor : LastTargetPositions);
        _mark = System.Diagnostics.Stopwatch.GetTimestamp();
        var x = Forward(prefix, rows, save: true);
        double sum = Head(x, rows, grad: true, inv);
        LastLossSum = sum;
        Backward(prefix, rows, dKeys, dValues);
        return (float)(sum * inv);
    }

    /// <summary>Validates the call, lays the sequences out as rows, fills RoPE angles and embeddings. Returns the row count.</summary>
    int Prepare(KvPrefix prefix, IReadOnlyList<TrainingSequence> batch, float[][]? dKeys, float[][]? dValues)
    {
        ArgumentNullException.ThrowIfNull(prefix); ArgumentNullException.ThrowIfNull(batch);
        if (prefix.Layers != _c.Layers || prefix.KvHeads != _c.KvHeads || prefix.HeadDim != _c.HeadDim)
            throw new InvalidRequestException($"cartridge shape (layers {prefix.Layers}, kv_heads {prefix.KvHeads}, head_dim {prefix.HeadDim}) does not match the model (layers {_c.Layers}, kv_heads {_c.KvHeads}, head_dim {_c.HeadDim}).");
        if (dKeys != null || dValues != null)
        {
            if (dKeys == null || dValues == null || dKeys.Length != _c.Layers || dValues.Length != _c.Layers)
                throw new ArgumentException($"dKeys and dValues need one array per layer ({_c.Layers}).");
            int need = _c.KvHeads * prefix.Length * _c.HeadDim;
            for (int l = 0; l < _c.Layers; l++)
                if (dKeys[l].Length != need || dValues[l].Length != need)
                    throw new ArgumentException($"gradient layer {l}: dK/dV must hold kv_heads*p*head_dim = {need} floats like the prefix.");
        }
        int p = prefix.Length, rows = 0, targets = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            var seq = batch[s];
            int T = seq.Tokens.Length;
            if (p + T > _c.MaxSeqLen)
                throw new InvalidRequestException($"sequence {s}: cartridge {p} + {T} tokens = {p + T} positions exceeds the model's context {_c.MaxSeqLen}; shorten the sequence or the cartridge.");
            foreach (int t in seq.Tokens)
                if ((uint)t >= (uint)_c.VocabSize)
                    throw new InvalidRequestException($"sequence {s}: token id {t} is outside the model's vocabulary [0, {_c.VocabSize}).");
            foreach (int t in seq.Targets.Ids)
                if ((uint)t >= (uint)_c.VocabSize)
                    throw new InvalidRequestException($"sequence {s}: target token id {t} is outside the model's vocabulary [0, {_c.VocabSize}).");
            rows += T; targets += seq.Targets.TargetPositions;
        }
        Grow(rows);
        LastTargetPositions = targets;

        _seqs.Clear();
        int half = _c.HeadDim / 2, dim = _c.Dim, row = 0, ti = 0, maxT = 0;
        var x0 = _saves[0].XIn;
        for (int s = 0; s < batch.Count; s++)
        {
            var seq = batch[s];
            int T = seq.Tokens.Length;
            _seqs.Add(new Seq(row, T));
            maxT = Math.Max(maxT, T);
            for (int t = 0; t < T; t++)
            {
                int r = row + t;
                _w.TokenEmbedding.AsSpan(seq.Tokens[t] * dim, dim).CopyTo(x0.AsSpan(r * dim, dim));
                _rope.Angles(p + t, _cos.AsSpan(r * half, half), _sin.AsSpan(r * half, half));
                _tIdx[r] = t;
                if (seq.Targets.HasTarget(t)) { _tRow[ti] = r; _tSeq[ti] = s; _tPos[ti] = t; ti++; }
            }
            row += T;
        }
        _batch = batch;
        PlanAttention(p, maxT);
        long packed = (long)rows * _c.QDim / _c.KvHeads;
        if (_qp.Length < packed)
        {
            _qp = GC.AllocateUninitializedArray<float>(checked((int)packed)); _op = GC.AllocateUninitializedArray<float>(_qp.Length);
            if (_training) _dqp = GC.AllocateUninitializedArray<float>(_qp.Length);
        }
        return rows;
    }

    IReadOnlyList<TrainingSequence> _batch = [];

    void PlanAttention(int p, int maxT)
    {
        int group = _c.Heads / _c.KvHeads, tb = TokenBlock(group);
        _ld = p + maxT;
        _units.Clear(); _chunks.Clear();
        for (int s = 0; s < _seqs.Count; s++)
            for (int t0 = 0; t0 < _seqs[s].Count; t0 += tb)
            {
                int t1 = Math.Min(_seqs[s].Count, t0 + tb);
                _units.Add(new Unit(s, t0, t1, (_seqs[s].Row + t0) * group, (t1 - t0) * group));
            }
        int maxRows = Math.Max(ScoreBufferFloats / _ld, 1), largest = 0;
        for (int u = 0; u < _units.Count;)
        {
            int first = u, m = 0;
            while (u < _units.Count && (u == first || m + _units[u].M <= maxRows)) m += _units[u++].M;
            _chunks.Add(new Chunk(first, u - first, _units[first].Rho, m));
            largest = Math.Max(largest, m);
        }
        long need = (long)largest * _ld;
        if (_s.Length < need)
        {
            _s = GC.AllocateUninitializedArray<float>(checked((int)need));
            if (_training) _dp = GC.AllocateUninitializedArray<float>(_s.Length);
        }
    }

    // ------------------------------------------------------------------------------------------------
    // Forward

    /// <summary>Runs all layers; returns the final residual [rows, dim].</summary>
    float[] Forward(KvPrefix prefix, int rows, bool save)
    {
        int dim = _c.Dim, qd = _c.QDim, kvd = _c.KvDim, hd = _c.HeadDim, half = hd / 2, hidden = _c.HiddenDim;
        int heads = _c.Heads, kvHeads = _c.KvHeads;
        float eps = _c.NormEps;
        for (int l = 0; l < _c.Layers; l++)
        {
            var w = _w.Layers[l];
            var sv = _saves[save ? l : 0];
            float[] xin = sv.XIn;
            float[] xmid = save ? sv.XMid : xin;
            float[] xout = !save ? xin : l + 1 < _c.Layers ? _saves[l + 1].XIn : _xF;

            // ---- attention block: x += Wo · Attn(RoPE(Wq·norm(x)), RoPE(Wk·norm(x)), Wv·norm(x))
            ParallelRows(rows, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                    sv.Inv1[r] = Ops.RmsNorm(xin.AsSpan(r * dim, dim), w.AttnNorm, eps, _xn.AsSpan(r * dim, dim));
            });
            Mark(Phase.Elementwise);
            var xn = _xn.AsSpan(0, rows * dim);
            Ops.Linear(xn, rows, w.Wq, qd, dim, (sv.QPre ?? sv.Q).AsSpan(0, rows * qd), w.Bq);
            Ops.Linear(xn, rows, w.Wk, kvd, dim, (sv.KPre ?? sv.K).AsSpan(0, rows * kvd), w.Bk);
            Ops.Linear(xn, rows, w.Wv, kvd, dim, sv.V.AsSpan(0, rows * kvd), w.Bv);
            Mark(Phase.Projections);
            ParallelRows(rows, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                {
                    var cos = _cos.AsSpan(r * half, half); var sin = _sin.AsSpan(r * half, half);
                    for (int h = 0; h < heads; h++)
                    {
                        var qh = sv.Q.AsSpan(r * qd + h * hd, hd);
                        if (w.QNorm != null) sv.QInv![r * heads + h] = Ops.RmsNorm(sv.QPre.AsSpan(r * qd + h * hd, hd), w.QNorm, eps, qh);
                        _rope.Rotate(qh, cos, sin);
                    }
                    for (int h = 0; h < kvHeads; h++)
                    {
                        var kh = sv.K.AsSpan(r * kvd + h * hd, hd);
                        if (w.KNorm != null) sv.KInv![r * kvHeads + h] = Ops.RmsNorm(sv.KPre.AsSpan(r * kvd + h * hd, hd), w.KNorm, eps, kh);
                        _rope.Rotate(kh, cos, sin);
                    }
                }
            });
            Mark(Phase.Elementwise);
            for (int g = 0; g < kvHeads; g++)
                AttendForward(prefix, l, sv, rows, g);
            Mark(Phase.Attention);
            if (xmid != xin) xin.AsSpan(0, rows * dim).CopyTo(xmid);
            Blas.Sgemm(false, true, rows, dim, qd, 1f, _att, qd, w.Wo, qd, 1f, xmid, dim);
            Mark(Phase.Projections);

            // ---- MLP block: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
            ParallelRows(rows, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                    sv.Inv2[r] = Ops.RmsNorm(xmid.AsSpan(r * dim, dim), w.FfnNorm, eps, _xn.AsSpan(r * dim, dim));
            });
            Mark(Phase.Elementwise);
            Ops.Linear(xn, rows, w.WGate, hidden, dim, sv.Gate.AsSpan(0, rows * hidden));
            Ops.Linear(xn, rows, w.WUp, hidden, dim, sv.Up.AsSpan(0, rows * hidden));
            Mark(Phase.Projections);
            ParallelRows(rows, (r0, r1) =>
            {
                var g = sv.Gate.AsSpan(r0 * hidden, (r1 - r0) * hidden);
                var u = sv.Up.AsSpan(r0 * hidden, (r1 - r0) * hidden);
                var h = _h.AsSpan(r0 * hidden, (r1 - r0) * hidden);
                TensorPrimitives.Sigmoid(g, h);   // σ(g)
                TensorPrimitives.Multiply(h, g, h); // silu(g)
                TensorPrimitives.Multiply(h, u, h); // silu(g)·u
            });
            if (xout != xmid) xmid.AsSpan(0, rows * dim).CopyTo(xout);
            Mark(Phase.Elementwise);
            Blas.Sgemm(false, true, rows, dim, hidden, 1f, _h, hidden, w.WDown, hidden, 1f, xout, dim);
            Mark(Phase.Projections);
        }
        return save ? _xF : _saves[0].XIn;
    }

    /// <summary>
    /// Attention of the query heads of KV group g for all sequences (see the layout notes at <see cref="Unit"/>). Per chunk:
    ///   S = scale·Q·[Kp; Kt]ᵀ,  P = softmax(S) (causal),  O = P·[Vp; Vt]
    /// with the prefix columns of all the chunk's rows in one SGEMM and the token columns per unit, side by side in S.
    /// </summary>
    void AttendForward(KvPrefix prefix, int l, LayerSaves sv, int rows, int g)
    {
        int p = prefix.Length, hd = _c.HeadDim, qd = _c.QDim, kvd = _c.KvDim, ld = _ld;
        int group = _c.Heads / _c.KvHeads, gw = group * hd;
        var vp = prefix.Values[l].AsSpan(g * p * hd, p * hd);
        Pack(sv.Q, qd, rows, g * gw, gw, _qp);
        foreach (var ch in _chunks)
        {
            var S = _s.AsSpan(0, ch.M * ld);
            Probabilities(prefix, l, sv, g, ch, S);
            var o = _op.AsSpan(ch.Rho * hd, ch.M * hd);
            if (p > 0) Blas.Sgemm(false, false, ch.M, hd, p, 1f, S, ld, vp, hd, 0f, o, hd);
            for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
            {
                var un = _units[u];
                Blas.Sgemm(false, false, un.M, hd, un.T1, 1f, S.Slice((un.Rho - ch.Rho) * ld + p), ld,
                    sv.V.AsSpan(_seqs[un.Seq].Row * kvd + g * hd), kvd, p > 0 ? 1f : 0f, _op.AsSpan(un.Rho * hd, un.M * hd), hd);
            }
        }
        Unpack(_op, gw, rows, g * gw, _att, qd);
    }

    /// <summary>
    /// Packed query rows per unit (tokens per unit × group size). Larger units give larger token SGEMMs, smaller ones
    /// skip more of the causal triangle. Tests set it small to exercise the blocking.
    /// </summary>
    internal int AttentionBlockRows { get; set; } = 192;

    int TokenBlock(int group) => Math.Max(1, (AttentionBlockRows + group - 1) / group);

    /// <summary>P [chunk rows, ld] for the packed queries in _qp: scores, causal mask (zeros), row softmax.</summary>
    void Probabilities(KvPrefix prefix, int l, LayerSaves sv, int g, Chunk ch, Span<float> S)
    {
        int p = prefix.Length, hd = _c.HeadDim, kvd = _c.KvDim, group = _c.Heads / _c.KvHeads, ld = _ld;
        float scale = 1f / MathF.Sqrt(hd);
        if (p > 0)
            Blas.Sgemm(false, true, ch.M, p, hd, scale, _qp.AsSpan(ch.Rho * hd, ch.M * hd), hd, prefix.Keys[l].AsSpan(g * p * hd, p * hd), hd, 0f, S, ld);
        for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
        {
            var un = _units[u];
            Blas.Sgemm(false, true, un.M, un.T1, hd, scale, _qp.AsSpan(un.Rho * hd, un.M * hd), hd,
                sv.K.AsSpan(_seqs[un.Seq].Row * kvd + g * hd), kvd, 0f, S.Slice((un.Rho - ch.Rho) * ld + p), ld);
        }
        var s = _s; var tIdx = _tIdx; int rho0 = ch.Rho;
        ParallelRows(ch.M, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++)
            {
                int visible = p + tIdx[(rho0 + i) / group] + 1;
                var row = s.AsSpan(i * ld, ld);
                Ops.Softmax(row.Slice(0, visible));
                row.Slice(visible).Clear();
            }
        });
    }

    /// <summary>dst[r·w ..] = src[r·srcStride + col ..] (w floats) for each token row r: one KV group's query heads.</summary>
    static void Pack(float[] src, int srcStride, int rows, int col, int w, float[] dst)
    {
        for (int r = 0; r < rows; r++) src.AsSpan(r * srcStride + col, w).CopyTo(dst.AsSpan(r * w, w));
    }

    static void Unpack(float[] src, int w, int rows, int col, float[] dst, int dstStride)
    {
        for (int r = 0; r < rows; r++) src.AsSpan(r * w, w).CopyTo(dst.AsSpan(r * dstStride + col, w));
    }

    /// <summary>
    /// LM head and loss on the target rows, in blocks of <see cref="LmHeadRows"/>. With grad, also writes the
    /// gradient of (loss sum · invDivisor) with respect to the final residual into _dx. Returns the loss sum.
    /// </summary>
    double Head(float[] x, int rows, bool grad, float invDivisor)
    {
        int dim = _c.Dim, vocab = _c.VocabSize, n = LastTargetPositions, B = LmHeadRows;
        float eps = _c.NormEps;
        if (grad) Array.Clear(_dx, 0, rows * dim);
        double sum = 0;
        for (int b0 = 0; b0 < n; b0 += B)
        {
            int nb = Math.Min(B, n - b0);
            ParallelRows(nb, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                    _invF[i] = Ops.RmsNorm(x.AsSpan(_tRow[b0 + i] * dim, dim), _w.FinalNorm, eps, _xb.AsSpan(i * dim, dim));
            });
            Mark(Phase.Elementwise);
            Ops.Linear(_xb.AsSpan(0, nb * dim), nb, _w.LmHead, vocab, dim, _logits.AsSpan(0, nb * vocab));
            Mark(Phase.LmHead);
            var batch = _batch;
            ParallelRows(nb, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                {
                    var tg = batch[_tSeq[b0 + i]].Targets; int t = _tPos[b0 + i];
                    var z = _logits.AsSpan(i * vocab, vocab);
                    _rowLoss[i] = DistillationLoss.Compute(z, tg.IdsAt(t), tg.LogProbsAt(t), grad ? z : default, invDivisor);
                }
            });
            for (int i = 0; i < nb; i++) sum += _rowLoss[i];
            Mark(Phase.Loss);
            if (!grad) continue;
            // dxn = dlogits · W   ([nb, vocab] · [vocab, dim])
            Blas.Sgemm(false, false, nb, dim, vocab, 1f, _logits, vocab, _w.LmHead, dim, 0f, _dxb, dim);
            Mark(Phase.LmHead);
            ParallelRows(nb, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                {
                    int r = _tRow[b0 + i];
                    RmsNormBackward(x.AsSpan(r * dim, dim), _invF[i], _w.FinalNorm, _dxb.AsSpan(i * dim, dim), _dx.AsSpan(r * dim, dim), accumulate: false);
                }
            });
        }
        return sum;
    }

    // ------------------------------------------------------------------------------------------------
    // Backward

    void Backward(KvPrefix prefix, int rows, float[][] dKeys, float[][] dValues)
    {
        int dim = _c.Dim, qd = _c.QDim, kvd = _c.KvDim, hd = _c.HeadDim, half = hd / 2, hidden = _c.HiddenDim;
        int heads = _c.Heads, kvHeads = _c.KvHeads;
        for (int l = _c.Layers - 1; l >= 0; l--)
        {
            var w = _w.Layers[l];
            var sv = _saves[l];
            // _dx holds dLoss/d(layer output).

            // ---- MLP: out = mid + Wdown·(silu(g)·u), g = Wg·n2, u = Wu·n2, n2 = norm(mid)
            Mark(Phase.BackwardElementwise);
            Blas.Sgemm(false, false, rows, hidden, dim, 1f, _dx, dim, w.WDown, hidden, 0f, _dg, hidden); // dh
            Mark(Phase.BackwardProjections);
            ParallelRows(rows, (r0, r1) =>
                SwiGluBackward(sv.Gate.AsSpan(r0 * hidden, (r1 - r0) * hidden), sv.Up.AsSpan(r0 * hidden, (r1 - r0) * hidden),
                    _dg.AsSpan(r0 * hidden, (r1 - r0) * hidden), _du.AsSpan(r0 * hidden, (r1 - r0) * hidden)));
            Mark(Phase.BackwardElementwise);
            Blas.Sgemm(false, false, rows, dim, hidden, 1f, _dg, hidden, w.WGate, dim, 0f, _dxn, dim);
            Blas.Sgemm(false, false, rows, dim, hidden, 1f, _du, hidden, w.WUp, dim, 1f, _dxn, dim);
            Mark(Phase.BackwardProjections);
            ParallelRows(rows, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                    RmsNormBackward(sv.XMid.AsSpan(r * dim, dim), sv.Inv2[r], w.FfnNorm, _dxn.AsSpan(r * dim, dim), _dx.AsSpan(r * dim, dim), accumulate: true);
            });
            // _dx now holds dLoss/d(mid).

            // ---- attention: mid = in + Wo·att
            Mark(Phase.BackwardElementwise);
            Blas.Sgemm(false, false, rows, qd, dim, 1f, _dx, dim, w.Wo, qd, 0f, _dAtt, qd);
            Mark(Phase.BackwardProjections);
            bool bottom = l == 0; // below layer 0 only the prefix gradient is wanted: skip dq and token dk/dv
            if (!bottom) { Array.Clear(_dk, 0, rows * kvd); Array.Clear(_dv, 0, rows * kvd); }
            for (int g = 0; g < kvHeads; g++)
                AttendBackward(prefix, l, sv, rows, g, dKeys[l], dValues[l], bottom);
            Mark(Phase.BackwardAttention);
            if (bottom) break;

            // RoPE backward (inverse rotation), then the Qwen3 per-head RMSNorm backward.
            ParallelRows(rows, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                {
                    var cos = _cos.AsSpan(r * half, half); var sin = _sin.AsSpan(r * half, half);
                    for (int h = 0; h < heads; h++)
                    {
                        var dqh = _dq.AsSpan(r * qd + h * hd, hd);
                        _rope.RotateBack(dqh, cos, sin);
                        if (w.QNorm != null) RmsNormBackward(sv.QPre.AsSpan(r * qd + h * hd, hd), sv.QInv![r * heads + h], w.QNorm, dqh, dqh, accumulate: false);
                    }
                    for (int h = 0; h < kvHeads; h++)
                    {
                        var dkh = _dk.AsSpan(r * kvd + h * hd, hd);
                        _rope.RotateBack(dkh, cos, sin);
                        if (w.KNorm != null) RmsNormBackward(sv.KPre.AsSpan(r * kvd + h * hd, hd), sv.KInv![r * kvHeads + h], w.KNorm, dkh, dkh, accumulate: false);
                    }
                }
            });
            // dn1 = dq·Wq + dk·Wk + dv·Wv
            Mark(Phase.BackwardElementwise);
            Blas.Sgemm(false, false, rows, dim, qd, 1f, _dq, qd, w.Wq, dim, 0f, _dxn, dim);
            Blas.Sgemm(false, false, rows, dim, kvd, 1f, _dk, kvd, w.Wk, dim, 1f, _dxn, dim);
            Blas.Sgemm(false, false, rows, dim, kvd, 1f, _dv, kvd, w.Wv, dim, 1f, _dxn, dim);
            Mark(Phase.BackwardProjections);
            ParallelRows(rows, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                    RmsNormBackward(sv.XIn.AsSpan(r * dim, dim), sv.Inv1[r], w.AttnNorm, _dxn.AsSpan(r * dim, dim), _dx.AsSpan(r * dim, dim), accumulate: true);
            });
            // _dx now holds dLoss/d(layer input) = dLoss/d(output of layer l-1).
        }
        Mark(Phase.BackwardElementwise);
    }

    /// <summary>
    /// Backward of KV group g for all sequences (same layout as <see cref="AttendForward"/>), with P recomputed:
    ///   dP = dO·Vᵀ;  dS = P∘(dP − rowsum(P∘dP));  dV += Pᵀ·dO;  dK += scale·dSᵀ·Q;  dQ = scale·dS·K.
    /// The sums over the group's query heads (GQA) and, for the prefix, over all sequences happen inside the SGEMMs
    /// (their rows are stacked). Prefix parts go to dKp/dVp; token parts to _dk/_dv/_dq (skipped at the bottom layer).
    /// </summary>
    void AttendBackward(KvPrefix prefix, int l, LayerSaves sv, int rows, int g, float[] dKp, float[] dVp, bool bottom)
    {
        int p = prefix.Length, hd = _c.HeadDim, qd = _c.QDim, kvd = _c.KvDim, ld = _ld;
        int group = _c.Heads / _c.KvHeads, gw = group * hd;
        float scale = 1f / MathF.Sqrt(hd);
        var kp = prefix.Keys[l].AsSpan(g * p * hd, p * hd); var vp = prefix.Values[l].AsSpan(g * p * hd, p * hd);
        var dkp = dKp.AsSpan(g * p * hd, p * hd); var dvp = dVp.AsSpan(g * p * hd, p * hd);
        Pack(sv.Q, qd, rows, g * gw, gw, _qp);
        Pack(_dAtt, qd, rows, g * gw, gw, _op);
        foreach (var ch in _chunks)
        {
            var P = _s.AsSpan(0, ch.M * ld);
            var dS = _dp.AsSpan(0, ch.M * ld);
            Probabilities(prefix, l, sv, g, ch, P);
            var q = _qp.AsSpan(ch.Rho * hd, ch.M * hd);
            var dO = _op.AsSpan(ch.Rho * hd, ch.M * hd);

            // dP = dO · [Vp; Vt]ᵀ ;  dV += Pᵀ · dO
            if (p > 0)
            {
                Blas.Sgemm(false, true, ch.M, p, hd, 1f, dO, hd, vp, hd, 0f, dS, ld);
                Blas.Sgemm(true, false, p, hd, ch.M, 1f, P, ld, dO, hd, 1f, dvp, hd);
            }
            for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
            {
                var un = _units[u]; int at = (un.Rho - ch.Rho) * ld + p, kv = _seqs[un.Seq].Row * kvd + g * hd;
                var dOu = _op.AsSpan(un.Rho * hd, un.M * hd);
                Blas.Sgemm(false, true, un.M, un.T1, hd, 1f, dOu, hd, sv.V.AsSpan(kv), kvd, 0f, dS.Slice(at), ld);
                if (!bottom) Blas.Sgemm(true, false, un.T1, hd, un.M, 1f, P.Slice(at), ld, dOu, hd, 1f, _dv.AsSpan(kv), kvd);
            }
            // dS = P ∘ (dP − Σ_j P·dP), zero past the diagonal
            var s = _s; var dp = _dp; var tIdx = _tIdx; int rho0 = ch.Rho;
            ParallelRows(ch.M, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                {
                    int visible = p + tIdx[(rho0 + i) / group] + 1;
                    var pr = s.AsSpan(i * ld, visible);
                    var dr = dp.AsSpan(i * ld, ld);
                    var dv = dr.Slice(0, visible);
                    float dot = TensorPrimitives.Dot(pr, dv);
                    TensorPrimitives.Subtract(dv, dot, dv);
                    TensorPrimitives.Multiply(dv, pr, dv);
                    dr.Slice(visible).Clear();
                }
            });
            // dK += scale · dSᵀ · Q ;  dQ = scale · dS · [Kp; Kt]
            if (p > 0)
            {
                Blas.Sgemm(true, false, p, hd, ch.M, scale, dS, ld, q, hd, 1f, dkp, hd);
                if (!bottom) Blas.Sgemm(false, false, ch.M, hd, p, scale, dS, ld, kp, hd, 0f, _dqp.AsSpan(ch.Rho * hd, ch.M * hd), hd);
            }
            if (bottom) continue;
            for (int u = ch.FirstUnit; u < ch.FirstUnit + ch.Units; u++)
            {
                var un = _units[u]; int at = (un.Rho - ch.Rho) * ld + p, kv = _seqs[un.Seq].Row * kvd + g * hd;
                var qu = _qp.AsSpan(un.Rho * hd, un.M * hd);
                Blas.Sgemm(true, false, un.T1, hd, un.M, scale, dS.Slice(at), ld, qu, hd, 1f, _dk.AsSpan(kv), kvd);
                Blas.Sgemm(false, false, un.M, hd, un.T1, scale, dS.Slice(at), ld, sv.K.AsSpan(kv), kvd, p > 0 ? 1f : 0f,
                    _dqp.AsSpan(un.Rho * hd, un.M * hd), hd);
            }
        }
        if (!bottom) Unpack(_dqp, gw, rows, g * gw, _dq, qd);
    }

    // ------------------------------------------------------------------------------------------------
    // Elementwise backward kernels

    /// <summary>
    /// y = w∘x·inv, inv = 1/sqrt(mean(x²)+eps). Given dy (destroyed), dx (+)= inv·(dy∘w) − x·inv³·Σ(dy∘w∘x)/n.
    /// dx may be the same memory as dy when accumulate is false.
    /// </summary>
    internal static void RmsNormBackward(ReadOnlySpan<float> x, float inv, ReadOnlySpan<float> w, Span<float> dy, Span<float> dx, bool accumulate)
    {
        TensorPrimitives.Multiply(dy, w, dy);
        float c = TensorPrimitives.Dot(dy, x) * inv * inv * inv / x.Length;
        TensorPrimitives.Multiply(dy, inv, dy);
        TensorPrimitives.MultiplyAdd(x, -c, dy, dy);
        if (accumulate) TensorPrimitives.Add(dx, dy, dx);
        else dy.CopyTo(dx);
    }

    /// <summary>
    /// h = silu(g)·u. Given dh in dg: du = dh·silu(g), dg = dh·u·σ(g)·(1 + g·(1−σ(g))).
    /// </summary>
    internal static void SwiGluBackward(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dg, Span<float> du)
    {
        Span<float> sBuf = stackalloc float[256];
        Span<float> tBuf = stackalloc float[256];
        for (int i = 0; i < gate.Length; i += 256)
        {
            int n = Math.Min(256, gate.Length - i);
            var g = gate.Slice(i, n); var u = up.Slice(i, n); var dh = dg.Slice(i, n); var dU = du.Slice(i, n);
            var s = sBuf.Slice(0, n); var t = tBuf.Slice(0, n);
            TensorPrimitives.Sigmoid(g, s);           // s = σ(g)
            TensorPrimitives.Multiply(g, s, t);       // t = silu(g)
            TensorPrimitives.Multiply(dh, t, dU);     // du = dh·silu(g)
            // silu'(g) = s + t·(1 − s) = s + t − t·s
            TensorPrimitives.Multiply(t, s, t);       // t = g·s²
            TensorPrimitives.MultiplyAdd(g, s, s, s); // s = s + g·s
            TensorPrimitives.Subtract(s, t, s);       // s = silu'(g)
            TensorPrimitives.Multiply(dh, u, dh);
            TensorPrimitives.Multiply(dh, s, dh);     // dg = dh·u·silu'(g)
        }
    }

    static void ParallelRows(int rows, Action<int, int> body)
    {
        int chunks = Math.Min(Environment.ProcessorCount, rows / 4);
        if (chunks <= 1) { body(0, rows); return; }
        Parallel.For(0, chunks, c => body((int)((long)rows * c / chunks), (int)((long)rows * (c + 1) / chunks)));
    }

    // ------------------------------------------------------------------------------------------------
    // Work accounting

    /// <summary>
    /// Useful floating-point operations (2 per multiply-add) of one <see cref="LossAndGradient"/> call: forward
    /// projections/MLP and attention over visible (causal) pairs only, LM head forward and backward on the
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
