using static Cas.Store.Tests.StoreTestUtil;

namespace Cas.Store.Tests;

public class BudgetTests
{
    static FasterStoreOptions Small => new() { ChunkBytes = 4096, PageBits = 16, MemoryBytes = 1 << 20 };

    // Make(seed, p: 32) has 2·3·2·32·8 = 3072 floats = 12,288 bytes of fp32 K/V.
    const long One = 12_288;

    static FasterCartridgeStore Filled(string dir, int n)
    {
        var store = new FasterCartridgeStore(dir, Small);
        for (int i = 0; i < n; i++) store.Put($"c{i}", Make(i, p: 32));
        return store;
    }

    [Fact]
    public void HitsMissesEvictions_AreCountedExactly_InLruOrder()
    {
        using var store = Filled(TempDir(), 4);
        Assert.Equal(One, store.Find("c0")!.ComputeBytes);
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = 2 * One });
        using (var a = budget.Acquire("c0")) AssertSamePrefix(Make(0, p: 32).Prefix, a.Prefix);
        using (budget.Acquire("c1")) { }
        using (budget.Acquire("c0")) { }     // hit; c0 is now most recent
        using (budget.Acquire("c2")) { }     // evicts c1 (least recently used)
        using (budget.Acquire("c0")) { }     // still resident: hit
        using (budget.Acquire("c1")) { }     // miss again, evicts c2
        var m = budget.Metrics();
        Assert.Equal((2L, 4L, 2L), (m.ResidentHits, m.Misses, m.Evictions));
        Assert.Equal(2 * One, m.ResidentBytes);
        Assert.Equal(4, m.SwapIns);
        Assert.True(m.SwapInP50Ms > 0 && m.SwapInP99Ms >= m.SwapInP50Ms);
    }

    [Fact]
    public void OneResidentCopy_IsSharedByEveryLease()
    {
        using var store = Filled(TempDir(), 1);
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = 4 * One });
        using var a = budget.Acquire("c0");
        using var b = budget.Acquire("c0");
        Assert.Same(a.Prefix, b.Prefix);
        Assert.Equal(One, budget.Metrics().ResidentBytes);
    }

    [Fact]
    public void TooLarge_OrAllPinned_FailsWithClearError_WithoutExceeding()
    {
        using var store = Filled(TempDir(), 3);
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = 2 * One, WaitForRoom = TimeSpan.FromMilliseconds(200) });
        Assert.Throws<BudgetExceededException>(() => budget.Reserve("huge", 3 * One));
        using var a = budget.Acquire("c0");
        using var b = budget.Acquire("c1");
        var e = Assert.Throws<BudgetExceededException>(() => budget.Acquire("c2"));
        Assert.Contains("pinned", e.Message);
        Assert.Equal(2 * One, budget.Metrics().PeakResidentBytes);
    }

    [Fact]
    public void TryAcquire_NeverWaits_EvictsOnlyWhenThatMakesRoom_AndNeverExceeds()
    {
        using var store = Filled(TempDir(), 4);
        // WaitForRoom is long: a TryAcquire that waited would take seconds.
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = 3 * One, WaitForRoom = TimeSpan.FromSeconds(30) });
        using var work = budget.Reserve("train", One);
        using (var a = budget.TryAcquire("c0")) { Assert.NotNull(a); AssertSamePrefix(Make(0, p: 32).Prefix, a!.Prefix); }   // c0 stays cached, unpinned
        var pinned = budget.TryAcquire("c1");
        Assert.NotNull(pinned);
        // Full: 1 reserved + c1 pinned + c0 cached. c2 fits only by evicting c0.
        using (var c2 = budget.TryAcquire("c2")) Assert.NotNull(c2);
        Assert.Equal(1L, budget.Metrics().Evictions);
        using var c2b = budget.TryAcquire("c2");   // pin c2: now nothing is evictable
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.Null(budget.TryAcquire("c3"));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"TryAcquire waited {clock.Elapsed}");
        Assert.Throws<CartridgeNotFoundException>(() => budget.TryAcquire("missing"));
        var m = budget.Metrics();
        Assert.Equal((1L, 3 * One, 3 * One), (m.Evictions, m.ResidentBytes, m.PeakResidentBytes));
        // A resident (pinned) cartridge is always available to TryAcquire: it is shared, not loaded again.
        using (var again = budget.TryAcquire("c1")) Assert.Same(pinned!.Prefix, again!.Prefix);
        pinned.Dispose();
        using (var c3 = budget.TryAcquire("c3")) Assert.NotNull(c3);   // c1 unpinned: evicted for c3
        Assert.Equal(3 * One, budget.Metrics().PeakResidentBytes);
    }

    [Fact]
    public async Task Waiter_GetsRoom_WhenALeaseIsReleased()
    {
        using var store = Filled(TempDir(), 2);
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = One });
        var a = budget.Acquire("c0");
        var waiter = Task.Run(() => { using var b = budget.Acquire("c1"); return b.Prefix.Keys[0][0]; });
        Thread.Sleep(200);
        Assert.False(waiter.IsCompleted);
        a.Dispose();
        Assert.Equal(Make(1, p: 32).Prefix.Keys[0][0], await waiter);
        Assert.Equal(One, budget.Metrics().PeakResidentBytes);
    }

    [Fact]
    public void NewVersion_IsServedNext_WhileOldReadersFinish()
    {
        using var store = Filled(TempDir(), 1);
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = 4 * One });
        var old = budget.Acquire("c0");
        store.Put("c0", Make(99, p: 32));
        using (var fresh = budget.Acquire("c0"))
        {
            Assert.Equal(2, fresh.Info.Version);
            AssertSamePrefix(Make(99, p: 32).Prefix, fresh.Prefix);
            AssertSamePrefix(Make(0, p: 32).Prefix, old.Prefix); // the old reader still sees its whole version
        }
        old.Dispose();
        Assert.Equal(One, budget.Metrics().ResidentBytes); // the superseded version left as soon as its reader did
    }

    [Fact]
    public async Task Prefetch_FillsHostTier_SoAcquireSkipsTheStore()
    {
        using var store = Filled(TempDir(), 4);
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = One, HostBytes = 1 << 20 });
        await budget.Prefetch(["c1", "c2", "c3"]);
        using (budget.Acquire("c1")) { }
        using (budget.Acquire("c2")) { }
        var m = budget.Metrics();
        Assert.Equal((2L, 0L), (m.HostHits, m.Misses));
        // the host tier holds the three stored BF16 files: about half the fp32 size each
        Assert.Equal(new[] { "c1", "c2", "c3" }.Sum(id => store.Find(id)!.Bytes), m.HostBytes);
        Assert.True(m.HostBytes < 3 * One * 0.6);
    }

    [Fact]
    public async Task Budget_IsNeverExceeded_UnderConcurrentReadersAndATrainingJob()
    {
        const int n = 10;
        using var store = Filled(TempDir(), n);
        var expected = Enumerable.Range(0, n).Select(i => Make(i, p: 32).Prefix).ToArray();
        long budgetBytes = 4 * One + One / 2;
        using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = budgetBytes, HostBytes = 3 * One });
        int wrong = 0;
        using var stop = new CancellationTokenSource();
        var training = Task.Run(() =>
        {
            var rng = new Random(5);
            while (!stop.IsCancellationRequested)
            {
                // a training job: its working cartridge + AdamW moments (3 × the cartridge) held for a while
                using var job = budget.Reserve("train", 3 * One / 2);
                Thread.Sleep(rng.Next(1, 4));
            }
        });
        var readers = Enumerable.Range(0, 4).Select(r => Task.Run(() =>
        {
            var rng = new Random(r);
            for (int k = 0; k < 150; k++)
            {
                int i = rng.Next(n);
                using var lease = budget.Acquire($"c{i}");
                if (!lease.Prefix.Values[2].AsSpan().SequenceEqual(expected[i].Values[2])) Interlocked.Increment(ref wrong);
                if (budget.Metrics().ResidentBytes > budgetBytes) Interlocked.Increment(ref wrong);
                if (rng.Next(3) == 0) Thread.Sleep(1);
            }
        })).ToArray();
        await Task.WhenAll(readers);
        stop.Cancel();
        await training;
        var m = budget.Metrics();
        Assert.Equal(0, wrong);
        Assert.True(m.PeakResidentBytes <= budgetBytes, $"peak {m.PeakResidentBytes} > budget {budgetBytes}");
        Assert.True(m.Evictions > 0 && m.ResidentHits > 0 && m.HostHits > 0, m.ToString());
        Assert.Equal(0, m.Pinned);
        Assert.Equal(0, m.ReservedBytes);
    }
}
