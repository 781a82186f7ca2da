using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Engine;

/// <summary>
/// The Llama/Qwen2/Qwen3 decoder: the one forward pass of the engine, used by generation, evaluation and cartridge
/// training alike (<see cref="Layers"/>). New tokens of all sequences of a call are stacked as rows of one activation
/// matrix so every projection is one SGEMM. The type is split by concern:
/// <list type="bullet">
/// <item><c>Transformer.cs</c> — inference entry points (<see cref="Forward"/>, <see cref="ForwardAll"/> over
///   <see cref="KvCache"/>s, in chunks of at most <see cref="MaxChunkTokens"/> rows) and the layer loop;</item>
/// <item><c>Attention.cs</c> — attention over a KV cache (prefill and decode kernels) and over composed cartridge
///   prefixes for training, forward and backward side by side;</item>
/// <item><c>Transformer.Training.cs</c> — training batches (each sequence with its own <see cref="ComposedPrefix"/>),
///   the saved activations and the backward pass to the prefix KV;</item>
/// <item><c>Transformer.LmHead.cs</c> — the LM head: logits for generation, the sparse distillation loss and its
///   gradient for training.</item>
/// </list>
/// Elementwise ops (RMSNorm, SwiGLU, softmax) with their backward are in <see cref="Ops"/>, RoPE in <see cref="Rope"/>.
/// Inference allocates its buffers once for <see cref="MaxChunkTokens"/> rows; the training buffers are allocated only
/// by the first training call. Not thread-safe: one Transformer per concurrent caller (they can share the Model).
/// </summary>
public sealed partial class Transformer
{
    readonly ModelConfig _c;
    readonly ModelWeights _w;
    readonly Rope _rope;

    // Inference activations, C = MaxChunkTokens rows. One LayerBuffers serves every layer: the residual stream is
    // updated in place and nothing is kept for a backward pass.
    readonly LayerBuffers _inference;
    readonly LayerBuffers[] _inferenceLayers; // [_inference]: what Layers reads for every layer
    readonly float[] _cos;    // [C, head_dim/2]
    readonly float[] _sin;    // [C, head_dim/2]
    float[] _scores = [];     // [group·block, L] for the SGEMM attention path; grows to the longest context seen
    float[] _packQ = [], _packO = [];   // [group·block, head_dim]: one KV group's query heads packed, and their output

    // The products that share an input, as one call each (a decode step then pays one parallel loop for q/k/v and one
    // for gate/up): matrices, output widths and outputs, refilled per layer.
    readonly WeightTensor[] _qkvW = new WeightTensor[3], _mlpW = new WeightTensor[2];
    readonly int[] _qkvOut, _mlpOut;
    readonly float[][] _qkvY = new float[3][], _mlpY = new float[2][];

    // Chunk bookkeeping: one segment = consecutive new tokens of one sequence.
    readonly List<Segment> _segments = new();
    record struct Segment(int Seq, int Row, int Count, int Start, bool EndsSequence);
    IReadOnlyList<KvCache> _caches = [];

    /// <summary>
    /// Fewest rows per core for a layer's norms, RoPE and SwiGLU: decode steps (≤ 16 rows, microseconds of work) run
    /// inline instead of paying a parallel loop four times per layer; prefill and training rows split over the cores.
    /// </summary>
    const int ElementwiseRowsPerCore = 32;

    /// <summary>Where one layer reads and writes its activations (rows × width, row-major).</summary>
    sealed class LayerBuffers
    {
        public required float[] XIn, XMid, XOut;       // residual: layer input, after attention, layer output (may alias)
        public required float[] Xn;                    // normed block input (scratch)
        public required float[] Q, K, V;               // q, k after RoPE (and Qwen3 norm); v
        public required float[] Att;                   // attention output before o_proj
        public required float[] Gate, Up, H;           // MLP pre-activations; H = silu(Gate)·Up (may alias Gate)
        public float[]? Inv1, Inv2;                    // 1/rms of the two norms, kept for backward
        public float[]? QPre, KPre, QInv, KInv;        // Qwen3: q/k before their per-head norm, and its 1/rms
    }

