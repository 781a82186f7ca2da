using System.Diagnostics;
using System.Threading.Channels;
using Cas.Engine;

namespace Cas.Service;

/// <summary>One sequence to decode: the cartridges it attends to (in slot order), its prompt, and how to sample.</summary>
public sealed record DecodeRequest(IReadOnlyList<KvPrefix> Cartridges, int[] Prompt)
{
    public int MaxTokens { get; init; } = 128;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    public IReadOnlyList<int> StopTokens { get; init; } = [];
}

/// <summary>
/// How a sequence ended, its tokens, and where its time went. <paramref name="CacheBytes"/>: the K/V bytes the sequence's own
/// cache held (its prompt and answer slots; the cartridges it attended to are referenced, not counted).
/// </summary>
public sealed record DecodeResult(int[] Tokens, FinishReason Finish, int PromptTokens, int PrefixSlots, double QueuedMs, double PrefillMs, double DecodeMs)
{
    public long CacheBytes { get; init; }
}

/// <summary>
/// Continuous batching for one model: a single thread runs, at every step, one batched forward pass over every active
/// sequence (each attending to its composed cartridges, then its own tokens). A new request is prefilled and
/// joins at the next step; a sequence leaves as soon as it is done or its caller cancels (its task then ends
/// cancelled and nothing of it is touched again). The per-sequence rules (stop tokens not emitted, max tokens, a full
/// context) are those of <see cref="Generator"/>, so a greedy sequence decodes the same tokens here as alone.
/// <para>The cartridges are not copied: a sequence's <see cref="KvCache"/> references them as a
/// <see cref="ComposedPrefix"/> (the resident K/V, shared by every sequence that uses the same cartridge) and holds only
/// its prompt and answer slots. So the cartridges must stay resident and unchanged until the task ends: the callers'
/// leases stay held until then, which is what the service does.</para>
/// </summary>
public sealed class DecodeScheduler : IDisposable
{
    readonly Transformer _t;
    readonly Channel<Sequence> _incoming = Channel.CreateUnbounded<Sequence>(new UnboundedChannelOptions { SingleReader = true });
    readonly Thread _thread;
    readonly CancellationTokenSource _stop = new();
    long _steps, _stepRows, _maxBatch;

