using Cas.Engine.Compute;

namespace Cas.Engine;

/// <summary>
/// Training: the loss of a batch of sequences, each behind its own <see cref="ComposedPrefix"/>, against sparse teacher
/// targets, and its gradient with respect to the prefixes' K and V (the model is frozen: no weight gradients). The
/// forward is <see cref="Layers"/>, the same as generation's; with a backward pass coming it saves, per layer and token
/// row, the residual input and mid-block residual, both norms' 1/rms, the rotated q, the k and v, the MLP gate and up
/// (and for Qwen3 the pre-norm q/k and their 1/rms): see <see cref="TrainingActivationBytes"/>. Attention probabilities
/// are not stored (backward recomputes them in bounded chunks). The LM head runs in blocks of <see cref="LmHeadRows"/>
/// rows, only on positions with targets.
/// </summary>
public sealed partial class Transformer
{
    int _cap;                       // token rows the training buffers hold (0: never used for training)
    bool _backward;                 // buffers for a backward pass (else loss only)
    LayerBuffers[] _saves = [];     // [layers] with backward, [1] for loss only
    float[] _xF = [];               // [cap, dim] residual after the last layer (backward only)
    float[] _tcos = [], _tsin = []; // [cap, head_dim/2]
    // backward
    float[] _dx = [], _dxn = [];    // [cap, dim]
    float[] _dg = [], _du = [];     // [cap, hidden]
    float[] _dAtt = [], _dq = [];   // [cap, qd]
    float[] _dk = [], _dv = [];     // [cap, kvd]
    // attention scratch: S and dP chunks [chunk rows, ld]; packed q, o (or dO) and dq of one KV group [rows·group, head_dim]
    float[] _s = [], _dp = [], _qp = [], _op = [], _dqp = [];
    int[] _visible = [];            // [cap] keys a token row sees: its prefix length + its index + 1

    // The current batch.
    IReadOnlyList<PrefixedSequence> _batch = [];
    readonly List<Seq> _seqs = new();
    readonly List<Unit> _units = new();
    readonly List<PrefixRun> _runs = new();
    readonly List<Chunk> _chunks = new();
    readonly Dictionary<KvPrefix, KvGradient> _gradOf = new(ReferenceEqualityComparer.Instance);
    int _ld;                        // row stride of the S/dP buffers: longest prefix + longest sequence
    record struct Seq(int Row, int Count, int P, ComposedPrefix Prefix);
    record struct Unit(int Seq, int T0, int T1, int Rho, int M);                 // Rho: first packed row; M: packed rows
    record struct PrefixRun(int Rho, int M, ComposedPrefix Prefix);                   // consecutive units with the same prefix parts
    record struct Chunk(int FirstUnit, int Units, int FirstRun, int Runs, int Rho, int M);

    /// <summary>Rows per LM head block of the training loss (bounds its [rows, vocab] logits buffer). Set before the first training call.</summary>
    public int LmHeadRows { get; init; } = 128;

    /// <summary>
    /// Packed query rows per attention unit in training (tokens per unit × group size). Larger units give larger token
    /// SGEMMs, smaller ones skip more of the causal triangle. Tests set it small to exercise the blocking.
    /// </summary>
    public int AttentionBlockRows { get; set; } = 192;

    /// <summary>Training's S and dP chunks hold at most this many floats each (unless one unit needs more). Tests set it small.</summary>
    public int ScoreBufferFloats { get; set; } = 4 << 20;

    /// <summary>Token rows the training buffers currently hold (0 before any training call).</summary>
    public int TrainingRows => _cap;

    /// <summary>Positions with targets in the last training/loss call.</summary>
    public int LastTargetPositions { get; private set; }

    /// <summary>
    /// Allocates the training buffers for <paramref name="rows"/> token rows (all sequences of a batch together) up front;
    /// <paramref name="backward"/> = false makes this a loss-only decoder (one layer's activations instead of all).
    /// Larger batches grow the buffers once. Inference never needs this.
    /// </summary>
    public void ReserveTraining(int rows, bool backward = true)
    {
        if (rows <= 0) throw new ArgumentOutOfRangeException(nameof(rows), "rows must be positive.");
        if (_cap > 0 && backward != _backward)
            throw new InvalidOperationException($"this transformer's training buffers were made {(_backward ? "with" : "without")} a backward pass.");
        _backward = backward;
        Grow(rows);
    }

