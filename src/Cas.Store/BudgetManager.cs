using System.Diagnostics;
using Cas.Engine;

namespace Cas.Store;

/// <summary>Sizes of the tiers above the store.</summary>
public sealed record BudgetOptions
{
    /// <summary>Bytes of the resident tier (fp32 K/V where attention reads them, plus reservations). Never exceeded.</summary>
    public required long ResidentBytes { get; init; }
    /// <summary>Bytes of the host tier (stored form, BF16 by default: half the resident size). 0 disables it.</summary>
    public long HostBytes { get; init; }
    /// <summary>How long an acquire waits for pinned entries to be released before giving up.</summary>
    public TimeSpan WaitForRoom { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>Counters and gauges of a <see cref="BudgetManager"/> (a consistent snapshot).</summary>
public sealed record BudgetMetrics(
    long ResidentHits, long HostHits, long Misses, long Evictions, long HostEvictions,
    long ResidentBytes, long PeakResidentBytes, long ResidentBudget, long ReservedBytes, long HostBytes, int ResidentEntries, int Pinned,
    double SwapInP50Ms, double SwapInP95Ms, double SwapInP99Ms, long SwapIns)
{
    /// <summary>key=value line for logs and `cas` output.</summary>
    public override string ToString() =>
        $"resident_hits={ResidentHits} host_hits={HostHits} misses={Misses} evictions={Evictions} host_evictions={HostEvictions} " +
        $"resident_bytes={ResidentBytes} peak_resident_bytes={PeakResidentBytes} resident_budget={ResidentBudget} reserved_bytes={ReservedBytes} " +
        $"host_bytes={HostBytes} resident_entries={ResidentEntries} pinned={Pinned} swap_ins={SwapIns} " +
        $"swap_in_p50_ms={SwapInP50Ms:F2} swap_in_p95_ms={SwapInP95Ms:F2} swap_in_p99_ms={SwapInP99Ms:F2}";
}

/// <summary>
/// A pinned resident cartridge: its fp32 K/V stay in the resident tier (and are shared, never copied, with every other
/// lease of the same version) until the lease is disposed.
/// </summary>
public sealed class CartridgeLease : IDisposable
{
    readonly BudgetManager owner;
    readonly BudgetManager.Entry entry;
    int released;

    internal CartridgeLease(BudgetManager owner, BudgetManager.Entry entry) { this.owner = owner; this.entry = entry; }

    public StoredCartridgeInfo Info => entry.Info;
    public KvPrefix Prefix => entry.Prefix!;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref released, 1) == 0) owner.Unpin(entry);
    }
}

/// <summary>Bytes held in the resident tier for something other than a served cartridge (a training job's working set).</summary>
public sealed class MemoryReservation : IDisposable
{
    readonly BudgetManager owner;
    int released;
    internal MemoryReservation(BudgetManager owner, string purpose, long bytes) { this.owner = owner; Purpose = purpose; Bytes = bytes; }
    public string Purpose { get; }
    public long Bytes { get; }
    public void Dispose()
    {
        if (Interlocked.Exchange(ref released, 1) == 0) owner.ReleaseReservation(Bytes);
    }
}

/// <summary>
/// Keeps cartridges resident within a byte budget. Tiers: resident (fp32 compute layout, where attention reads it —
/// RAM on this machine, GPU memory where there is one), host (the stored BF16 file bytes, so a swap-in is a decode
/// instead of a disk read), and the store. <see cref="Acquire"/> gets and pins; disposing the lease unpins; unpinned
/// entries are evicted least recently used first when room is needed. The resident byte count, including
/// <see cref="Reserve"/>d working sets, is checked before any allocation and never passes the budget: a request that
/// cannot fit waits for leases to be released (up to <see cref="BudgetOptions.WaitForRoom"/>), then fails.
/// Thread-safe; one load per cartridge version however many callers want it at once.
/// </summary>
public sealed class BudgetManager : IDisposable
{
    readonly ICartridgeStore store;
    readonly BudgetOptions options;
    readonly object gate = new();
    readonly Dictionary<(string, long), Entry> resident = new();
    readonly LinkedList<Entry> lru = new();                // unpinned, loaded entries; first = least recently used
    readonly Dictionary<(string, long), LinkedListNode<(string Id, long Version, byte[] File)>> host = new();
    readonly LinkedList<(string Id, long Version, byte[] File)> hostLru = new();
    readonly List<double> swapInMs = new();
    long used, reserved, peak, hostUsed;
    long residentHits, hostHits, misses, evictions, hostEvictions;

    public BudgetManager(ICartridgeStore store, BudgetOptions options)
    {
        this.store = store ?? throw new ArgumentNullException(nameof(store));
        this.options = options ?? throw new ArgumentNullException(nameof(options));
        if (options.ResidentBytes <= 0) throw new InvalidRequestException($"the resident budget must be positive, got {options.ResidentBytes} bytes.");
        if (options.HostBytes < 0) throw new InvalidRequestException($"the host budget must be ≥ 0, got {options.HostBytes} bytes.");
    }

