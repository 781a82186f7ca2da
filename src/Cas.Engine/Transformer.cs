using System.Numerics.Tensors;
using Cas.Engine.Compute;
using Cas.Engine.Models;

namespace Cas.Engine;

/// <summary>
/// The forward pass of a Llama/Qwen2/Qwen3 decoder over a batch of sequences of different lengths.
/// New tokens of all sequences are stacked as rows of one activation matrix so every projection is
/// one SGEMM; attention runs per sequence against that sequence's <see cref="KvCache"/>.
/// Activation buffers are sized once for <see cref="MaxChunkTokens"/> rows; longer inputs run in chunks.
/// Not thread-safe: one Transformer per concurrent caller (they can share the Model).
/// </summary>
public sealed class Transformer
{
    readonly ModelConfig _c;
    readonly ModelWeights _w;
    readonly Rope _rope;

    // Activations, C = MaxChunkTokens rows.
    readonly float[] _x;      // [C, dim]     residual stream
    readonly float[] _xn;     // [C, dim]     normed input of the current block
    readonly float[] _q;      // [C, heads*head_dim]
    readonly float[] _k;      // [C, kv_heads*head_dim]
    readonly float[] _v;      // [C, kv_heads*head_dim]
    readonly float[] _att;    // [C, heads*head_dim] attention output before o_proj
    readonly float[] _gate;   // [C, hidden]
    readonly float[] _up;     // [C, hidden]
    readonly float[] _cos;    // [C, head_dim/2]
    readonly float[] _sin;    // [C, head_dim/2]
    readonly int[] _pos;      // [C] position of each row
    float[] _scores = [];     // [n, L] for the SGEMM attention path; grows to the longest context seen

    // Chunk bookkeeping: one segment = consecutive new tokens of one sequence.
    readonly List<Segment> _segments = new();
    record struct Segment(int Seq, int Row, int Count, int Start, bool EndsSequence);

    public Transformer(Model model, int maxChunkTokens = 256)
    {
        if (maxChunkTokens <= 0) throw new ArgumentOutOfRangeException(nameof(maxChunkTokens));
        Model = model; _c = model.Config; _w = model.Weights; _rope = new Rope(_c);
        MaxChunkTokens = maxChunkTokens;
        int C = maxChunkTokens;
        _x = new float[C * _c.Dim]; _xn = new float[C * _c.Dim];
        _q = new float[C * _c.QDim]; _k = new float[C * _c.KvDim]; _v = new float[C * _c.KvDim];
        _att = new float[C * _c.QDim];
        _gate = new float[C * _c.HiddenDim]; _up = new float[C * _c.HiddenDim];
        _cos = new float[C * _c.HeadDim / 2]; _sin = new float[C * _c.HeadDim / 2];
        _pos = new int[C];
    }

    public Model Model { get; }
    public ModelConfig Config => _c;
    public int MaxChunkTokens { get; }

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

    void Run(IReadOnlyList<KvCache> caches, IReadOnlyList<int[]> tokens, Span<float> lastLogits, Span<float> allLogits)
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

