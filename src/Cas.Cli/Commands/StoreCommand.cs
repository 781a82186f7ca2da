using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Store;

namespace Cas.Cli.Commands;

/// <summary>`cas store ls|verify|export|rm|compact|import`: the cartridge store under --data-dir.</summary>
static class StoreCommand
{
    public static Option<string> DataDirOption() => Options.DataDir();

    public static Command Create()
    {
        var store = new Command("store", "The cartridge store: list, verify, export, remove, compact, import.");
        store.Subcommands.Add(Ls());
        store.Subcommands.Add(Verify());
        store.Subcommands.Add(Export());
        store.Subcommands.Add(Rm());
        store.Subcommands.Add(Compact());
        store.Subcommands.Add(Import());
        store.Subcommands.Add(StressWrite());
        return store;
    }

    static string I(long v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>One line per cartridge: its id, then key=value fields (source, p, version, bytes, ...).</summary>
    public static string Line(StoredCartridgeInfo c)
    {
        var parts = new List<string> { c.Id };
        foreach (var (k, v) in c.Labels.OrderBy(kv => kv.Key, StringComparer.Ordinal)) parts.Add($"{k}={Quote(v)}");
        if (!c.Labels.ContainsKey(CollectionCatalog.LabelSource)) parts.Add("source=");
        parts.Add($"p={c.Length}");
        parts.Add($"version={c.Version}");
        parts.Add($"bytes={I(c.Bytes)}");
        parts.Add($"dtype={c.DType.ToString().ToLowerInvariant()}");
        parts.Add($"layers={c.Layers} kv_heads={c.KvHeads} head_dim={c.HeadDim}");
        parts.Add($"model={Cartridge.ShortFingerprint(c.ModelFingerprint)}");
        parts.Add($"committed={c.CommittedUtc:yyyy-MM-dd'T'HH:mm:ss'Z'}");
        parts.Add($"state={(c.Bad == null ? "ok" : "bad")}");
        return string.Join(' ', parts);
    }

    /// <summary>A value for a key=value line: quoted when it holds whitespace or quotes.</summary>
    public static string Quote(string v) => v.Any(ch => char.IsWhiteSpace(ch) || ch == '"') ? "\"" + v.Replace("\"", "\\\"") + "\"" : v;

    static Command Ls()
    {
        var dataDir = DataDirOption();
        var prefix = new Option<string?>("--prefix") { Description = "Only ids starting with this (e.g. COLLECTION/)." };
        var cmd = new Command("ls", "One line per cartridge: id, then key=value fields.") { dataDir, prefix };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            using var store = new FasterCartridgeStore(pr.GetValue(dataDir)!);
            var list = store.List(pr.GetValue(prefix));
            foreach (var c in list) Console.WriteLine(Line(c));
            Console.Error.WriteLine($"cartridges={list.Count} bytes={I(list.Sum(c => c.Bytes))}");
            return 0;
        }));
        return cmd;
    }

    static Command Verify()
    {
        var dataDir = DataDirOption();
        var cmd = new Command("verify", "Read every cartridge and check every chunk's checksum; damaged ones are marked bad. Exit code 1 if any is bad.") { dataDir };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            using var store = new FasterCartridgeStore(pr.GetValue(dataDir)!);
            var sw = Stopwatch.StartNew();
            var report = store.Verify();
            foreach (var (id, version, problem) in report.Bad) Console.WriteLine($"{id} version={version} state=bad problem={Quote(problem)}");
            int orphans = store.OrphanBlobs().Count;
            Console.WriteLine($"checked={report.Checked} bad={report.Bad.Count} orphan_blobs={orphans} recovered_pending={store.RecoveredPending} seconds={sw.Elapsed.TotalSeconds:F2}");
            return report.Bad.Count == 0 && orphans == 0 ? 0 : 1;
        }));
        return cmd;
    }

    static Command Export()
    {
        var dataDir = DataDirOption();
        var id = new Argument<string>("ID") { Description = "Cartridge id (see `cas store ls`)." };
        var output = Options.Out(); // a cartridge file that `cas generate/eval --cartridge` load
        var cmd = new Command("export", "Write a cartridge to a file (atomically).") { dataDir, id, output };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            using var store = new FasterCartridgeStore(pr.GetValue(dataDir)!);
            var file = store.ReadFile(pr.GetValue(id)!);
            string path = Path.GetFullPath(pr.GetValue(output)!);
            WriteAtomically(path, file.Bytes);
            Console.WriteLine($"id={file.Info.Id} version={file.Info.Version} out={path} bytes={I(file.Bytes.LongLength)} dtype={file.Info.DType.ToString().ToLowerInvariant()}");
            return 0;
        }));
        return cmd;
    }

    /// <summary>Temporary file beside the target, fsync, rename: a reader never sees half a file.</summary>
    static void WriteAtomically(string path, byte[] bytes)
    {
        string dir = Path.GetDirectoryName(path)!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                fs.Write(bytes);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    static Command Rm()
    {
        var dataDir = DataDirOption();
        var ids = new Argument<string[]>("ID") { Description = "Cartridge ids to remove.", Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("rm", "Remove cartridges (their space returns at `cas store compact`).") { dataDir, ids };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            using var store = new FasterCartridgeStore(pr.GetValue(dataDir)!);
            var missing = pr.GetValue(ids)!.Where(i => store.Find(i) == null).ToList();
            if (missing.Count > 0) throw new CartridgeNotFoundException($"no cartridge {string.Join(", ", missing.Select(m => $"'{m}'"))} in the store; nothing was removed. `cas store ls` lists what is there.");
            foreach (var i in pr.GetValue(ids)!) { store.Delete(i); Console.WriteLine($"removed={i}"); }
            return 0;
        }));
        return cmd;
    }

    static Command Compact()
    {
        var dataDir = DataDirOption();
        var cmd = new Command("compact", "Drop removed and superseded cartridges' chunks and return their space to the file system.") { dataDir };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            using var store = new FasterCartridgeStore(pr.GetValue(dataDir)!);
            var r = store.Compact();
            Console.WriteLine($"log_bytes_before={I(r.LogBytesBefore)} log_bytes_after={I(r.LogBytesAfter)} collected_versions={r.GarbageVersionsCollected}");
            return 0;
        }));
        return cmd;
    }

    static Command Import()
    {
        var dataDir = DataDirOption();
        var file = new Argument<string>("FILE") { Description = "Cartridge file made by `cas train` (.safetensors)." };
        var collection = Options.Collection();
        var document = new Option<string?>("--document-id") { Description = "Document id in the collection (see `cas collection status`)." };
        var id = new Option<string?>("--id") { Description = "Store under this id instead of a collection's document." };
        var fp32 = Options.Fp32();
        var cmd = new Command("import", "Put a cartridge file into the store as the next version of a document's cartridge.") { dataDir, file, collection, document, id, fp32 };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            string path = pr.GetValue(file)!;
            if (!File.Exists(path)) throw new InvalidRequestException($"cartridge file not found: {Path.GetFullPath(path)}.");
            var cartridge = Cartridge.Read(path);
            string dir = pr.GetValue(dataDir)!;
            string storeId;
            IReadOnlyDictionary<string, string> labels;
            if (pr.GetValue(collection) is { } col)
            {
                if (pr.GetValue(document) is not { } docId) throw new InvalidRequestException("--collection needs --document ID (the document the cartridge was trained on).");
                if (pr.GetValue(id) != null) throw new InvalidRequestException("give either --collection/--document or --id, not both.");
                using var catalog = new CollectionCatalog(dir);
                var info = catalog.Get(col);
                if (!string.Equals(info.ModelFingerprint, cartridge.ModelFingerprint, StringComparison.OrdinalIgnoreCase))
                    throw new CartridgeMismatchException($"{path} was trained for model {Cartridge.ShortFingerprint(cartridge.ModelFingerprint)} but collection '{col}' is for model {Cartridge.ShortFingerprint(info.ModelFingerprint)} ({info.ModelPath}).");
                var doc = catalog.GetDocument(col, docId);
                storeId = doc.CartridgeId;
                labels = CollectionCatalog.CartridgeLabels(doc);
            }
            else if (pr.GetValue(id) is { } plain)
            {
                storeId = plain;
                labels = new Dictionary<string, string> { [CollectionCatalog.LabelSource] = Path.GetFullPath(path) };
            }
            else throw new InvalidRequestException("say where the cartridge goes: --collection NAME --document ID, or --id ID.");
            using var store = new FasterCartridgeStore(dir);
            var stored = store.Put(storeId, cartridge, labels, pr.GetValue(fp32) ? StoredDType.F32 : StoredDType.BF16);
            Console.WriteLine(Line(stored));
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// Hidden: the writer the crash test kills. Writes synthetic cartridges (seed in the labels, so a survivor can be
    /// regenerated and compared byte for byte), sometimes deletes or compacts, and prints each committed step.
    /// </summary>
    static Command StressWrite()
    {
        var dataDir = DataDirOption();
        var count = new Option<int>("--operations") { Description = "Store operations to run (puts, some deletes and compactions).", DefaultValueFactory = _ => 1000 };
        var ids = new Option<int>("--ids") { Description = "Distinct cartridge ids to write.", DefaultValueFactory = _ => 6 };
        var seed = Options.Seed(1);
        var p = new Option<int>("--min-slots") { Description = "Smallest synthetic cartridge, in KV slots (sizes vary up to twice this).", DefaultValueFactory = _ => 64 };
        var chunk = new Option<int>("--chunk-bytes") { Description = "Store chunk size in bytes (small, so cartridges span several chunks).", DefaultValueFactory = _ => 16384 };
        var cmd = new Command("stress-write", "Crash-test writer (hidden).") { dataDir, count, ids, seed, p, chunk };
        cmd.Hidden = true;
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var opts = new FasterStoreOptions { ChunkBytes = pr.GetValue(chunk), PageBits = 20, MemoryBytes = 4 << 20 };
            using var store = new FasterCartridgeStore(pr.GetValue(dataDir)!, opts);
            Console.WriteLine($"opened recovered_pending={store.RecoveredPending}");
            var rng = new Random((int)pr.GetValue(seed));
            for (int k = 0; k < pr.GetValue(count); k++)
            {
                string id = $"s{rng.Next(pr.GetValue(ids))}";
                int op = rng.Next(20);
                if (op == 0) { bool removed = store.Delete(id); Console.WriteLine($"deleted id={id} removed={removed}"); continue; }
                if (op == 1) { store.Compact(); Console.WriteLine("compacted"); continue; }
                long s = (long)pr.GetValue(seed) * 1_000_000 + k;
                int tokens = pr.GetValue(p) + rng.Next(pr.GetValue(p)); // varying sizes: 1–several chunks
                var c = SyntheticCartridges.Make(s, tokens, 4, 2, 16);
                var info = store.Put(id, c, new Dictionary<string, string> { ["seed"] = I(s) }, k % 3 == 0 ? StoredDType.F32 : StoredDType.BF16);
                Console.WriteLine($"committed id={id} version={info.Version} seed={s} tokens={tokens}");
            }
            return 0;
        }));
        return cmd;
    }
}
