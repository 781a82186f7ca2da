using Cas.Engine.Cartridges;
using static Cas.Store.Tests.StoreTestUtil;

namespace Cas.Store.Tests;

public class StoreTests
{
    static FasterStoreOptions Small => new() { ChunkBytes = 4096, PageBits = 16, MemoryBytes = 1 << 20 };

    [Fact]
    public void PutGet_RoundTripsBf16AndF32_AcrossManyChunks()
    {
        var dir = TempDir();
        var exact = Make(1, p: 64);                    // bf16-exact values: bf16 storage is lossless
        var fine = Make(2, p: 64, bf16Exact: false);   // arbitrary floats: kept exactly only as F32
        using (var store = new FasterCartridgeStore(dir, Small))
        {
            var a = store.Put("c/a", exact, new Dictionary<string, string> { ["source"] = "docs/a.txt" });
            var b = store.Put("c/b", fine, dtype: StoredDType.F32);
            Assert.True(a.Chunks > 1 && b.Chunks > a.Chunks, $"chunks {a.Chunks}, {b.Chunks}");
            Assert.Equal(1, a.Version);
            AssertSamePrefix(exact.Prefix, store.Get("c/a").Prefix);
            AssertSamePrefix(fine.Prefix, store.Get("c/b").Prefix);
            Assert.Equal("docs/a.txt", store.Find("c/a")!.Labels["source"]);
        }
        using (var store = new FasterCartridgeStore(dir, Small)) // after a clean reopen (recovery from the checkpoint)
        {
            Assert.Equal(["c/a", "c/b"], store.List().Select(i => i.Id));
            AssertSamePrefix(exact.Prefix, store.Get("c/a").Prefix);
            AssertSamePrefix(fine.Prefix, store.Get("c/b").Prefix);
            Assert.Equal("doc-1", store.Get("c/a").Metadata["cas.source_documents"].Trim('[', ']', '"'));
        }
    }

    [Fact]
    public void Bf16Storage_RoundsEachValueToNearestBf16()
    {
        var dir = TempDir();
        var c = Make(3, bf16Exact: false);
        using var store = new FasterCartridgeStore(dir, Small);
        store.Put("x", c);
        var back = store.Get("x").Prefix;
        for (int l = 0; l < c.Prefix.Layers; l++)
            for (int i = 0; i < c.Prefix.Keys[l].Length; i++)
            {
                float want = Cas.Engine.Models.HalfPrecision.BF16ToFloat(Cas.Engine.Models.HalfPrecision.FloatToBF16(c.Prefix.Keys[l][i]));
                Assert.Equal(want, back.Keys[l][i]);
                Assert.True(Math.Abs(back.Keys[l][i] - c.Prefix.Keys[l][i]) <= Math.Abs(c.Prefix.Keys[l][i]) / 256, "bf16 keeps 8 bits of mantissa");
            }
    }

    [Fact]
    public void ExportedFile_LoadsWithTheEngineReader()
    {
        var dir = TempDir();
        var c = Make(4, p: 32);
        using var store = new FasterCartridgeStore(dir, Small);
        store.Put("e", c);
        string file = Path.Combine(dir, "e.safetensors");
        File.WriteAllBytes(file, store.ReadFile("e").Bytes);
        var read = Cartridge.Read(file);
        AssertSamePrefix(c.Prefix, read.Prefix);
        Assert.Equal(Fingerprint, read.ModelFingerprint);
        Assert.Equal(4, read.StepsTrained);
        Assert.Equal(["doc-4"], read.SourceDocuments);
    }

    [Fact]
    public void NewVersion_ReplacesOld_AndOldChunksAreCollected()
    {
        var dir = TempDir();
        using var store = new FasterCartridgeStore(dir, Small);
        store.Put("v", Make(10, p: 64));
        var other = store.Put("w", Make(11, p: 64));
        var v2 = store.Put("v", Make(12, p: 64));
        Assert.Equal(2, v2.Version);
        AssertSamePrefix(Make(12, p: 64).Prefix, store.Get("v").Prefix);
        var live = store.LiveChunkRecords();
        Assert.Equal(2, live.Count); // v1's chunks are gone, v2 and w remain
        Assert.Equal(v2.Chunks + other.Chunks, live.Values.Sum());
        Assert.Empty(store.OrphanBlobs());
        AssertSamePrefix(Make(11, p: 64).Prefix, store.Get("w").Prefix); // the other cartridge untouched
    }

