namespace Cas.Engine;

/// <summary>One sequence to continue: its prompt ids (BOS included by the caller), an optional KV prefix, and options.</summary>
public sealed record GenerationRequest(int[] Prompt, KvPrefix? Prefix = null)
{
    public int MaxTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>Generation ends (without emitting it) at any of these ids.</summary>
    public IReadOnlyList<int> StopTokens { get; init; } = [];
}

public enum FinishReason { Stop, Length, Context }

public sealed record GenerationResult(int[] Tokens, FinishReason Finish, int PromptTokens);

/// <summary>Called after each sampled token with the logits it was drawn from (e.g. to keep teacher top-k).</summary>
public delegate void TokenCallback(int request, int token, ReadOnlySpan<float> logits);

/// <summary>
/// Batched prefill and decode: all prompts are prefilled together, then every active sequence
/// advances one token per step in a single forward pass.
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
            int prefix = r.Prefix?.Length ?? 0;
            int needed = prefix + r.Prompt.Length;
            if (needed > c.MaxSeqLen)
                throw new InvalidRequestException($"prompt of {r.Prompt.Length} tokens{(prefix > 0 ? $" after a {prefix}-slot cartridge" : "")} exceeds the model's context of {c.MaxSeqLen} positions; shorten it.");
            samplers[i] = new Sampler(r.Sampling, vocab);
            caches[i] = new KvCache(c, (int)Math.Min((long)needed + r.MaxTokens, c.MaxSeqLen), r.Prefix);
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

        // Prefill all prompts in one batched pass.
        _t.Forward(caches, step, logits);
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
