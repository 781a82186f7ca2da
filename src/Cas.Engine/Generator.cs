namespace Cas.Engine;

/// <summary>One sequence to continue: its prompt ids (BOS included by the caller), an optional KV prefix, and options.</summary>
public sealed record GenerationRequest(int[] Prompt, KvPrefix? Prefix = null)
{
    public int MaxTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>Generation ends (without emitting it) at any of these ids.</summary>
    public IReadOnlyList<int> StopTokens { get; init; } = [];

    /// <summary>
    /// Start from a copy of this already-filled cache (its prefix and token KV) instead of an empty one:
    /// <see cref="Prompt"/> then holds only the tokens that follow the cache's content (at least one, for the
    /// first logits). The cache is only read, so many requests can fork the same one: that is how a shared
    /// prompt prefix (e.g. a document chunk) is prefilled once and used by every sequence that starts with it.
    /// Cannot be combined with <see cref="Prefix"/> (the fork already holds its own prefix, if any).
    /// </summary>
    public KvCache? Fork { get; init; }

    /// <summary>
    /// Called after each emitted token with every token generated so far; returning true ends the request
    /// there (finish reason <see cref="FinishReason.Stop"/>), keeping that token. For stops that are not single
    /// token ids, e.g. a stop string: the caller decodes and cuts.
    /// </summary>
    public Func<IReadOnlyList<int>, bool>? StopAfter { get; init; }
}

public enum FinishReason { Stop, Length, Context }

public sealed record GenerationResult(int[] Tokens, FinishReason Finish, int PromptTokens);

/// <summary>Called after each sampled token with the logits it was drawn from (e.g. to keep teacher top-k).</summary>
public delegate void TokenCallback(int request, int token, ReadOnlySpan<float> logits);

/// <summary>
/// Batched prefill and decode: all prompts are prefilled together, then every active sequence
/// advances one token per step in a single forward pass.
/// <para>Prefill packs whole prompts into forward passes of at most <see cref="Transformer.MaxChunkTokens"/>
/// rows (a longer prompt runs alone, cut at fixed offsets from its own start), so how a prompt is split
/// never depends on the other prompts in the batch: with kernels that compute each row independently
/// of the others (e.g. <c>CAS_BLAS=managed</c>) a request's tokens and logits are then bit-identical
/// whatever it is batched with.</para>
/// </summary>
public sealed class Generator
{
    readonly Transformer _t;
    public Generator(Transformer transformer) => _t = transformer;

    public IReadOnlyList<GenerationResult> Generate(IReadOnlyList<GenerationRequest> requests, TokenCallback? onToken = null,
        CancellationToken cancel = default)
    {
        var c = _t.Config;
        int n = requests.Count, vocab = c.VocabSize;
        var caches = new KvCache[n];
        var samplers = new Sampler[n];
        var outputs = new List<int>[n];
        var finish = new FinishReason[n];
        for (int i = 0; i < n; i++)
        {
            var r = requests[i];
            if (r.Prompt.Length == 0) throw new InvalidRequestException("a prompt must hold at least one token (start from BOS for an empty prompt).");
            if (r.MaxTokens < 0) throw new InvalidRequestException($"max tokens must be ≥ 0, got {r.MaxTokens}.");
            if (r.Fork != null && r.Prefix != null)
                throw new InvalidRequestException("a request cannot both fork a cache and set a KV prefix; the fork already holds its prefix.");
            if (r.Fork != null && (r.Fork.KvHeads != c.KvHeads || r.Fork.HeadDim != c.HeadDim || r.Fork.Keys.Length != c.Layers))
                throw new InvalidRequestException("the cache to fork was made for another model.");
            int prefix = r.Fork?.Length ?? r.Prefix?.Length ?? 0;
            int needed = prefix + r.Prompt.Length;
            if (needed > c.MaxSeqLen)
                throw new InvalidRequestException($"prompt of {r.Prompt.Length} tokens{(prefix > 0 ? $" after a {prefix}-slot {(r.Fork != null ? "shared prefix" : "cartridge")}" : "")} exceeds the model's context of {c.MaxSeqLen} positions; shorten it.");
            samplers[i] = new Sampler(r.Sampling, vocab);
            caches[i] = new KvCache(c, (int)Math.Min((long)needed + r.MaxTokens, c.MaxSeqLen), r.Prefix);
            if (r.Fork != null) caches[i].CopyFrom(r.Fork);
            outputs[i] = new List<int>(Math.Min(r.MaxTokens, 4096));
        }

        var logits = new float[n * vocab];
        var step = new int[n][];
        var active = new List<int>(n);
        for (int i = 0; i < n; i++) { step[i] = requests[i].Prompt; active.Add(i); }
        var activeCaches = new List<KvCache>(n);
        var activeTokens = new List<int[]>(n);
        var one = new int[n][];
        for (int i = 0; i < n; i++) one[i] = new int[1];

        // Prefill: whole prompts packed into passes of at most MaxChunkTokens rows.
        for (int first = 0; first < n;)
        {
            int end = first + 1, rows = step[first].Length;
            while (end < n && rows + step[end].Length <= _t.MaxChunkTokens) rows += step[end++].Length;
            int count = end - first;
            _t.Forward(new ArraySegment<KvCache>(caches, first, count), new ArraySegment<int[]>(step, first, count),
                logits.AsSpan(first * vocab, count * vocab));
            first = end;
        }
        while (active.Count > 0)
        {
            cancel.ThrowIfCancellationRequested();
            // Sample a token for every active sequence from its latest logits.
            activeCaches.Clear(); activeTokens.Clear();
            for (int a = active.Count - 1; a >= 0; a--)
            {
                int i = active[a];
                var r = requests[i];
                if (outputs[i].Count >= r.MaxTokens) { finish[i] = FinishReason.Length; active.RemoveAt(a); continue; }
                var li = logits.AsSpan(i * vocab, vocab);
                int tok = samplers[i].Sample(li);
                onToken?.Invoke(i, tok, li);
                if (Contains(r.StopTokens, tok)) { finish[i] = FinishReason.Stop; active.RemoveAt(a); continue; }
                outputs[i].Add(tok);
                if (r.StopAfter != null && r.StopAfter(outputs[i])) { finish[i] = FinishReason.Stop; active.RemoveAt(a); continue; }
                if (outputs[i].Count >= r.MaxTokens) { finish[i] = FinishReason.Length; active.RemoveAt(a); continue; }
                if (caches[i].Length >= caches[i].Capacity) { finish[i] = FinishReason.Context; active.RemoveAt(a); continue; }
                one[i][0] = tok;
            }
            if (active.Count == 0) break;
            // Every caller sees sequences in request order.
            active.Sort();
            foreach (int i in active) { activeCaches.Add(caches[i]); activeTokens.Add(one[i]); }
            // Forward writes logits at positions 0..active-1; scatter them back to request slots.
            _t.Forward(activeCaches, activeTokens, logits.AsSpan(0, active.Count * vocab));
            for (int a = active.Count - 1; a >= 0; a--)
            {
                int i = active[a];
                if (i != a) logits.AsSpan(a * vocab, vocab).CopyTo(logits.AsSpan(i * vocab, vocab));
            }
        }

        var results = new GenerationResult[n];
        for (int i = 0; i < n; i++) results[i] = new GenerationResult(outputs[i].ToArray(), finish[i], requests[i].Prompt.Length);
        return results;
    }

    static bool Contains(IReadOnlyList<int> list, int v)
    {
        for (int i = 0; i < list.Count; i++) if (list[i] == v) return true;
        return false;
    }
}