    /// <param name="maxCacheBytes">
    /// KV budget of the sequences' own caches together (<see cref="CacheBytes"/>): a waiting sequence is admitted, first
    /// come first served, only when its cache fits beside the active ones' (one alone always runs). The cartridges the
    /// sequences reference are not counted here; they are the budget manager's.
    /// </param>
    public DecodeScheduler(Transformer transformer, int maxBatch = 64, long maxCacheBytes = long.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatch, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCacheBytes, 1);
        _t = transformer; MaxBatch = maxBatch; MaxCacheBytes = maxCacheBytes;
        _thread = new Thread(Run) { IsBackground = true, Name = "cas-decode" };
        _thread.Start();
    }

    /// <summary>Most sequences in one step; more wait for a place.</summary>
    public int MaxBatch { get; }

    /// <summary>Most bytes of the admitted sequences' own K/V caches together; more wait for room.</summary>
    public long MaxCacheBytes { get; }

    /// <summary>
    /// Bytes of the own KV cache a request gets: its prompt and answer slots (capped by the context), without the
    /// cartridge slots it references.
    /// </summary>
    public static long CacheBytesOf(Cas.Engine.Models.ModelConfig c, DecodeRequest r)
    {
        long slots = 0;
        foreach (var p in r.Cartridges) slots += p.Length;
        long positions = Math.Min(slots + r.Prompt.Length + (long)r.MaxTokens, c.MaxSeqLen) - slots;
        return 2L * c.Layers * c.KvHeads * c.HeadDim * sizeof(float) * positions;
    }

    /// <summary>Decode steps run, rows (sequences) summed over them, and the largest batch seen.</summary>
    public (long Steps, long Rows, long MaxBatch) Stats => (Interlocked.Read(ref _steps), Interlocked.Read(ref _stepRows), Interlocked.Read(ref _maxBatch));

    /// <summary>Number of sequences being decoded or waiting.</summary>
    public int Active => Volatile.Read(ref _active);
    int _active;

    /// <summary>K/V bytes of the admitted sequences' own caches now (cartridges excluded: they are referenced), and the most seen.</summary>
    public (long Now, long Peak) CacheBytes => (Interlocked.Read(ref _cacheBytes), Interlocked.Read(ref _peakCacheBytes));
    long _cacheBytes, _peakCacheBytes;

    /// <summary>
    /// Queues a sequence. <paramref name="onToken"/> is called on the scheduler's thread for each emitted token (keep it
    /// short: write to a channel). The task ends when the sequence is done, faults on a bad request, and is cancelled
    /// when <paramref name="cancel"/> fires (the sequence leaves at the next step).
    /// </summary>
    public Task<DecodeResult> Submit(DecodeRequest request, Action<int>? onToken, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request);
        Validate(request);
        var s = new Sequence(request, onToken, cancel);
        Interlocked.Increment(ref _active);
        if (!_incoming.Writer.TryWrite(s)) { Interlocked.Decrement(ref _active); throw new ObjectDisposedException(nameof(DecodeScheduler)); }
        return s.Done.Task;
    }

    void Validate(DecodeRequest r)
    {
        var c = _t.Config;
        if (r.Prompt.Length == 0) throw new InvalidRequestException("a prompt must hold at least one token.");
        if (r.MaxTokens < 0) throw new InvalidRequestException($"max tokens must be ≥ 0, got {r.MaxTokens}.");
        r.Sampling.Validate();
        int slots = 0;
        foreach (var p in r.Cartridges)
        {
            if (p.Layers != c.Layers || p.KvHeads != c.KvHeads || p.HeadDim != c.HeadDim)
                throw new InvalidRequestException($"a cartridge of shape (layers {p.Layers}, kv_heads {p.KvHeads}, head_dim {p.HeadDim}) does not belong to this model (layers {c.Layers}, kv_heads {c.KvHeads}, head_dim {c.HeadDim}).");
            slots += p.Length;
        }
        if (slots + r.Prompt.Length > c.MaxSeqLen)
            throw new InvalidRequestException($"{slots} cartridge slots + a prompt of {r.Prompt.Length} tokens exceed the model's context of {c.MaxSeqLen} positions; use fewer or smaller cartridges or a shorter prompt.");
        long bytes = CacheBytesOf(c, r);
        if (bytes > MaxCacheBytes)
            throw new InvalidRequestException($"the sequence's KV cache needs {bytes:N0} bytes but the decode KV budget is {MaxCacheBytes:N0}; shorten the prompt or lower max tokens.");
    }

    sealed class Sequence(DecodeRequest request, Action<int>? onToken, CancellationToken cancel)
    {
        public readonly DecodeRequest Request = request;
        public readonly Action<int>? OnToken = onToken;
        public readonly CancellationToken Cancel = cancel;
        public readonly TaskCompletionSource<DecodeResult> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly long Queued = Stopwatch.GetTimestamp();
        public KvCache? Cache;
        public Sampler? Sampler;
        public float[]? Logits;
        public readonly int[] Next = new int[1];
        public readonly List<int> Output = [];
        public int Slots;
        public long CacheBytes;
        public double QueuedMs, PrefillMs;
        public long DecodeStart;
    }

    void Run()
    {
        var active = new List<Sequence>();
        var caches = new List<KvCache>();
        var tokens = new List<int[]>();
        int vocab = _t.Config.VocabSize;
        float[] logits = [];
        try
        {
            while (true)
            {
                // Disposed: stop now, even with sequences active (the finally block cancels them), so Dispose never
                // waits for answers to run to their max tokens.
                if (_stop.IsCancellationRequested) return;
                // Wait for work when idle; otherwise take whatever arrived since the last step.
                if (active.Count == 0 && !_incoming.Reader.TryPeek(out _))
                    if (!_incoming.Reader.WaitToReadAsync(_stop.Token).AsTask().GetAwaiter().GetResult()) return;
                while (active.Count < MaxBatch && _incoming.Reader.TryPeek(out var next))
                {
                    // KV budget: the next sequence waits (first come, first served) until its cache fits beside the
                    // active ones'; a cancelled one is let through at once (Admit drops it).
                    if (active.Count > 0 && !next.Cancel.IsCancellationRequested
                        && Interlocked.Read(ref _cacheBytes) + CacheBytesOf(_t.Config, next.Request) > MaxCacheBytes) break;
                    if (!_incoming.Reader.TryRead(out var s)) break;
                    if (Admit(s)) active.Add(s);
                }

                // Sample from each sequence's latest logits; finished or cancelled ones leave.
                for (int a = active.Count - 1; a >= 0; a--)
                {
                    var s = active[a];
                    if (s.Cancel.IsCancellationRequested) { Leave(s); s.Done.TrySetCanceled(s.Cancel); active.RemoveAt(a); continue; }
                    var finish = SampleNext(s);
                    if (finish is { } f) { Finish(s, f); active.RemoveAt(a); }
                }
                if (active.Count == 0) continue;

                // One batched forward pass: every active sequence advances by one token.
                caches.Clear(); tokens.Clear();
                foreach (var s in active) { caches.Add(s.Cache!); tokens.Add(s.Next); }
                if (logits.Length < active.Count * vocab) logits = new float[active.Count * vocab];
                try { _t.Forward(caches, tokens, logits.AsSpan(0, active.Count * vocab)); }
                catch (Exception e)
                {
                    foreach (var s in active) { Leave(s); s.Done.TrySetException(e); }
                    active.Clear();
                    continue;
                }
                for (int a = 0; a < active.Count; a++) logits.AsSpan(a * vocab, vocab).CopyTo(active[a].Logits);
                Interlocked.Increment(ref _steps);
                Interlocked.Add(ref _stepRows, active.Count);
                if (active.Count > Interlocked.Read(ref _maxBatch)) Interlocked.Exchange(ref _maxBatch, active.Count);
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested) { }
        finally
        {
            foreach (var s in active) { Leave(s); s.Done.TrySetCanceled(); }
            while (_incoming.Reader.TryRead(out var s)) { Leave(s); s.Done.TrySetCanceled(); }
        }
    }

    /// <summary>Builds the sequence's cache (its cartridges, then its prompt) and prefills it; false if it left already.</summary>
    bool Admit(Sequence s)
    {
        if (s.Cancel.IsCancellationRequested) { Leave(s); s.Done.TrySetCanceled(s.Cancel); return false; }
        try
        {
            var c = _t.Config;
            var r = s.Request;
            long start = Stopwatch.GetTimestamp();
            s.QueuedMs = Stopwatch.GetElapsedTime(s.Queued, start).TotalMilliseconds;
            var prefix = new ComposedPrefix(r.Cartridges);
            s.Slots = prefix.Length;
            int capacity = (int)Math.Min((long)s.Slots + r.Prompt.Length + r.MaxTokens, c.MaxSeqLen);
            s.Cache = new KvCache(c, capacity, prefix);   // own slots only: the cartridges are read in place
            s.CacheBytes = s.Cache.Bytes;
            long now = Interlocked.Add(ref _cacheBytes, s.CacheBytes);
            if (now > Interlocked.Read(ref _peakCacheBytes)) Interlocked.Exchange(ref _peakCacheBytes, now);
            s.Sampler = new Sampler(r.Sampling, c.VocabSize);
            s.Logits = new float[c.VocabSize];
            _t.Forward([s.Cache], [r.Prompt], s.Logits);
            long end = Stopwatch.GetTimestamp();
            s.PrefillMs = Stopwatch.GetElapsedTime(start, end).TotalMilliseconds;
            s.DecodeStart = end;
            return true;
        }
        catch (Exception e) { Leave(s); s.Done.TrySetException(e); return false; }
    }

    /// <summary>The same per-token rules as <see cref="Generator"/>; null while the sequence goes on.</summary>
    static FinishReason? SampleNext(Sequence s)
    {
        var r = s.Request;
        if (s.Output.Count >= r.MaxTokens) return FinishReason.Length;
        int tok = s.Sampler!.Sample(s.Logits);
        for (int i = 0; i < r.StopTokens.Count; i++) if (r.StopTokens[i] == tok) return FinishReason.Stop;
        s.Output.Add(tok);
        try { s.OnToken?.Invoke(tok); }
        catch (Exception) { /* a caller's sink failing (e.g. its stream closed) must not stop the others; its cancellation ends it */ }
        if (s.Output.Count >= r.MaxTokens) return FinishReason.Length;
        if (s.Cache!.Length >= s.Cache.Capacity) return FinishReason.Context;
        s.Next[0] = tok;
        return null;
    }

    void Finish(Sequence s, FinishReason finish)
    {
        double decodeMs = Stopwatch.GetElapsedTime(s.DecodeStart).TotalMilliseconds;
        long bytes = s.CacheBytes;
        Leave(s);
        s.Done.TrySetResult(new DecodeResult(s.Output.ToArray(), finish, s.Request.Prompt.Length, s.Slots, s.QueuedMs, s.PrefillMs, decodeMs) { CacheBytes = bytes });
    }

    void Leave(Sequence s)
    {
        if (s.CacheBytes > 0) { Interlocked.Add(ref _cacheBytes, -s.CacheBytes); s.CacheBytes = 0; }
        s.Cache = null; s.Logits = null;
        Interlocked.Decrement(ref _active);
    }

    int _disposed;

    /// <summary>Stops the decode thread: sequences still active or waiting end cancelled. Safe to call twice.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _incoming.Writer.TryComplete();
        _stop.Cancel();
        _thread.Join();
        _stop.Dispose();
    }
}
