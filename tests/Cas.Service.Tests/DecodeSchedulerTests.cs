using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Service.Tests;

/// <summary>
/// The decode scheduler on its own (no gRPC), stories260K from ../shared: sequences attend to their cartridges by
/// reference and answer exactly as the engine's <see cref="Generator"/> does over a <see cref="KvPrefix.Concat"/> copy.
/// </summary>
public sealed class DecodeSchedulerTests
{
    static (Model Model, ITokenizer Tokenizer) Stories()
    {
        var model = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        return (ModelLoader.Load(model), TokenizerLoader.Load(Path.Combine(Path.GetDirectoryName(model)!, "tok512.bin")));
    }

    static KvPrefix Cartridge(Model m, ITokenizer tok, string text, int p) => CartridgeInit.FirstK(m, Prompting.Encode(tok, text, addStart: true), p);

    /// <summary>
    /// Five concurrent sequences, two of them sharing the same two cartridge objects, one with one cartridge, one with
    /// none: greedy tokens equal the Generator's over the concatenated copy; each sequence's cache held only its own
    /// prompt + answer slots (the bytes say so), the cartridges are unchanged, and nothing is held afterwards.
    /// </summary>
    [Fact]
    public async Task Sequences_reference_shared_cartridges_and_answer_as_over_a_copy()
    {
        var (m, tok) = Stories();
        var c = m.Config;
        var a = Cartridge(m, tok, "Lily had a small cat named Tom. The cat liked to play with a red ball in the garden.", 16);
        var b = Cartridge(m, tok, "Ben saw a big ship on the sea. The ship had white sails and a loud horn.", 24);
        var before = new[] { a, b }.Select(p => p.Keys.Concat(p.Values).Select(x => (float[])x.Clone()).ToArray()).ToArray();
        (KvPrefix[] Parts, string Prompt)[] cases =
        [
            ([a, b], "\nQuestion: What did the cat like?\nAnswer:"),
            ([a, b], "\nOnce upon a time"),
            ([b], "\nQuestion: What did Ben see?\nAnswer:"),
            ([], "Once upon a time, there was a"),
            ([b, a], "\nThe ship"),
        ];
        const int maxTokens = 40;
        using var scheduler = new DecodeScheduler(new Transformer(m));
        var tasks = cases.Select(x => scheduler.Submit(new DecodeRequest(x.Parts, Prompting.Encode(tok, x.Prompt, addStart: x.Parts.Length == 0)) { MaxTokens = maxTokens },
            null, CancellationToken.None)).ToArray();
        var results = await Task.WhenAll(tasks);

        var generator = new Generator(new Transformer(m));
        long perPosition = 2L * c.Layers * c.KvHeads * c.HeadDim * sizeof(float);
        long own = 0;
        for (int i = 0; i < cases.Length; i++)
        {
            var ids = Prompting.Encode(tok, cases[i].Prompt, addStart: cases[i].Parts.Length == 0);
            var copy = cases[i].Parts.Length == 0 ? null : KvPrefix.Concat(cases[i].Parts);
            var alone = generator.Generate([new GenerationRequest(ids, copy) { MaxTokens = maxTokens }])[0];
            Assert.Equal(alone.Tokens, results[i].Tokens);
            int slots = cases[i].Parts.Sum(p => p.Length);
            Assert.Equal(slots, results[i].PrefixSlots);
            long expected = perPosition * (Math.Min(slots + ids.Length + maxTokens, c.MaxSeqLen) - slots);
            Assert.Equal(expected, results[i].CacheBytes);   // the cartridge slots are not in the sequence's cache
            own += expected;
        }
        var (now, peak) = scheduler.CacheBytes;
        Assert.Equal(0, now);
        Assert.InRange(peak, 1, own);
        for (int i = 0; i < 2; i++)
        {
            var after = new[] { a, b }[i].Keys.Concat(new[] { a, b }[i].Values).ToArray();
            for (int j = 0; j < after.Length; j++) Assert.Equal(before[i][j], after[j]);
        }
    }

    /// <summary>
    /// A KV byte budget that holds two sequences' own caches: six sequences never run more than two at a time, all
    /// answer as they do without a budget, the budget is never passed, and a sequence that could never fit is refused.
    /// </summary>
    [Fact]
    public async Task A_kv_budget_limits_the_batch_and_changes_no_answer()
    {
        var (m, tok) = Stories();
        var c = m.Config;
        var a = Cartridge(m, tok, "Lily had a small cat named Tom. The cat liked to play with a red ball in the garden.", 16);
        var requests = Enumerable.Range(0, 6).Select(i => new DecodeRequest(i % 2 == 0 ? [a] : [], Prompting.Encode(tok, "\nOnce upon a time", addStart: i % 2 == 1)) { MaxTokens = 30 }).ToArray();
        long one = requests.Max(r => DecodeScheduler.CacheBytesOf(c, r));
        using var free = new DecodeScheduler(new Transformer(m));
        var expected = await Task.WhenAll(requests.Select(r => free.Submit(r, null, CancellationToken.None)));
        using var tight = new DecodeScheduler(new Transformer(m), maxCacheBytes: 2 * one);
        var got = await Task.WhenAll(requests.Select(r => tight.Submit(r, null, CancellationToken.None)));
        for (int i = 0; i < requests.Length; i++) Assert.Equal(expected[i].Tokens, got[i].Tokens);
        Assert.InRange(tight.Stats.MaxBatch, 1, 2);
        Assert.True(free.Stats.MaxBatch > 2, $"without a budget the batch reached only {free.Stats.MaxBatch}");
        Assert.InRange(tight.CacheBytes.Peak, one, 2 * one);
        using var tiny = new DecodeScheduler(new Transformer(m), maxCacheBytes: one - 1);
        Assert.Throws<InvalidRequestException>(() => { _ = tiny.Submit(requests[1], null, CancellationToken.None); });
    }

    /// <summary>
    /// Dispose stops the decode loop at the next step even while sequences are active: their tasks end cancelled instead
    /// of Dispose waiting for them to run to their max tokens (a slow first step keeps them active when Dispose is called).
    /// </summary>
    [Fact]
    public async Task Dispose_with_active_sequences_cancels_them_promptly()
    {
        var (m, tok) = Stories();
        var scheduler = new DecodeScheduler(new Transformer(m));
        using var firstToken = new ManualResetEventSlim();
        int tokens = 0;
        var tasks = Enumerable.Range(0, 3).Select(i => scheduler.Submit(new DecodeRequest([], Prompting.Encode(tok, "Once upon a time", addStart: true)) { MaxTokens = 400 },
            _ => { if (Interlocked.Increment(ref tokens) == 1) { firstToken.Set(); Thread.Sleep(500); } }, CancellationToken.None)).ToArray();
        Assert.True(firstToken.Wait(TimeSpan.FromSeconds(30)), "no token within 30 s");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        scheduler.Dispose();
        scheduler.Dispose(); // twice is fine
        foreach (var t in tasks) await Assert.ThrowsAnyAsync<OperationCanceledException>(() => t);
        Assert.True(tokens < 3 * 400, $"{tokens} tokens: the sequences ran to the end");
        Assert.Equal(0, scheduler.Active);
        Assert.Equal(0, scheduler.CacheBytes.Now);
        Assert.Throws<ObjectDisposedException>(() => { _ = scheduler.Submit(new DecodeRequest([], [1]), null, CancellationToken.None); });
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"Dispose took {sw.Elapsed}");
    }
}
