using System.CommandLine;
using System.Globalization;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using Cas.Store;
using Spectre.Console;

namespace Cas.Cli.Commands;

/// <summary>`cas collection create|add|status|ls`: document collections of one model under --data-dir.</summary>
static class CollectionCommand
{
    public static Command Create()
    {
        var collection = new Command("collection", "Document collections: one model, one cartridge per document.");
        collection.Subcommands.Add(CreateCmd());
        collection.Subcommands.Add(Add());
        collection.Subcommands.Add(Status());
        collection.Subcommands.Add(Ls());
        collection.Subcommands.Add(CollectionTrain.Create());
        return collection;
    }

    static Argument<string> NameArgument() => new("NAME") { Description = "Collection name (letters, digits, '-', '_', '.')." };

    static Command CreateCmd()
    {
        var dataDir = StoreCommand.DataDirOption();
        var name = NameArgument();
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var chunk = Options.RetrievalChunkTokens(512);
        var cmd = new Command("create", "Create a collection for a model (its fingerprint is recorded; cartridges must match it).") { dataDir, name, model, tokenizer, chunk };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            string modelPath = Path.GetFullPath(Cli.ResolveModelPath(pr.GetValue(model)));
            var (m, _, tokPath) = Cli.Load(modelPath, pr.GetValue(tokenizer));
            string fp = Cartridge.Fingerprint(m);
            using var catalog = new CollectionCatalog(pr.GetValue(dataDir)!);
            var info = catalog.Create(pr.GetValue(name)!, modelPath, fp, Path.GetFullPath(tokPath), pr.GetValue(chunk));
            Console.WriteLine($"collection={info.Name} model={Quote(info.ModelPath)} fingerprint={info.ModelFingerprint} tokenizer={Quote(info.TokenizerPath)} chunk_tokens={info.ChunkTokens}");
            return 0;
        }));
        return cmd;
    }

    static Command Add()
    {
        var dataDir = StoreCommand.DataDirOption();
        var name = NameArgument();
        var resources = Options.Resources();
        var strict = Options.Strict();
        var cmd = new Command("add", "Add documents (idempotent: unchanged documents are skipped; a changed one makes only its cartridge stale).") { dataDir, name, resources, strict };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            using var catalog = new CollectionCatalog(pr.GetValue(dataDir)!);
            var info = catalog.Get(pr.GetValue(name)!);
            var specs = pr.GetValue(resources) ?? [];
            if (specs.Length == 0) throw new InvalidRequestException("give at least one --resource KIND:PATH[#field].");
            var parsed = specs.Select(s => ResourceSpec.Parse(s)).ToList(); // every spec checked before reading any
            var report = new ResourceReport(pr.GetValue(strict));
            var docs = new List<(Document, string)>();
            foreach (var r in parsed) docs.AddRange(r.Read(report).Select(d => (d, r.Kind)));
            Console.Error.Write(report.Summary());
            if (docs.Count == 0) throw new InvalidRequestException($"the resources ({string.Join(", ", specs)}) yielded no documents; see the report above.");
            ITokenizer tok = TokenizerLoader.Load(info.TokenizerPath);
            AddReport result = null!;
            Progress.Run($"adding to {info.Name}", docs.Count, tick => result = catalog.AddDocuments(info.Name, docs, tok, tick));
            var after = catalog.Get(info.Name);
            Console.WriteLine($"collection={info.Name} added={result.Added} changed={result.Changed} unchanged={result.Unchanged} new_chunks={result.Chunks} documents={after.Documents} chunks={after.Chunks}");
            return 0;
        }));
        return cmd;
    }

    static Command Status()
    {
        var dataDir = StoreCommand.DataDirOption();
        var name = NameArgument();
        var cmd = new Command("status", "One line per document with its cartridge's state (fresh, stale, missing, bad), then totals.") { dataDir, name };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            string dir = pr.GetValue(dataDir)!;
            using var catalog = new CollectionCatalog(dir);
            var info = catalog.Get(pr.GetValue(name)!);
            using var store = new FasterCartridgeStore(dir);
            var status = catalog.Status(info.Name, store);
            foreach (var s in status)
            {
                var d = s.Document;
                string cart = s.Cartridge is { } c ? $" cartridge={c.Id} version={c.Version} p={c.Length} bytes={c.Bytes}" : "";
                Console.WriteLine($"{Quote(d.DocumentId)} state={s.State.ToString().ToLowerInvariant()} source={Quote(d.Source)} chars={d.Characters} tokens={d.Tokens} chunks={d.Chunks}{cart}");
            }
            int Count(CartridgeState st) => status.Count(s => s.State == st);
            Console.WriteLine($"collection={info.Name} model={Cartridge.ShortFingerprint(info.ModelFingerprint)} documents={status.Count} fresh={Count(CartridgeState.Fresh)} " +
                $"stale={Count(CartridgeState.Stale)} missing={Count(CartridgeState.Missing)} bad={Count(CartridgeState.Bad)} jobs={catalog.Jobs(info.Name).Count}");
            return 0;
        }));
        return cmd;
    }

    static Command Ls()
    {
        var dataDir = StoreCommand.DataDirOption();
        var cmd = new Command("ls", "One line per collection.") { dataDir };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            using var catalog = new CollectionCatalog(pr.GetValue(dataDir)!);
            foreach (var c in catalog.List())
                Console.WriteLine($"{c.Name} model={Quote(c.ModelPath)} fingerprint={Cartridge.ShortFingerprint(c.ModelFingerprint)} documents={c.Documents} chunks={c.Chunks} chars={c.Characters} created={c.CreatedUtc:yyyy-MM-dd'T'HH:mm:ss'Z'}");
            return 0;
        }));
        return cmd;
    }

    static string Quote(string v) => StoreCommand.Quote(v);
}

/// <summary>A progress bar on stderr (plain lines every few seconds when stderr is not a terminal).</summary>
static class Progress
{
    public static void Run(string what, long total, Action<Action<int>> body)
    {
        if (Console.IsErrorRedirected)
        {
            var last = DateTime.UtcNow;
            body(done =>
            {
                if (done < total && DateTime.UtcNow - last < TimeSpan.FromSeconds(5)) return;
                last = DateTime.UtcNow;
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{what}: {done}/{total}"));
            });
            return;
        }
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        console.Progress().AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(what), maxValue: Math.Max(1, total));
                body(done => task.Value = done);
                task.StopTask();
            });
    }
}
