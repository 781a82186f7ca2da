using LLama;
using LLama.Common;
using LLama.Native;

namespace Cas.Bench.Peers;

/// <summary>
/// The llama.cpp peer through LLamaSharp (CPU backend): loads a GGUF written by <see cref="GgufWriter"/> and runs
/// prefill and batched decode with llama.cpp's defaults except the thread count, the batch sizes and, for several
/// sequences, a non-unified KV cache (one stream per sequence: 100 vs 73 tokens/s at batch 16 measured).
/// </summary>
sealed class LlamaCppPeer : IDisposable
{
    static bool _logSet;
    readonly LLamaWeights _weights;
    readonly LLamaContext _ctx;
    readonly int _vocab;

    /// <param name="sequences">parallel sequences; each gets <paramref name="perSequenceContext"/> positions.</param>
    /// <param name="exact">F32 K/V cache and no flash attention instead of llama.cpp's defaults (the logits check only).</param>
    public LlamaCppPeer(string gguf, int sequences, int perSequenceContext, int threads, bool exact = false)
    {
        if (!_logSet)
        {
            // llama.cpp logs every tensor it loads; keep errors only.
            NativeLibraryConfig.All.WithLogCallback((level, msg) => { if (level == LLamaLogLevel.Error) Console.Error.Write(msg); });
            _logSet = true;
        }
        var p = new ModelParams(gguf)
        {
            ContextSize = (uint)(sequences * perSequenceContext),
            SeqMax = (uint)sequences,
            KVUnified = sequences == 1,
            BatchSize = 512,
            UBatchSize = 512,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
        };
        if (exact)
        {
            // llama.cpp's CPU flash attention (on by default) and its F16 KV cache round to half precision (3e-4
            // relative on the logits, measured); without them an F32 GGUF reproduces our fp32 logits to ~1e-7.
            p.TypeK = GGMLType.GGML_TYPE_F32; p.TypeV = GGMLType.GGML_TYPE_F32;
            p.FlashAttention = false;
        }
        _weights = LLamaWeights.LoadFromFile(p);
        _ctx = _weights.CreateContext(p);
        _vocab = _weights.Vocab.Count;
    }

    public int Vocab => _vocab;

    /// <summary>Empties the KV cache of every sequence.</summary>
    public void Clear() => _ctx.NativeHandle.MemoryClear(true);

    /// <summary>Feeds tokens to one sequence from position <paramref name="start"/>; logits of every position (all) or the last.</summary>
    public float[] Feed(int seq, int[] tokens, int start, bool all)
    {
        var result = new float[(all ? tokens.Length : 1) * _vocab];
        var batch = new LLamaBatch();
        for (int i = 0; i < tokens.Length; i += 512)
        {
            batch.Clear();
            int n = Math.Min(512, tokens.Length - i);
            for (int j = 0; j < n; j++) batch.Add(tokens[i + j], start + i + j, (LLamaSeqId)seq, all || i + j == tokens.Length - 1);
            Decode(batch);
            for (int j = 0; j < n; j++)
                if (all || i + j == tokens.Length - 1)
                    _ctx.NativeHandle.GetLogitsIth(j).CopyTo(result.AsSpan((all ? i + j : 0) * _vocab, _vocab));
        }
        return result;
    }

    /// <summary>Copies sequence 0's KV (positions [0, length)) to sequences 1..n−1.</summary>
    public void Fork(int sequences, int length)
    {
        for (int s = 1; s < sequences; s++) _ctx.NativeHandle.MemorySequenceCopy((LLamaSeqId)0, (LLamaSeqId)s, -1, -1); // whole sequence: llama.cpp copies between KV streams only whole
    }

    /// <summary>One token for each of the sequences 0..n−1 at position <paramref name="pos"/>; their logits, row per sequence.</summary>
    public float[] Step(int[] tokens, int pos)
    {
        _step.Clear();
        for (int s = 0; s < tokens.Length; s++) _step.Add(tokens[s], pos, (LLamaSeqId)s, true);
        Decode(_step);
        var logits = new float[tokens.Length * _vocab];
        for (int s = 0; s < tokens.Length; s++) _ctx.NativeHandle.GetLogitsIth(s).CopyTo(logits.AsSpan(s * _vocab, _vocab));
        return logits;
    }
    readonly LLamaBatch _step = new();

    void Decode(LLamaBatch b)
    {
        var r = _ctx.NativeHandle.Decode(b);
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {r}.");
    }

    public void Dispose() { _ctx.Dispose(); _weights.Dispose(); }
}