    public Transformer(Model model, int maxChunkTokens = 256)
    {
        if (maxChunkTokens <= 0) throw new ArgumentOutOfRangeException(nameof(maxChunkTokens));
        Model = model; _c = model.Config; _w = model.Weights; _rope = new Rope(_c);
        MaxChunkTokens = maxChunkTokens;
        int C = maxChunkTokens;
        var gate = new float[C * _c.HiddenDim];
        var x = new float[C * _c.Dim];
        _inference = new LayerBuffers
        {
            XIn = x, XMid = x, XOut = x, Xn = new float[C * _c.Dim],
            Q = new float[C * _c.QDim], K = new float[C * _c.KvDim], V = new float[C * _c.KvDim], Att = new float[C * _c.QDim],
            Gate = gate, Up = new float[C * _c.HiddenDim], H = gate,
        };
        _inferenceLayers = [_inference];
        _qkvOut = [_c.QDim, _c.KvDim, _c.KvDim]; _mlpOut = [_c.HiddenDim, _c.HiddenDim];
        _cos = new float[C * _c.HeadDim / 2]; _sin = new float[C * _c.HeadDim / 2];
    }

    public Model Model { get; }
    public ModelConfig Config => _c;
    public int MaxChunkTokens { get; }

    /// <summary>When set, every call charges its wall time per <see cref="DecoderPhase"/> to this timer.</summary>
    public PhaseTimer? Timer { get; set; }

    void Mark(DecoderPhase phase) => Timer?.Mark(phase);

    /// <summary>
    /// Appends tokens[s] to caches[s] for every sequence s. For each sequence with at least one new
    /// token, writes the logits of its last new token to lastLogits[s*vocab .. (s+1)*vocab)
    /// (pass an empty span to skip the LM head).
    /// </summary>
    public void Forward(IReadOnlyList<KvCache> caches, IReadOnlyList<int[]> tokens, Span<float> lastLogits)
    {
        if (caches.Count != tokens.Count) throw new ArgumentException("one token array per cache is required.");
        if (!lastLogits.IsEmpty && lastLogits.Length < caches.Count * _c.VocabSize)
            throw new ArgumentException($"lastLogits needs {caches.Count}×{_c.VocabSize} floats.");
        Run(caches, tokens, lastLogits, default);
    }

    /// <summary>One sequence; logits of every new position into allLogits [n, vocab].</summary>
    public void ForwardAll(KvCache cache, int[] tokens, Span<float> allLogits)
    {
        if (allLogits.Length < tokens.Length * _c.VocabSize)
            throw new ArgumentException($"allLogits needs {tokens.Length}×{_c.VocabSize} floats.");
        Run([cache], [tokens], default, allLogits);
    }