    /// <summary>Σ over the batch's target positions of <see cref="DistillationLoss"/> (forward only).</summary>
    public double SparseLoss(IReadOnlyList<PrefixedSequence> batch)
    {
        if (_cap == 0) _backward = false;
        int rows = Prepare(batch, []);
        if (rows == 0 || LastTargetPositions == 0) return 0;
        Timer?.Restart();
        Layers(rows, _saves, _tcos, _tsin, prefixed: true);
        return SparseHead(_backward ? _xF : _saves[0].XOut, rows, grad: false, 0f);
    }

    /// <summary>
    /// Σ over the batch's target positions of <see cref="DistillationLoss"/>, and ADDS gradScale × its gradient with
    /// respect to the K and V of every prefix part that has an entry in <paramref name="gradients"/> (matched by
    /// reference: the same <see cref="KvPrefix"/> object, wherever and in however many sequences it appears). Parts
    /// without one are frozen. Gradients are accumulated, never cleared here.
    /// </summary>
    public double SparseLossAndGradient(IReadOnlyList<PrefixedSequence> batch, IReadOnlyList<KvGradient> gradients, float gradScale)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        if (_cap == 0) _backward = true;
        if (!_backward) throw new InvalidOperationException("this transformer's training buffers were made for losses only (backward: false); it cannot compute gradients.");
        int rows = Prepare(batch, gradients);
        if (rows == 0 || LastTargetPositions == 0) return 0;
        Timer?.Restart();
        Layers(rows, _saves, _tcos, _tsin, prefixed: true);
        double sum = SparseHead(_xF, rows, grad: true, gradScale);
        Backward(rows);
        return sum;
    }

    /// <summary>
    /// Bytes of the per-token training buffers for <paramref name="tokens"/> rows (planning estimate). Not included: the
    /// attention score chunks (2 × at most <see cref="ScoreBufferFloats"/> floats), the LM head block
    /// (<see cref="LmHeadRows"/> × vocab floats) and small per-row index arrays.
    /// </summary>
    public static long TrainingActivationBytes(Models.ModelConfig c, int tokens, bool backward = true)
    {
        long perLayer = (backward ? 2L : 1L) * c.Dim + 2 + c.QDim + 2L * c.KvDim + 2L * c.HiddenDim;
        if (c.QkNorm) perLayer += c.QDim + c.KvDim + c.Heads + c.KvHeads;
        long saves = (backward ? c.Layers : 1) * perLayer;
        long packed = (long)c.QDim / c.KvHeads;
        long scratch = c.HeadDim + c.Dim + c.QDim + c.HiddenDim + 2 * packed; // cos/sin, xn, att, h, packed q/o
        if (backward) scratch += c.Dim + 2L * c.Dim + 2L * c.HiddenDim + 2L * c.QDim + 2L * c.KvDim + packed; // xF, dx/dxn, dg/du, dAtt/dq, dk/dv, dq packed
        return 4L * tokens * (saves + scratch);
    }

    /// <summary>Bytes held by the training float buffers (activations, scratch, LM head block); 0 for an inference-only transformer.</summary>
    public long TrainingAllocatedBytes
    {
        get
        {
            long n = 0;
            var seen = new HashSet<float[]>(ReferenceEqualityComparer.Instance);
            void Add(float[]? a) { if (a != null && seen.Add(a)) n += a.Length; }
            foreach (var b in _saves)
                foreach (var a in new[] { b.XIn, b.XMid, b.Xn, b.Q, b.K, b.V, b.Att, b.Gate, b.Up, b.H, b.Inv1, b.Inv2, b.QPre, b.KPre, b.QInv, b.KInv })
                    Add(a);
            foreach (var a in new[] { _xF, _tcos, _tsin, _dx, _dxn, _dg, _du, _dAtt, _dq, _dk, _dv, _logits, _xb, _dxb, _invF, _rowLoss, _s, _dp, _qp, _op, _dqp })
                Add(a);
            return 4 * n;
        }
    }

    void Grow(int rows)
    {
        if (rows <= _cap) return;
        int C = rows, dim = _c.Dim, qd = _c.QDim, kvd = _c.KvDim, hidden = _c.HiddenDim, half = _c.HeadDim / 2;
        static float[] A(long n) => GC.AllocateUninitializedArray<float>(checked((int)n));
        // Shared scratch of every layer: normed input, attention output, silu(gate)·up.
        float[] xn = A((long)C * dim), att = A((long)C * qd), h = A((long)C * hidden);
        int n = _backward ? _c.Layers : 1;
        _saves = new LayerBuffers[n];
        _xF = _backward ? A((long)C * dim) : [];
        for (int l = 0; l < n; l++)
        {
            var xin = A((long)C * dim);
            _saves[l] = new LayerBuffers
            {
                XIn = xin, XMid = _backward ? A((long)C * dim) : xin, XOut = xin, Xn = xn,
                Inv1 = A(C), Inv2 = A(C),
                Q = A((long)C * qd), K = A((long)C * kvd), V = A((long)C * kvd), Att = att,
                Gate = A((long)C * hidden), Up = A((long)C * hidden), H = h,
                QPre = _c.QkNorm ? A((long)C * qd) : null, KPre = _c.QkNorm ? A((long)C * kvd) : null,
                QInv = _c.QkNorm ? A((long)C * _c.Heads) : null, KInv = _c.QkNorm ? A((long)C * _c.KvHeads) : null,
            };
        }
        if (_backward)
            for (int l = 0; l < n; l++) _saves[l].XOut = l + 1 < n ? _saves[l + 1].XIn : _xF;
        _tcos = A((long)C * half); _tsin = A((long)C * half);
        if (_backward)
        {
            _dx = A((long)C * dim); _dxn = A((long)C * dim);
            _dg = A((long)C * hidden); _du = A((long)C * hidden);
            _dAtt = A((long)C * qd); _dq = A((long)C * qd);
            _dk = A((long)C * kvd); _dv = A((long)C * kvd);
        }
        _tRow = new int[C]; _tSeq = new int[C]; _tPos = new int[C]; _visible = new int[C];
        if (_logits.Length == 0)
        {
            int B = LmHeadRows;
            if (B <= 0) throw new InvalidOperationException("LmHeadRows must be positive.");
            _logits = GC.AllocateUninitializedArray<float>(B * _c.VocabSize);
            _xb = new float[B * dim]; _dxb = new float[B * dim]; _invF = new float[B]; _rowLoss = new float[B];
        }
        _cap = C;
    }

    /// <summary>Validates the call, lays the sequences out as rows, fills RoPE angles and embeddings, plans attention. Returns the row count.</summary>
    int Prepare(IReadOnlyList<PrefixedSequence> batch, IReadOnlyList<KvGradient> gradients)
    {
        ArgumentNullException.ThrowIfNull(batch);
        int rows = 0, targets = 0, maxP = 0, maxT = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            var sq = batch[s];
            if (sq.Prefix is null || sq.Tokens is null || sq.TargetOffsets is null || sq.TargetIds is null || sq.TargetLogProbs is null)
                throw new ArgumentException($"sequence {s}: prefix, tokens and targets are required.");
            foreach (var part in sq.Prefix.Parts) CheckShape(part, "cartridge");
            int T = sq.Tokens.Length, P = sq.Prefix.Length;
            if (sq.TargetOffsets.Length != T + 1)
                throw new InvalidRequestException($"sequence {s}: {T} tokens but targets for {sq.TargetOffsets.Length - 1} positions; they must match.");
            if (P + T > _c.MaxSeqLen)
                throw new InvalidRequestException($"sequence {s}: cartridge {P} + {T} tokens = {P + T} positions exceeds the model's context {_c.MaxSeqLen}; shorten the sequence or the cartridge.");
            foreach (int t in sq.Tokens)
                if ((uint)t >= (uint)_c.VocabSize)
                    throw new InvalidRequestException($"sequence {s}: token id {t} is outside the model's vocabulary [0, {_c.VocabSize}).");
            foreach (int t in sq.TargetIds)
                if ((uint)t >= (uint)_c.VocabSize)
                    throw new InvalidRequestException($"sequence {s}: target token id {t} is outside the model's vocabulary [0, {_c.VocabSize}).");
            rows += T; maxP = Math.Max(maxP, P); maxT = Math.Max(maxT, T);
            for (int t = 0; t < T; t++) if (sq.HasTarget(t)) targets++;
        }
        _gradOf.Clear();
        foreach (var gr in gradients)
        {
            ArgumentNullException.ThrowIfNull(gr);
            CheckShape(gr.Of, "gradient's cartridge");
            if (!_gradOf.TryAdd(gr.Of, gr)) throw new ArgumentException("two gradients were given for the same cartridge.");
        }
        if (rows > 0) Grow(rows);
        LastTargetPositions = targets;

        _seqs.Clear();
        int half = _c.HeadDim / 2, dim = _c.Dim, row = 0, ti = 0;
        var x0 = _saves.Length > 0 ? _saves[0].XIn : [];
        for (int s = 0; s < batch.Count; s++)
        {
            var sq = batch[s];
            int T = sq.Tokens.Length, P = sq.Prefix.Length;
            _seqs.Add(new Seq(row, T, P, sq.Prefix));
            for (int t = 0; t < T; t++)
            {
                int r = row + t;
                _w.TokenEmbedding.Widen(sq.Tokens[t] * dim, x0.AsSpan(r * dim, dim));
                _rope.Angles(sq.Prefix.Positions + t, _tcos.AsSpan(r * half, half), _tsin.AsSpan(r * half, half));
                _visible[r] = P + t + 1;
                if (sq.HasTarget(t)) { _tRow[ti] = r; _tSeq[ti] = s; _tPos[ti] = t; ti++; }
            }
            row += T;
        }
        _batch = batch;
        if (rows > 0) PlanAttention(rows, maxP + maxT);
        return rows;
    }

    void CheckShape(KvPrefix p, string what)
    {
        if (p.Layers != _c.Layers || p.KvHeads != _c.KvHeads || p.HeadDim != _c.HeadDim)
            throw new InvalidRequestException($"{what} shape (layers {p.Layers}, kv_heads {p.KvHeads}, head_dim {p.HeadDim}) does not match the model (layers {_c.Layers}, kv_heads {_c.KvHeads}, head_dim {_c.HeadDim}).");
    }

    /// <summary>Units, runs and chunks of the current batch (see <c>Attention.cs</c>); sizes the attention scratch.</summary>
    void PlanAttention(int rows, int ld)
    {
        int group = _c.Heads / _c.KvHeads, tb = Math.Max(1, (AttentionBlockRows + group - 1) / group);
        _ld = ld;
        _units.Clear(); _runs.Clear(); _chunks.Clear();
        for (int s = 0; s < _seqs.Count; s++)
            for (int t0 = 0; t0 < _seqs[s].Count; t0 += tb)
            {
                int t1 = Math.Min(_seqs[s].Count, t0 + tb);
                _units.Add(new Unit(s, t0, t1, (_seqs[s].Row + t0) * group, (t1 - t0) * group));
            }
        int maxRows = Math.Max(ScoreBufferFloats / ld, 1), largest = 0;
        for (int u = 0; u < _units.Count;)
        {
            int first = u, m = 0, firstRun = _runs.Count;
            while (u < _units.Count && (u == first || m + _units[u].M <= maxRows))
            {
                var un = _units[u]; var prefix = _seqs[un.Seq].Prefix;
                if (u > first && _runs[^1].Prefix.SameParts(prefix)) _runs[^1] = _runs[^1] with { M = _runs[^1].M + un.M };
                else _runs.Add(new PrefixRun(un.Rho, un.M, prefix));
                m += un.M; u++;
            }
            _chunks.Add(new Chunk(first, u - first, firstRun, _runs.Count - firstRun, _units[first].Rho, m));
            largest = Math.Max(largest, m);
        }
        long need = (long)largest * ld;
        if (_s.Length < need)
        {
            _s = GC.AllocateUninitializedArray<float>(checked((int)need));
            if (_backward) _dp = GC.AllocateUninitializedArray<float>(_s.Length);
        }
        long packed = (long)rows * _c.QDim / _c.KvHeads;
        if (_qp.Length < packed)
        {
            _qp = GC.AllocateUninitializedArray<float>(checked((int)packed)); _op = GC.AllocateUninitializedArray<float>(_qp.Length);
            if (_backward) _dqp = GC.AllocateUninitializedArray<float>(_qp.Length);
        }
    }

    /// <summary>
    /// The backward pass from d loss / d final residual (in _dx, written by <see cref="SparseHead"/>) down to the prefix
    /// K/V gradients. Input gradients only: dxn = dq·Wq + dk·Wk + dv·Wv etc. as accumulating SGEMMs; below layer 0
    /// nothing but the prefix gradient is computed. The o_proj bias and the q/k/v biases have no input gradient.
    /// </summary>
    void Backward(int rows)
    {
        int dim = _c.Dim, qd = _c.QDim, kvd = _c.KvDim, hd = _c.HeadDim, half = hd / 2, hidden = _c.HiddenDim;
        int heads = _c.Heads, kvHeads = _c.KvHeads;
        for (int l = _c.Layers - 1; l >= 0; l--)
        {
            var w = _w.Layers[l];
            var sv = _saves[l];
            // _dx holds dLoss/d(layer output).

            // ---- MLP: out = mid + Wdown·(silu(g)·u), g = Wg·n2, u = Wu·n2, n2 = norm(mid)
            Mark(DecoderPhase.BackwardElementwise);
            WeightProduct.Times(_dx, dim, rows, w.WDown, dim, hidden, 0f, _dg, hidden); // dh
            Mark(DecoderPhase.BackwardProjections);
            Ops.ParallelRows(rows, (r0, r1) =>
            {
                int at = r0 * hidden, n = (r1 - r0) * hidden;
                Ops.SwiGluBackward(sv.Gate.AsSpan(at, n), sv.Up.AsSpan(at, n), _dg.AsSpan(at, n), _du.AsSpan(at, n));
            });
            Mark(DecoderPhase.BackwardElementwise);
            WeightProduct.Times(_dg, hidden, rows, w.WGate, hidden, dim, 0f, _dxn, dim);
            WeightProduct.Times(_du, hidden, rows, w.WUp, hidden, dim, 1f, _dxn, dim);
            Mark(DecoderPhase.BackwardProjections);
            NormRowsBackward(sv.XMid, sv.Inv2!, w.FfnNorm, rows);
            // _dx now holds dLoss/d(mid).

            // ---- attention: mid = in + Wo·att + bo
            Mark(DecoderPhase.BackwardElementwise);
            WeightProduct.Times(_dx, dim, rows, w.Wo, dim, qd, 0f, _dAtt, qd);
            Mark(DecoderPhase.BackwardProjections);
            bool bottom = l == 0; // below layer 0 only the prefix gradient is wanted: skip dq and token dk/dv
            if (!bottom) { Array.Clear(_dk, 0, rows * kvd); Array.Clear(_dv, 0, rows * kvd); }
            for (int g = 0; g < kvHeads; g++) AttendPrefixedBackward(l, sv, rows, g, bottom);
            Mark(DecoderPhase.BackwardAttention);
            if (bottom) break;

            // RoPE backward (inverse rotation), then the Qwen3 per-head RMSNorm backward.
            Ops.ParallelRows(rows, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                {
                    var cos = _tcos.AsSpan(r * half, half); var sin = _tsin.AsSpan(r * half, half);
                    for (int h = 0; h < heads; h++)
                    {
                        var dqh = _dq.AsSpan(r * qd + h * hd, hd);
                        _rope.RotateBack(dqh, cos, sin);
                        if (w.QNorm != null) Ops.RmsNormBackward(sv.QPre.AsSpan(r * qd + h * hd, hd), sv.QInv![r * heads + h], w.QNorm, dqh, dqh, accumulate: false);
                    }
                    for (int h = 0; h < kvHeads; h++)
                    {
                        var dkh = _dk.AsSpan(r * kvd + h * hd, hd);
                        _rope.RotateBack(dkh, cos, sin);
                        if (w.KNorm != null) Ops.RmsNormBackward(sv.KPre.AsSpan(r * kvd + h * hd, hd), sv.KInv![r * kvHeads + h], w.KNorm, dkh, dkh, accumulate: false);
                    }
                }
            });
            // dn1 = dq·Wq + dk·Wk + dv·Wv
            Mark(DecoderPhase.BackwardElementwise);
            WeightProduct.Times(_dq, qd, rows, w.Wq, qd, dim, 0f, _dxn, dim);
            WeightProduct.Times(_dk, kvd, rows, w.Wk, kvd, dim, 1f, _dxn, dim);
            WeightProduct.Times(_dv, kvd, rows, w.Wv, kvd, dim, 1f, _dxn, dim);
            Mark(DecoderPhase.BackwardProjections);
            NormRowsBackward(sv.XIn, sv.Inv1!, w.AttnNorm, rows);
            // _dx now holds dLoss/d(layer input) = dLoss/d(output of layer l-1).
        }
        Mark(DecoderPhase.BackwardElementwise);
    }

    /// <summary>_dx[r] += RMSNorm backward of the block input x[r] given d(normed) in _dxn[r] (destroyed).</summary>
    void NormRowsBackward(float[] x, float[] inv, float[] weight, int rows)
    {
        int dim = _c.Dim;
        Ops.ParallelRows(rows, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
                Ops.RmsNormBackward(x.AsSpan(r * dim, dim), inv[r], weight, _dxn.AsSpan(r * dim, dim), _dx.AsSpan(r * dim, dim), accumulate: true);
        });
    }
}