    [Fact]
    public void Delete_ThenCompact_ReclaimsSpace_AndVersionsNeverRepeat()
    {
        var dir = TempDir();
        using var store = new FasterCartridgeStore(dir, Small);
        for (int i = 0; i < 6; i++) store.Put($"d{i}", Make(20 + i, p: 128));
        long before = store.LogBytes;
        for (int i = 0; i < 5; i++) Assert.True(store.Delete($"d{i}"));
        Assert.False(store.Delete("d0"));
        var report = store.Compact();
        Assert.True(report.LogBytesAfter < before / 3, $"log {before} -> {report.LogBytesAfter}");
        AssertSamePrefix(Make(25, p: 128).Prefix, store.Get("d5").Prefix);
        Assert.Throws<CartridgeNotFoundException>(() => store.Get("d0"));
        Assert.Equal(2, store.Put("d0", Make(30)).Version); // a deleted id's versions continue
    }

    [Fact]
    public void CorruptChunk_IsCaught_MarkedBad_OthersKeepServing()
    {
        var dir = TempDir();
        var victim = Make(40, p: 64);
        var bystander = Make(41, p: 64);
        byte[] victimFile;
        using (var store = new FasterCartridgeStore(dir, Small))
        {
            store.Put("victim", victim, dtype: StoredDType.F32);
            store.Put("bystander", bystander, dtype: StoredDType.F32);
            victimFile = store.ReadFile("victim").Bytes;
        }
        // Flip one byte of the victim's data in the FASTER log file on disk.
        var probe = victimFile.AsSpan(victimFile.Length - 3000, 64).ToArray();
        int hits = 0;
        foreach (var f in Directory.GetFiles(Path.Combine(dir, "store", "faster"), "chunks.log*"))
        {
            var bytes = File.ReadAllBytes(f);
            int at = bytes.AsSpan().IndexOf(probe);
            if (at < 0) continue;
            bytes[at + 10] ^= 0x40;
            File.WriteAllBytes(f, bytes);
            hits++;
        }
        Assert.Equal(1, hits);
        using (var store = new FasterCartridgeStore(dir, Small))
        {
            var e = Assert.Throws<CartridgeCorruptException>(() => store.Get("victim"));
            Assert.Contains("checksum", e.Message);
            Assert.NotNull(store.Find("victim")!.Bad);
            Assert.Throws<CartridgeCorruptException>(() => store.Get("victim")); // stays bad
            AssertSamePrefix(bystander.Prefix, store.Get("bystander").Prefix);
            var verify = store.Verify();
            Assert.Equal(2, verify.Checked);
            Assert.Equal("victim", Assert.Single(verify.Bad).Id);
            store.Put("victim", victim); // writing it anew heals it
            AssertSamePrefix(victim.Prefix, store.Get("victim").Prefix);
            Assert.Null(store.Find("victim")!.Bad);
        }
    }

    [Fact]
    public void FullStore_GivesClearError_AndLeavesNothingTorn()
    {
        var dir = TempDir();
        var opts = Small with { CapacityBytes = 200_000 };
        using var store = new FasterCartridgeStore(dir, opts);
        store.Put("a", Make(50, p: 128));   // ~50 KB bf16 each
        store.Put("b", Make(51, p: 128));
        var e = Assert.Throws<StoreFullException>(() => { for (int i = 0; i < 10; i++) store.Put($"x{i}", Make(60 + i, p: 128)); });
        Assert.Contains("compact", e.Message);
        foreach (var info in store.List()) store.Get(info.Id); // every committed one reads back whole
        Assert.Empty(store.OrphanBlobs());
        Assert.DoesNotContain(store.List(), i => i.Bad != null);
    }

    [Fact]
    public void SecondProcessOpen_IsRefused_WithClearError()
    {
        var dir = TempDir();
        using var store = new FasterCartridgeStore(dir, Small);
        var e = Assert.Throws<StoreLockedException>(() => new FasterCartridgeStore(dir, Small));
        Assert.Contains("another process", e.Message);
    }

    [Fact]
    public void TwoWritersOfOneId_NeverMix()
    {
        var dir = TempDir();
        using var store = new FasterCartridgeStore(dir, Small);
        var cartridges = Enumerable.Range(0, 8).Select(i => Make(100 + i, p: 96)).ToArray();
        var readsOk = 0;
        Parallel.For(0, 16, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            store.Put("same", cartridges[i % 8], new Dictionary<string, string> { ["writer"] = (i % 8).ToString() });
            var got = store.Get("same");
            // whatever version is current, it is exactly one writer's cartridge, and its label names that writer
            AssertSamePrefix(cartridges[int.Parse(got.Info.Labels["writer"])].Prefix, got.Prefix);
            Interlocked.Increment(ref readsOk);
        });
        Assert.Equal(16, readsOk);
        Assert.Equal(16, store.Find("same")!.Version);
        Assert.Single(store.LiveChunkRecords());
    }

    [Fact]
    public void BadIds_AreRefused()
    {
        var dir = TempDir();
        using var store = new FasterCartridgeStore(dir, Small);
        Assert.Throws<Cas.Engine.InvalidRequestException>(() => store.Put("has space", Make(1)));
        Assert.Throws<Cas.Engine.InvalidRequestException>(() => store.Put("", Make(1)));
    }
}