        int seq = 0, offset = 0, allRow = 0;
        while (seq < caches.Count)
        {
            _segments.Clear();
            int rows = 0;
            while (seq < caches.Count && rows < MaxChunkTokens)
            {
                int remaining = tokens[seq].Length - offset;
                if (remaining == 0) { seq++; offset = 0; continue; }
                int take = Math.Min(remaining, MaxChunkTokens - rows);
                int start = caches[seq].Append(take);
                var toks = tokens[seq].AsSpan(offset, take);
                for (int i = 0; i < take; i++)
                {
                    _w.TokenEmbedding.AsSpan(toks[i] * _c.Dim, _c.Dim).CopyTo(_x.AsSpan((rows + i) * _c.Dim, _c.Dim));
                    _pos[rows + i] = start + i;
                }
                bool ends = take == remaining;
                _segments.Add(new Segment(seq, rows, take, start, ends));
                rows += take;
                if (ends) { seq++; offset = 0; } else offset += take;
            }
            if (rows == 0) break;
            ForwardChunk(caches, rows);

            // LM head on the rows the caller wants.
            var xn = _xn.AsSpan();
            if (!allLogits.IsEmpty)
            {
                Ops.RmsNormRows(_x.AsSpan(0, rows * _c.Dim), _w.FinalNorm, _c.NormEps, rows, xn);
                Ops.Linear(xn, rows, _w.LmHead, _c.VocabSize, _c.Dim, allLogits.Slice(allRow * _c.VocabSize, rows * _c.VocabSize));
                allRow += rows;
            }
            else if (!lastLogits.IsEmpty)
                LastTokenLogits(lastLogits);
        }
    }

    /// <summary>
    /// LM head for the last row of every segment that ends its sequence. The rows are gathered and
    /// multiplied in one product when their sequences are consecutive (the decode case), so the
    /// [vocab, dim] head is read once per step rather than once per sequence.
    /// </summary>
    void LastTokenLogits(Span<float> lastLogits)
    {
        int dim = _c.Dim, vocab = _c.VocabSize, n = 0, firstSeq = -1;
        bool consecutive = true;
        foreach (var sg in _segments)
        {
            if (!sg.EndsSequence) continue;
            if (n == 0) firstSeq = sg.Seq; else if (sg.Seq != firstSeq + n) consecutive = false;
            int r = sg.Row + sg.Count - 1;
            Ops.RmsNorm(_x.AsSpan(r * dim, dim), _w.FinalNorm, _c.NormEps, _xn.AsSpan(n * dim, dim));
            n++;
        }
        if (n == 0) return;
        if (consecutive)
        {
            Ops.Linear(_xn.AsSpan(0, n * dim), n, _w.LmHead, vocab, dim, lastLogits.Slice(firstSeq * vocab, n * vocab));
            return;
        }
        int i = 0;
        foreach (var sg in _segments)
        {
            if (!sg.EndsSequence) continue;
            Ops.Linear(_xn.AsSpan(i * dim, dim), 1, _w.LmHead, vocab, dim, lastLogits.Slice(sg.Seq * vocab, vocab));
            i++;
        }
    }

    /// <summary>All layers for the rows of the current chunk (embeddings already in _x).</summary>
    void ForwardChunk(IReadOnlyList<KvCache> caches, int rows)
    {
        int dim = _c.Dim, qd = _c.QDim, kvd = _c.KvDim, hd = _c.HeadDim, half = hd / 2, hidden = _c.HiddenDim;
        for (int r = 0; r < rows; r++)
            _rope.Angles(_pos[r], _cos.AsSpan(r * half, half), _sin.AsSpan(r * half, half));

        var x = _x.AsSpan(0, rows * dim); var xn = _xn.AsSpan(0, rows * dim);
        var q = _q.AsSpan(0, rows * qd); var k = _k.AsSpan(0, rows * kvd); var v = _v.AsSpan(0, rows * kvd);
        for (int l = 0; l < _c.Layers; l++)
        {
            var w = _w.Layers[l];
            // ---- attention block: x += Wo · Attn(RoPE(Wq·norm(x)), RoPE(Wk·norm(x)), Wv·norm(x))
            Ops.RmsNormRows(x, w.AttnNorm, _c.NormEps, rows, xn);
            Ops.Linear(xn, rows, w.Wq, qd, dim, q, w.Bq);
            Ops.Linear(xn, rows, w.Wk, kvd, dim, k, w.Bk);
            Ops.Linear(xn, rows, w.Wv, kvd, dim, v, w.Bv);
            for (int r = 0; r < rows; r++)
            {
                var cos = _cos.AsSpan(r * half, half); var sin = _sin.AsSpan(r * half, half);
                for (int h = 0; h < _c.Heads; h++)
                {
                    var qh = q.Slice(r * qd + h * hd, hd);
                    if (w.QNorm != null) Ops.RmsNorm(qh, w.QNorm, _c.NormEps, qh);
                    _rope.Rotate(qh, cos, sin);
                }
                for (int h = 0; h < _c.KvHeads; h++)
                {
                    var kh = k.Slice(r * kvd + h * hd, hd);
                    if (w.KNorm != null) Ops.RmsNorm(kh, w.KNorm, _c.NormEps, kh);
                    _rope.Rotate(kh, cos, sin);
                }
            }
            StoreKv(caches, l, k, v);
            Attend(caches, l);
            Blas.Sgemm(false, true, rows, dim, qd, 1f, _att, qd, w.Wo, qd, 1f, x, dim);
            if (w.Bo != null) Ops.AddBiasRows(x, w.Bo, rows);

            // ---- MLP block: x += W_down · (silu(W_gate·norm(x)) * W_up·norm(x))
            Ops.RmsNormRows(x, w.FfnNorm, _c.NormEps, rows, xn);
            var gate = _gate.AsSpan(0, rows * hidden); var up = _up.AsSpan(0, rows * hidden);
            Ops.Linear(xn, rows, w.WGate, hidden, dim, gate);
            Ops.Linear(xn, rows, w.WUp, hidden, dim, up);
            Ops.SwiGlu(gate, up);
            Blas.Sgemm(false, true, rows, dim, hidden, 1f, gate, hidden, w.WDown, hidden, 1f, x, dim);
        }
    }

    void StoreKv(IReadOnlyList<KvCache> caches, int layer, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        int hd = _c.HeadDim, kvd = _c.KvDim;
        foreach (var sg in _segments)
        {
            var cache = caches[sg.Seq];
            var K = cache.Keys[layer]; var V = cache.Values[layer]; int cap = cache.Capacity;
            for (int i = 0; i < sg.Count; i++)
            {
                int r = sg.Row + i, slot = sg.Start + i;
                for (int g = 0; g < _c.KvHeads; g++)
                {
                    k.Slice(r * kvd + g * hd, hd).CopyTo(K.AsSpan((g * cap + slot) * hd, hd));
                    v.Slice(r * kvd + g * hd, hd).CopyTo(V.AsSpan((g * cap + slot) * hd, hd));
                }
            }
        }
    }

    [ThreadStatic] static float[]? t_scores;

    void Attend(IReadOnlyList<KvCache> caches, int layer)
    {
        int qd = _c.QDim, heads = _c.Heads;
        // Long segments: SGEMM per head (BLAS uses all cores).
        int small = 0;
        foreach (var sg in _segments)
        {
            if (sg.Count < Attention.GemmMinRows) { small++; continue; }
            int need = sg.Count * (sg.Start + sg.Count);
            if (_scores.Length < need) _scores = GC.AllocateUninitializedArray<float>(need);
            Attention.ForwardGemm(_q.AsSpan(sg.Row * qd), qd, caches[sg.Seq], layer, sg.Start, sg.Count,
                _att.AsSpan(sg.Row * qd), _scores);
        }
        if (small == 0) return;
        // Short segments (decode): one work item per (segment, head), spread over the cores.
        var segs = _segments;
        Parallel.For(0, segs.Count * heads, item =>
        {
            var sg = segs[item / heads];
            if (sg.Count >= Attention.GemmMinRows) return;
            int L = sg.Start + sg.Count;
            var scores = t_scores;
            if (scores == null || scores.Length < L) t_scores = scores = GC.AllocateUninitializedArray<float>(Math.Max(L, 1024));
            Attention.ForwardHead(_q.AsSpan(sg.Row * qd), qd, caches[sg.Seq], layer, sg.Start, sg.Count, item % heads,
                _att.AsSpan(sg.Row * qd), scores);
        });
    }
}
