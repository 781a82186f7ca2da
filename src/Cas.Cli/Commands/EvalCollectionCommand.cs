using System.CommandLine;
using System.Globalization;
using Cas.Client;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Eval;
using Cas.Service;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas eval collection`: CAS against RAG (and ICL, no context) through the service's query path, in process or, with
/// --server, through a running `cas serve` (<see cref="RemoteQueryPath"/>). A thin
/// caller of <see cref="EvalQuestions"/>, <see cref="CollectionEvaluator"/> and <see cref="EvalReport"/>. Progress on
/// stderr; stdout gets key=value lines ending with the headline; --report writes the Markdown report and its PNGs.
/// </summary>
static class EvalCollectionCommand
{
    public static Command Create()
    {
        var d = new CollectionEvalOptions();
        var collection = Options.Collection();
        var dataDir = Options.DataDir();
        var modes = new Option<string>("--modes") { Description = "Comma-separated modes: cas (cartridges composed), rag (chunks pasted), icl (gold document in context), none (no context).", DefaultValueFactory = _ => string.Join(',', d.Modes) };
        var depths = new Option<string>("--depths") { Description = "cas: the D values (most cartridges composed), comma-separated.", DefaultValueFactory = _ => string.Join(',', d.Depths) };
        var ks = new Option<string>("--ks") { Description = "rag: the k values (chunks retrieved and pasted), comma-separated.", DefaultValueFactory = _ => string.Join(',', d.Ks) };
        var probes = Options.ProbesPerChunk(4);
        var seed = Options.Seed(EvalCommand.DefaultSeed);
        var maxTokens = Options.MaxTokens(d.MaxTokens);
        var maxQuestions = new Option<int>("--max-questions") { Description = "Evaluate at most this many questions (spread over the documents); 0: all.", DefaultValueFactory = _ => 0 };
        var noAnswers = new Option<bool>("--skip-answers") { Description = "Only score the reference answers; do not also decode answers with Ask (no decode latency)." };
        var report = new Option<string?>("--report") { Description = "Folder to write the Markdown report (CAS_VS_RAG.md) and its PNG figures into." };
        var residentMb = Options.ResidentMb(1024);
        var server = AskCommand.ServerOption();
        var apiKey = ServeCommand.ApiKeyOption();
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var mono = new Option<string?>("--mono-collection") { Description = "Also evaluate mode mono: this collection's one document (all documents in one) with its one cartridge, named in every question." };
        var cmd = new Command("collection", "CAS vs RAG vs ICL vs no context on a trained collection, through the service's query path: held-out quality, prompt tokens, recall, latency. " +
            "In process on --data-dir, or with --server through a running `cas serve` (questions built here with --model/--tokenizer, default: the collection's model as the server reports it, checked by fingerprint).")
        {
            collection, dataDir, modes, depths, ks, probes, seed, maxTokens, maxQuestions, noAnswers, report, residentMb, mono,
            server, apiKey, model, tokenizer,
        };
        var dataset = new EvalDatasetCommand(model, tokenizer);
        foreach (var o in dataset.All) cmd.Options.Add(o);
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var options = d with
            {
                Modes = List(pr.GetValue(modes)!, "--modes", s => s.Trim().ToLowerInvariant()),
                Depths = List(pr.GetValue(depths)!, "--depths", Int), Ks = List(pr.GetValue(ks)!, "--ks", Int),
                MaxTokens = pr.GetValue(maxTokens), Answer = !pr.GetValue(noAnswers), MonoCollection = pr.GetValue(mono),
            };
            if (options.MonoCollection != null && !options.Modes.Contains("mono")) options = options with { Modes = [.. options.Modes, "mono"] };
            if (dataset.Paths(pr).Count > 0)
            {
                if (pr.GetValue(server) != null)
                    throw new InvalidRequestException("--dataset builds and trains its collection in process; it does not run against --server yet (evaluate that collection with --collection NAME --server URL once a server holds it).");
                return dataset.Execute(pr, pr.GetValue(collection), pr.GetValue(dataDir)!, options, pr.GetValue(maxQuestions), pr.GetValue(report), pr.GetValue(residentMb),
                    Environment.GetCommandLineArgs().Skip(1));
            }
            var target = new Target(pr.GetValue(server), pr.GetValue(apiKey), pr.GetValue(model), pr.GetValue(tokenizer));
            if (target.Server == null && (target.Model != null || target.Tokenizer != null))
                throw new InvalidRequestException("--model and --tokenizer go with --server (the model questions are built with) or --dataset; in process the collection's own model is used.");
            if (target.Server != null && (pr.GetResult(dataDir) is { Implicit: false } || pr.GetResult(residentMb) is { Implicit: false }))
                throw new InvalidRequestException("--data-dir and --resident-mb are the server's with --server (set them on `cas serve`); leave them out here.");
            return Execute(pr.GetValue(collection), pr.GetValue(dataDir)!, options, pr.GetValue(probes), pr.GetValue(seed),
                pr.GetValue(maxQuestions), pr.GetValue(report), pr.GetValue(residentMb), Environment.GetCommandLineArgs().Skip(1), target);
        }));
        return cmd;

        static int Int(string s) => int.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v
            : throw new InvalidRequestException($"'{s}' is not a whole number.");
    }

    static List<T> List<T>(string text, string option, Func<string, T> parse)
    {
        var items = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(parse).ToList();
        return items.Count > 0 ? items : throw new InvalidRequestException($"{option} is empty.");
    }

    /// <summary>Where the questions run: <see cref="Server"/> null in process; else that server (with its API key), the
    /// questions built with <see cref="Model"/>/<see cref="Tokenizer"/> here (default: the collection's model path as the server reports it).</summary>
    sealed record Target(string? Server, string? ApiKey, string? Model, string? Tokenizer);

    static int Execute(string? name, string dataDir, CollectionEvalOptions options, int probesPerChunk, ulong seed, int maxQuestions,
        string? reportDir, long residentMb, IEnumerable<string> tokens, Target target)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new InvalidRequestException("name the collection to evaluate with --collection (`cas collection ls` lists them), or give data set files with --dataset.");
        if (maxQuestions < 0) throw new InvalidRequestException($"--max-questions must be ≥ 0, got {maxQuestions}.");
        var settings = options.Settings();
        using var state = target.Server == null ? new ServiceState(new CasServerOptions { DataDir = dataDir, ResidentBytes = checked(residentMb << 20) }) : null;
        using var client = target.Server == null ? null : new CasClient(CasClient.ParseAddress(target.Server), target.ApiKey);
        var (info, path, model, tokenizer, docs) = state != null ? InProcess(state, name, options) : Remote(client!, name, options, target);
        Console.Error.WriteLine($"held-out questions: {probesPerChunk} probe(s) per chunk of each of {docs.Count} documents (seed {seed})");
        var questions = EvalQuestions.FromProbes(model, tokenizer, docs, probesPerChunk, seed, options.MaxTokens,
            (done, n) => { if (done == n || done % 5 == 0) Console.Error.WriteLine($"probes {done}/{n} documents"); });
        if (maxQuestions > 0 && questions.Count > maxQuestions)
        {
            // An even spread over the list (which is grouped by document), so every document keeps a share.
            questions = DatasetCollection.Spread(questions, maxQuestions);
        }
        Console.Error.WriteLine($"{questions.Count} questions; settings: {string.Join(", ", settings.Select(s => s.Label))}");
        var result = new CollectionEvaluator(path).RunAsync(name, questions, options, new SyncProgress<string>(Console.Error.WriteLine)).GetAwaiter().GetResult();
        foreach (var line in EvalReport.KeyValues(result).SkipLast(1)) Console.Out.WriteLine(line);
        if (reportDir != null)
        {
            Directory.CreateDirectory(reportDir);
            var figures = EvalReport.Figures(result, reportDir, "cas_vs_rag");
            string setup = (client != null ? $"Questions asked through the server at {client.Address} (the Score and Ask RPCs). " : "") +
                $"Collection `{name}`: {docs.Count} documents, model `{Path.GetFileName(info.ModelPath)}`, retrieval chunks of ≤ {info.ChunkTokens} tokens (BM25). " +
                $"Questions: held-out probes of each document ({probesPerChunk} per chunk, seed {seed}, the split `cas eval` uses: sentence starts and openers training never saw); " +
                "the question is the probe, the reference answer is the teacher's continuation (the model reading the document), scored token by token by `QueryEngine.ScoreAsync` " +
                "with exactly the context `Ask` chooses (continuation framing: after cartridges \"\\n\" + probe, as in training; pasted context + \"\\n\\n\" + probe; BOS + probe with no context). " +
                $"cas: BM25 over {options.CasRetrieveChunks} chunks → documents in retrieval order → the first D fresh cartridges composed (keys not re-rotated); rag: the top k chunks pasted; icl: the gold document in context; none: nothing. " +
                "Gap closed = (ppl_none − ppl) / (ppl_none − ppl_icl) on perplexities pooled over all answer tokens. Prompt tokens = KV positions in front of the answer (cartridge slots + prompt text tokens). " +
                "Gold recall = the share of questions whose own document was among those used. Latency: the service's `Ask` on the same request (greedy, " +
                $"{options.MaxTokens} tokens at most, its own \"Question: …\\nAnswer:\" framing)." +
                (options.MonoCollection is { } m ? $" mono: collection `{m}` holds all the documents as one, with one cartridge (trained by `cas collection train` like the others), named in every question through the same Ask path; recall does not apply to it." : "");
            File.WriteAllText(Path.Combine(reportDir, "CAS_VS_RAG.md"), EvalReport.Markdown(result, $"CAS vs RAG on `{name}`",
                "cas " + string.Join(' ', tokens), setup, figures));
            Console.Out.WriteLine($"report={Path.GetFullPath(Path.Combine(reportDir, "CAS_VS_RAG.md"))}");
        }
        Console.Out.WriteLine(EvalReport.KeyValues(result).Last());
        return 0;
    }

    /// <summary>The collection in this process: its catalog row, the service's query path, its model, its documents.</summary>
    static (CollectionInfo Info, IQueryPath Path, Model Model, ITokenizer Tokenizer, List<(string, string)> Docs) InProcess(
        ServiceState state, string name, CollectionEvalOptions options)
    {
        var info = state.Collection(name);
        var host = state.ModelOf(info);
        if (options.Modes.Contains("cas"))
        {
            var notFresh = state.Catalog.Status(name, state.Store).Where(s => s.State != CartridgeState.Fresh).ToList();
            if (notFresh.Count > 0) throw NotTrained(name, notFresh.Count, notFresh[0].Document.DocumentId, notFresh[0].State.ToString());
        }
        var docs = state.Catalog.Documents(name).Select(r => (r.DocumentId, state.Catalog.DocumentText(name, r.DocumentId))).ToList();
        if (docs.Count == 0) throw new InvalidRequestException($"collection '{name}' has no documents.");
        return (info, new InProcessQueryPath(state), host.Model, host.Tokenizer, docs);
    }

    /// <summary>
    /// The collection on a server: its row and documents' state (GetCollection), the documents' text (GetDocumentText),
    /// the model loaded here to build the questions (--model/--tokenizer, else the paths the server reports), refused
    /// unless its fingerprint is the collection's; questions go through <see cref="RemoteQueryPath"/>.
    /// </summary>
    static (CollectionInfo Info, IQueryPath Path, Model Model, ITokenizer Tokenizer, List<(string, string)> Docs) Remote(
        CasClient client, string name, CollectionEvalOptions options, Target target)
    {
        var detail = client.GetCollectionAsync(name).GetAwaiter().GetResult();
        var c = detail.Collection;
        var info = new CollectionInfo(c.Name, c.ModelPath, c.ModelFingerprint, c.TokenizerPath, c.ChunkTokens, c.Created?.ToDateTime() ?? default, c.Documents, c.Chunks, c.Characters);
        if (options.Modes.Contains("cas"))
        {
            var notFresh = detail.Documents.Where(d => d.CartridgeState != Cas.Service.V1.CartridgeState.Fresh).ToList();
            if (notFresh.Count > 0) throw NotTrained(name, notFresh.Count, notFresh[0].Id, notFresh[0].CartridgeState.ToString());
        }
        if (detail.Documents.Count == 0) throw new InvalidRequestException($"collection '{name}' has no documents.");
        string modelPath = target.Model ?? c.ModelPath;
        if (!File.Exists(modelPath) && !Directory.Exists(modelPath))
            throw new InvalidRequestException($"the collection's model {c.ModelPath} (the server's path) is not on this machine; pass the same model with --model PATH (and --tokenizer PATH) to build the questions here.");
        var (model, tokenizer, _) = Cli.Load(modelPath, target.Tokenizer ?? (target.Model == null ? c.TokenizerPath : null));
        string fingerprint = Cartridge.Fingerprint(model);
        if (!string.Equals(fingerprint, c.ModelFingerprint, StringComparison.OrdinalIgnoreCase))
            throw new InvalidRequestException($"the model at {modelPath} (fingerprint {Cartridge.ShortFingerprint(fingerprint)}) is not collection '{name}''s model " +
                $"(fingerprint {Cartridge.ShortFingerprint(c.ModelFingerprint)}, {c.ModelPath} on the server); pass that model with --model.");
        Console.Error.WriteLine($"server {client.Address}: collection '{name}', {detail.Documents.Count} documents; model {modelPath} (fingerprint {Cartridge.ShortFingerprint(fingerprint)}, the collection's)");
        var docs = detail.Documents.Select(d => (d.Id, client.GetDocumentTextAsync(name, d.Id).GetAwaiter().GetResult())).ToList();
        return (info, new RemoteQueryPath(client), model, tokenizer, docs);
    }

    static InvalidRequestException NotTrained(string name, int count, string document, string state) =>
        new($"{count} document(s) of '{name}' have no fresh cartridge (e.g. {document}: {state.ToLowerInvariant()}); " +
            $"run `cas collection train {name}` first, or leave cas out of --modes.");
}
