using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Cas.Store;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas bench store`: write and cold read throughput of the cartridge store for N cartridges of SmolLM2-135M shape
/// (30 layers, 3 kv heads, head_dim 64) between MIN and MAX MB, against reading a plain file of the same size from the
/// same disk; swap-in latency through the budget manager. Last line `store_read_vs_file`.
/// </summary>
static partial class BenchStore
{
    public static Command Create()
    {
        var count = new Option<int>("--count") { Description = "Cartridges.", DefaultValueFactory = _ => 300 };
        var minMb = new Option<double>("--min-mb") { Description = "Smallest cartridge on disk, MB.", DefaultValueFactory = _ => 4 };
        var maxMb = new Option<double>("--max-mb") { Description = "Largest cartridge on disk, MB.", DefaultValueFactory = _ => 100 };
        var fp32 = Options.Fp32();
        var swapIns = new Option<int>("--swap-ins") { Description = "Cartridges acquired through the budget manager after the read pass.", DefaultValueFactory = _ => 20 };
        var dir = new Option<string?>("--scratch-dir") { Description = "Where to put the benchmark's store (default: a fresh folder under the temp directory, removed afterwards)." };
        var cmd = new Command("store", "Store write/read GB/s vs a plain file (cold cache), swap-in latency; store_read_vs_file last.") { count, minMb, maxMb, fp32, swapIns, dir };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            int n = pr.GetValue(count);
            double lo = pr.GetValue(minMb), hi = pr.GetValue(maxMb);
            if (n < 1 || lo <= 0 || hi < lo) throw new Cas.Engine.InvalidRequestException("need --count ≥ 1 and 0 < --min-mb ≤ --max-mb.");
            string? given = pr.GetValue(dir);
            string root = given ?? Path.Combine(Path.GetTempPath(), $"cas-bench-store-{Guid.NewGuid():N}");
            try { Run(root, n, lo, hi, pr.GetValue(fp32) ? StoredDType.F32 : StoredDType.BF16, pr.GetValue(swapIns)); }
            finally { if (given == null) try { Directory.Delete(root, recursive: true); } catch (IOException) { } }
            return 0;
        }));
        return cmd;
    }

    const int Layers = 30, KvHeads = 3, HeadDim = 64;

    static void Run(string root, int n, double minMb, double maxMb, StoredDType dtype, int swapIns)
    {
        int bytesPerSlot = 2 * Layers * KvHeads * HeadDim * (dtype == StoredDType.BF16 ? 2 : 4);
        int pMin = Math.Max(1, (int)(minMb * 1e6 / bytesPerSlot)), pMax = Math.Max(pMin, (int)(maxMb * 1e6 / bytesPerSlot));
        var rng = new Random(17);
        var ps = Enumerable.Range(0, n).Select(_ => rng.Next(pMin, pMax + 1)).ToArray();
        Console.WriteLine($"data_dir={root}");
        Console.WriteLine($"cartridges={n}");
        Console.WriteLine($"shape=layers{Layers}_kv_heads{KvHeads}_head_dim{HeadDim}");
        Console.WriteLine($"p_min={pMin} p_max={pMax} dtype={dtype.ToString().ToLowerInvariant()}");

        // Write: encode + chunk + upsert + checkpoint + manifest commit, per cartridge (generation not timed).
        long total = 0;
        double writeS = 0;
        using (var store = new FasterCartridgeStore(root))
        {
            Progress.Run("writing cartridges", n, tick =>
            {
                for (int i = 0; i < n; i++)
                {
                    var c = SyntheticCartridges.Make(i, ps[i], Layers, KvHeads, HeadDim);
                    var sw = Stopwatch.StartNew();
                    var info = store.Put($"bench/{i:D4}", c, null, dtype);
                    writeS += sw.Elapsed.TotalSeconds;
                    total += info.Bytes;
                    tick(i + 1);
                }
            });
            var t = store.Timings;
            Console.WriteLine(F($"write_encode_s={t.EncodeSeconds:F2} write_chunks_s={t.ChunkSeconds:F2} write_checkpoint_s={t.CheckpointSeconds:F2} write_commit_s={t.CommitSeconds:F2}"));
            Console.WriteLine($"total_bytes={total}");
            Console.WriteLine($"log_bytes={store.LogBytes}");
            Console.WriteLine(F($"log_overhead={(double)store.LogBytes / total - 1:F4}"));
        }
        Console.WriteLine(F($"write_s={writeS:F2} write_gb_s={total / writeS / 1e9:F3}"));

        // Cold read of every cartridge (verified chunks), in random order, after the page cache is dropped.
        string cold = DropCaches();
        Console.WriteLine($"cold_cache={cold}");
        var order = Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray();
        double readS;
        long readBytes = 0;
        using (var store = new FasterCartridgeStore(root))
        {
            var sw = Stopwatch.StartNew();
            Progress.Run("reading cartridges", n, tick =>
            {
                for (int k = 0; k < n; k++) { readBytes += store.ReadFile($"bench/{order[k]:D4}").Bytes.LongLength; tick(k + 1); }
            });
            readS = sw.Elapsed.TotalSeconds;
            if (readBytes != total) throw new InvalidOperationException($"read {readBytes} bytes of {total}");
            Console.WriteLine(F($"read_s={readS:F2} store_read_gb_s={total / readS / 1e9:F3}"));

            // Swap-ins through the budget manager: store read + verify + BF16→fp32 into the resident tier.
            if (swapIns > 0)
            {
                DropCaches();
                using var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = 2L * pMax * 2 * Layers * KvHeads * HeadDim * 4 });
                for (int k = 0; k < Math.Min(swapIns, n); k++) using (budget.Acquire($"bench/{order[k]:D4}")) { }
                var m = budget.Metrics();
                Console.WriteLine(F($"swap_ins={m.SwapIns} swap_in_p50_ms={m.SwapInP50Ms:F1} swap_in_p95_ms={m.SwapInP95Ms:F1} swap_in_p99_ms={m.SwapInP99Ms:F1} peak_resident_bytes={m.PeakResidentBytes} resident_budget={m.ResidentBudget}"));
            }
        }

        // The bound: one plain file of the same size on the same disk, written and fsynced, read sequentially cold.
        string plain = Path.Combine(root, "plain.bin");
        var block = new byte[1 << 20];
        new Random(3).NextBytes(block);
        var wsw = Stopwatch.StartNew();
        using (var fs = new FileStream(plain, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            for (long left = total; left > 0; left -= block.Length) fs.Write(block, 0, (int)Math.Min(block.Length, left));
            fs.Flush(flushToDisk: true);
        }
        Console.WriteLine(F($"file_write_s={wsw.Elapsed.TotalSeconds:F2} file_write_gb_s={total / wsw.Elapsed.TotalSeconds / 1e9:F3} store_write_vs_file={wsw.Elapsed.TotalSeconds / writeS:F3}"));
        DropCaches();
        double fileS;
        {
            var sw = Stopwatch.StartNew();
            using var fs = new FileStream(plain, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
            long got = 0;
            int r;
            while ((r = fs.Read(block, 0, block.Length)) > 0) got += r;
            fileS = sw.Elapsed.TotalSeconds;
        }
        File.Delete(plain);
        Console.WriteLine(F($"file_read_s={fileS:F2} file_read_gb_s={total / fileS / 1e9:F3}"));
        Console.WriteLine(F($"store_read_vs_file={fileS / readS:F3}"));
    }

    static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    [LibraryImport("libc", EntryPoint = "sync")]
    private static partial void Sync();

    /// <summary>Flushes dirty pages and drops the page cache when allowed (root, writable /proc); says which.</summary>
    static string DropCaches()
    {
        try
        {
            Sync();
            File.WriteAllText("/proc/sys/vm/drop_caches", "3\n");
            return "drop_caches";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DllNotFoundException or EntryPointNotFoundException)
        {
            return "unavailable(drop_caches refused: reads may be served by the page cache)";
        }
    }
}