    internal sealed class Entry(StoredCartridgeInfo info)
    {
        public StoredCartridgeInfo Info = info;
        public KvPrefix? Prefix;
        public int Pins;
        public bool Loading = true;
        public Exception? Failed;
        public bool Superseded;
        public LinkedListNode<Entry>? Node;
        public long Bytes => Info.ComputeBytes;
    }

    /// <summary>
    /// The current version of <paramref name="id"/>, resident and pinned until the lease is disposed. Blocks while the
    /// budget is full of pinned entries; throws <see cref="BudgetExceededException"/> if it cannot fit.
    /// </summary>
    public CartridgeLease Acquire(string id, CancellationToken cancellation = default) => AcquireCore(id, wait: true, cancellation)!;

    /// <summary>
    /// Like <see cref="Acquire"/>, but never waits for room: null when <paramref name="id"/> is not resident and cannot
    /// be made so now (after evicting unpinned entries) without passing the budget. For optional readers, e.g. a training
    /// job's frozen distractors, which use whatever room the budget has left and go without otherwise.
    /// </summary>
    public CartridgeLease? TryAcquire(string id, CancellationToken cancellation = default) => AcquireCore(id, wait: false, cancellation);

    CartridgeLease? AcquireCore(string id, bool wait, CancellationToken cancellation)
    {
        for (int attempt = 0; ; attempt++)
        {
            var info = store.Find(id) ?? throw new CartridgeNotFoundException($"no cartridge '{id}' in the store.");
            Entry entry;
            lock (gate)
            {
                if (resident.TryGetValue((id, info.Version), out var e))
                {
                    entry = e;
                    entry.Pins++;
                    if (entry.Node != null) { lru.Remove(entry.Node); entry.Node = null; }
                    while (entry.Loading) Monitor.Wait(gate);
                    if (entry.Superseded) continue;  // the store moved to a newer version meanwhile: look again
                    if (entry.Failed != null) throw entry.Failed;
                    residentHits++;
                    return new CartridgeLease(this, entry);
                }
                if (!MakeRoom(info.ComputeBytes, $"cartridge '{id}'", cancellation, wait)) return null;
                if (resident.ContainsKey((id, info.Version))) continue; // another caller started loading it while we waited
                entry = new Entry(info) { Pins = 1 };
                resident[(id, info.Version)] = entry;
                Charge(info.ComputeBytes);
            }
            if (Load(entry, cancellation)) return new CartridgeLease(this, entry);
            if (attempt >= 3) throw new StoreException($"cartridge '{id}' kept changing while it was being loaded; retry.");
        }
    }

    /// <summary>Loads a reserved entry. False when the store had moved on to another version (the caller retries).</summary>
    bool Load(Entry entry, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        string id = entry.Info.Id;
        try
        {
            byte[]? file = null;
            lock (gate)
                if (host.TryGetValue((id, entry.Info.Version), out var node)) { file = node.Value.File; hostLru.Remove(node); hostLru.AddLast(node); hostHits++; }
            if (file == null)
            {
                var stored = store.ReadFile(id, ct);
                if (stored.Info.Version != entry.Info.Version) { Abandon(entry, null); return false; }
                file = stored.Bytes;
                lock (gate) { misses++; AddToHost(id, stored.Info.Version, file); }
            }
            var (prefix, _) = CartridgeCodec.Decode(file, $"cartridge '{id}' v{entry.Info.Version}");
            lock (gate)
            {
                entry.Prefix = prefix;
                entry.Loading = false;
                if (swapInMs.Count >= 100_000) swapInMs.RemoveRange(0, 50_000);
                swapInMs.Add(sw.Elapsed.TotalMilliseconds);
                Monitor.PulseAll(gate);
            }
            return true;
        }
        catch (Exception e)
        {
            Abandon(entry, e);
            throw;
        }
    }

    void Abandon(Entry entry, Exception? error)
    {
        lock (gate)
        {
            resident.Remove((entry.Info.Id, entry.Info.Version));
            Charge(-entry.Bytes);
            entry.Failed = error;
            entry.Superseded = error == null;
            entry.Loading = false;
            Monitor.PulseAll(gate);
        }
    }

    internal void Unpin(Entry entry)
    {
        lock (gate)
        {
            if (--entry.Pins > 0) return;
            // A superseded version nobody reads any more goes at once; the current one waits in the LRU list.
            var current = store.Find(entry.Info.Id);
            if (current == null || current.Version != entry.Info.Version) Evict(entry);
            else entry.Node = lru.AddLast(entry);
            Monitor.PulseAll(gate);
        }
    }