    /// <summary>
    /// The mean over positions of the final-normed hidden state RMSNorm_final(x_t) — the vector the LM head reads — of
    /// <paramref name="tokens"/> as a sequence of its own (positions from 0, no prefix), into mean [dim]: a text
    /// embedding from the model itself (dense retrieval). Runs the one forward pass over a KV cache of its own that is
    /// dropped afterwards, so no caller's cache changes; the LM head itself is not applied.
    /// </summary>
    public void MeanHiddenState(int[] tokens, Span<float> mean)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Length == 0) throw new InvalidRequestException("a mean hidden state needs at least one token.");
        if (tokens.Length > _c.MaxSeqLen)
            throw new InvalidRequestException($"{tokens.Length} tokens exceed the model's context of {_c.MaxSeqLen}; embed a shorter text.");
        if (mean.Length != _c.Dim) throw new ArgumentException($"mean needs exactly {_c.Dim} floats (the model's dim).");
        mean.Clear();
        Run([new KvCache(_c, tokens.Length)], [tokens], default, default, mean);
        System.Numerics.Tensors.TensorPrimitives.Multiply(mean, 1f / tokens.Length, mean);
    }

    /// <summary>
    /// The inference loop over chunks of at most <see cref="MaxChunkTokens"/> rows. After the layers, the LM-head stage
    /// fills one of: allLogits (every row), lastLogits (each sequence's last row), or hiddenSum (Σ over rows of the
    /// final-normed hidden state, [dim], accumulated; no logits).
    /// </summary>
    void Run(IReadOnlyList<KvCache> caches, IReadOnlyList<int[]> tokens, Span<float> lastLogits, Span<float> allLogits, Span<float> hiddenSum = default)
    {
        // Validate everything before touching any cache, so a bad request changes nothing.
        for (int s = 0; s < caches.Count; s++)
        {
            var cache = caches[s];
            if (cache.Config != _c && (cache.KvHeads != _c.KvHeads || cache.HeadDim != _c.HeadDim || cache.Keys.Length != _c.Layers))
                throw new InvalidRequestException("a KV cache made for another model was passed to this transformer.");
            if (cache.Length + tokens[s].Length > cache.Capacity)
                throw new InvalidRequestException($"sequence {s} needs {cache.Length + tokens[s].Length} positions (prefix {cache.PrefixLength} + tokens) but its cache holds {cache.Capacity} (model context {_c.MaxSeqLen}); shorten the prompt or lower --max-tokens.");
            foreach (int t in tokens[s])
                if ((uint)t >= (uint)_c.VocabSize)
                    throw new InvalidRequestException($"token id {t} is outside the model's vocabulary [0, {_c.VocabSize}).");
        }

        _caches = caches;
        Timer?.Restart();   // time between calls belongs to the caller
        var x = _inference.XIn;
        int seq = 0, offset = 0, allRow = 0, half = _c.HeadDim / 2;
        while (seq < caches.Count)
        {
            _segments.Clear();
            int rows = 0;
            while (seq < caches.Count && rows < MaxChunkTokens)
            {
                int remaining = tokens[seq].Length - offset;
                if (remaining == 0) { seq++; offset = 0; continue; }
                int take = Math.Min(remaining, MaxChunkTokens - rows);
                int start = caches[seq].Append(take), position = start - caches[seq].PositionShift;
                var toks = tokens[seq].AsSpan(offset, take);
                for (int i = 0; i < take; i++)
                {
                    int r = rows + i;
                    _w.TokenEmbedding.Widen(toks[i] * _c.Dim, x.AsSpan(r * _c.Dim, _c.Dim));
                    _rope.Angles(position + i, _cos.AsSpan(r * half, half), _sin.AsSpan(r * half, half));
                }
                bool ends = take == remaining;
                _segments.Add(new Segment(seq, rows, take, start, ends));
                rows += take;
                if (ends) { seq++; offset = 0; } else offset += take;
            }
            if (rows == 0) break;
            Layers(rows, _inferenceLayers, _cos, _sin, prefixed: false);

            // LM head on the rows the caller wants.
            if (!allLogits.IsEmpty)
            {
                AllLogits(x, rows, allLogits.Slice(allRow * _c.VocabSize, rows * _c.VocabSize));
                allRow += rows;
            }
            else if (!lastLogits.IsEmpty)
                LastTokenLogits(lastLogits);
            else if (!hiddenSum.IsEmpty)
                SumFinalNormed(x, rows, hiddenSum);
            Mark(DecoderPhase.LmHead);
        }
        _caches = [];
    }

    /// <summary>
    /// THE forward pass: all layers over <paramref name="rows"/> rows whose embeddings are in layers[0].XIn and whose
    /// RoPE angles are in cos/sin. <paramref name="layers"/> holds one <see cref="LayerBuffers"/> per layer when the
    /// activations are kept for backward (layer l's XOut is layer l+1's XIn), or a single one that every layer reuses.
    /// Attention reads the sequences' KV caches (inference: new K/V are appended to them) or, when
    /// <paramref name="prefixed"/>, the training batch's composed prefixes and the batch's own token K/V.
    /// </summary>
    void Layers(int rows, LayerBuffers[] layers, float[] cos, float[] sin, bool prefixed)
    {
        int dim = _c.Dim, qd = _c.QDim, kvd = _c.KvDim, hidden = _c.HiddenDim;
        for (int l = 0; l < _c.Layers; l++)
        {
            var w = _w.Layers[l];
            var b = layers[layers.Length == 1 ? 0 : l];

            // ---- attention block: x += Wo · Attn(RoPE(Wq·norm(x) + bq), RoPE(Wk·norm(x) + bk), Wv·norm(x) + bv) + bo
            NormRows(b.XIn, w.AttnNorm, rows, b.Xn, b.Inv1);
            Mark(DecoderPhase.Elementwise);
            _qkvW[0] = w.Wq; _qkvW[1] = w.Wk; _qkvW[2] = w.Wv;
            _qkvY[0] = b.QPre ?? b.Q; _qkvY[1] = b.KPre ?? b.K; _qkvY[2] = b.V;
            WeightProduct.TimesTransposedShared(b.Xn, rows, dim, _qkvW, _qkvOut, _qkvY);
            if (w.Bq != null) Ops.AddBiasRows(_qkvY[0].AsSpan(0, rows * qd), w.Bq, rows);
            if (w.Bk != null) Ops.AddBiasRows(_qkvY[1].AsSpan(0, rows * kvd), w.Bk, rows);
            if (w.Bv != null) Ops.AddBiasRows(_qkvY[2].AsSpan(0, rows * kvd), w.Bv, rows);
            Mark(DecoderPhase.Projections);
            QkNormRope(rows, w, b, cos, sin);
            Mark(DecoderPhase.Elementwise);
            if (prefixed) AttendPrefixed(l, rows, b); else AttendCaches(l, rows, b);
            Mark(DecoderPhase.Attention);
            if (b.XMid != b.XIn) b.XIn.AsSpan(0, rows * dim).CopyTo(b.XMid);
            WeightProduct.TimesTransposed(b.Att.AsSpan(0, rows * qd), rows, w.Wo, dim, qd, 1f, b.XMid, dim);
            if (w.Bo != null) Ops.AddBiasRows(b.XMid.AsSpan(0, rows * dim), w.Bo, rows);
            Mark(DecoderPhase.Projections);

            // ---- MLP block: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
            NormRows(b.XMid, w.FfnNorm, rows, b.Xn, b.Inv2);
            Mark(DecoderPhase.Elementwise);
            _mlpW[0] = w.WGate; _mlpW[1] = w.WUp; _mlpY[0] = b.Gate; _mlpY[1] = b.Up;
            WeightProduct.TimesTransposedShared(b.Xn, rows, dim, _mlpW, _mlpOut, _mlpY);
            Mark(DecoderPhase.Projections);
            Ops.ParallelRows(rows, (r0, r1) =>
            {
                int at = r0 * hidden, n = (r1 - r0) * hidden;
                Ops.SwiGlu(b.Gate.AsSpan(at, n), b.Up.AsSpan(at, n), b.H.AsSpan(at, n));
            }, ElementwiseRowsPerCore);
            if (b.XOut != b.XMid) b.XMid.AsSpan(0, rows * dim).CopyTo(b.XOut);
            Mark(DecoderPhase.Elementwise);
            WeightProduct.TimesTransposed(b.H.AsSpan(0, rows * hidden), rows, w.WDown, dim, hidden, 1f, b.XOut, dim);
            Mark(DecoderPhase.Projections);
        }
    }

    /// <summary>dst[r] = RMSNorm(x[r]) for each row (over the cores); 1/rms into inv[r] when inv is given.</summary>
    void NormRows(float[] x, float[] weight, int rows, float[] dst, float[]? inv)
    {
        int dim = _c.Dim; float eps = _c.NormEps;
        Ops.ParallelRows(rows, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                float i = Ops.RmsNorm(x.AsSpan(r * dim, dim), weight, eps, dst.AsSpan(r * dim, dim));
                if (inv != null) inv[r] = i;
            }
        }, ElementwiseRowsPerCore);
    }

    /// <summary>Qwen3's per-head q/k RMSNorm (from QPre/KPre when they are kept, else in place), then RoPE on q and k.</summary>
    void QkNormRope(int rows, LayerWeights w, LayerBuffers b, float[] cos, float[] sin)
    {
        int half = _c.HeadDim / 2;
        Ops.ParallelRows(rows, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                var c = cos.AsSpan(r * half, half); var s = sin.AsSpan(r * half, half);
                NormRotateHeads(r, _c.Heads, b.Q, b.QPre, b.QInv, w.QNorm, c, s);
                NormRotateHeads(r, _c.KvHeads, b.K, b.KPre, b.KInv, w.KNorm, c, s);
            }
        }, ElementwiseRowsPerCore);
    }

    /// <summary>Row r of x [rows, heads·head_dim]: per head, RMSNorm from pre (or in place; 1/rms into inv) when norm is given, then RoPE.</summary>
    void NormRotateHeads(int r, int heads, float[] x, float[]? pre, float[]? inv, float[]? norm, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int hd = _c.HeadDim, width = heads * hd;
        for (int h = 0; h < heads; h++)
        {
            var xh = x.AsSpan(r * width + h * hd, hd);
            if (norm != null)
            {
                float i = Ops.RmsNorm(pre != null ? pre.AsSpan(r * width + h * hd, hd) : xh, norm, _c.NormEps, xh);
                if (inv != null) inv[r * heads + h] = i;
            }
            _rope.Rotate(xh, cos, sin);
        }
    }
}