    /// <summary>
    /// Counts <paramref name="bytes"/> against the resident budget (evicting unpinned cartridges, waiting for pinned
    /// ones) until the reservation is disposed: a training job reserves its cartridge, gradients and AdamW moments.
    /// </summary>
    public MemoryReservation Reserve(string purpose, long bytes, CancellationToken cancellation = default)
    {
        if (bytes < 0) throw new ArgumentOutOfRangeException(nameof(bytes));
        lock (gate)
        {
            MakeRoom(bytes, purpose, cancellation);
            Charge(bytes);
            reserved += bytes;
        }
        return new MemoryReservation(this, purpose, bytes);
    }

    internal void ReleaseReservation(long bytes)
    {
        lock (gate) { Charge(-bytes); reserved -= bytes; Monitor.PulseAll(gate); }
    }

    /// <summary>Starts reading <paramref name="ids"/> into the host tier in the background, so acquiring them later skips the disk.</summary>
    public Task Prefetch(IEnumerable<string> ids, CancellationToken cancellation = default)
    {
        var list = ids.ToList();
        return Task.Run(() =>
        {
                foreach (var id in list)
                {
                    if (cancellation.IsCancellationRequested || options.HostBytes == 0) return;
                    var info = store.Find(id);
                    if (info == null) continue;
                    lock (gate)
                        if (resident.ContainsKey((id, info.Version)) || host.ContainsKey((id, info.Version))) continue;
                    try
                    {
                        var stored = store.ReadFile(id, cancellation);
                        lock (gate) AddToHost(id, stored.Info.Version, stored.Bytes);
                    }
                    catch (StoreException) { } // deleted or bad: the acquire that needs it will report it
                }
        }, cancellation);
    }

    // ---- under gate ----

    void Charge(long bytes)
    {
        used += bytes;
        if (used > options.ResidentBytes) throw new InvalidOperationException($"resident budget overrun ({used} > {options.ResidentBytes}); this is a bug.");
        if (used > peak) peak = used;
    }

    /// <summary>Evicts unpinned entries, then waits for releases (when <paramref name="wait"/>), until <paramref name="bytes"/> fit. False: no room and no waiting.</summary>
    bool MakeRoom(long bytes, string what, CancellationToken ct, bool wait = true)
    {
        if (bytes > options.ResidentBytes)
        {
            if (!wait) return false;
            throw new BudgetExceededException($"{what} needs {bytes:N0} resident bytes but the whole budget is {options.ResidentBytes:N0}; raise the budget.");
        }
        if (!wait && used + bytes > options.ResidentBytes)
        {
            // Evict nothing unless evicting every unpinned entry would make room.
            long evictable = 0;
            for (var n = lru.First; n != null; n = n.Next) evictable += n.Value.Bytes;
            if (used - evictable + bytes > options.ResidentBytes) return false;
        }
        var deadline = Stopwatch.StartNew();
        while (used + bytes > options.ResidentBytes)
        {
            if (lru.First is { } oldest) { Evict(oldest.Value); evictions++; continue; }
            if (!wait) return false;
            ct.ThrowIfCancellationRequested();
            var left = options.WaitForRoom - deadline.Elapsed;
            if (left <= TimeSpan.Zero)
                throw new BudgetExceededException($"{what} needs {bytes:N0} resident bytes, but {used:N0} of the {options.ResidentBytes:N0}-byte budget are pinned " +
                    $"({resident.Count} cartridges, {reserved:N0} bytes reserved) and none was released within {options.WaitForRoom.TotalSeconds:F0} s; raise the budget or use fewer cartridges at once.");
            Monitor.Wait(gate, left < TimeSpan.FromMilliseconds(100) ? left : TimeSpan.FromMilliseconds(100));
        }
        return true;
    }

    void Evict(Entry e)
    {
        if (e.Node != null) { lru.Remove(e.Node); e.Node = null; }
        if (resident.Remove((e.Info.Id, e.Info.Version))) Charge(-e.Bytes);
        e.Prefix = null;
    }

    void AddToHost(string id, long version, byte[] file)
    {
        if (file.LongLength > options.HostBytes || host.ContainsKey((id, version))) return;
        while (hostUsed + file.LongLength > options.HostBytes && hostLru.First is { } old)
        {
            hostLru.RemoveFirst();
            host.Remove((old.Value.Id, old.Value.Version));
            hostUsed -= old.Value.File.LongLength;
            hostEvictions++;
        }
        host[(id, version)] = hostLru.AddLast((id, version, file));
        hostUsed += file.LongLength;
    }

    public BudgetMetrics Metrics()
    {
        lock (gate)
        {
            var sorted = swapInMs.ToArray();
            Array.Sort(sorted);
            double P(double q) => sorted.Length == 0 ? 0 : Statistics.Percentile(sorted, q);
            int pinned = resident.Values.Count(e => e.Pins > 0);
            return new BudgetMetrics(residentHits, hostHits, misses, evictions, hostEvictions, used, peak, options.ResidentBytes, reserved, hostUsed,
                resident.Count, pinned, P(0.50), P(0.95), P(0.99), sorted.Length);
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            foreach (var e in lru.ToList()) Evict(e);
            host.Clear(); hostLru.Clear(); hostUsed = 0;
        }
    }
}
