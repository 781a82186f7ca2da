using System.Diagnostics;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Jobs;
using Cas.Service;
using Cas.Service.V1;
using Cas.Store;
using Cas.Training;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Demo;

/// <summary>What `cas demo` does. Defaults: the measured demo recipe on stories260K (see README, "The demo").</summary>
public sealed record DemoOptions
{
    /// <summary>Folder of the collections and the cartridge store; reused by a second run (nothing retrained).</summary>
    public string DataDir { get; init; } = "cas-data";
    public required string ModelPath { get; init; }
    public required string TokenizerPath { get; init; }
    /// <summary>../shared/datasets: SQuALITY's train set is used when it is there.</summary>
    public string? DatasetsDir { get; init; }
    /// <summary>The sample shipped in the repository (eval/demo/stories.jsonl), used when the datasets are absent.</summary>
    public required string SamplePath { get; init; }
    /// <summary>Documents in the collection.</summary>
    public int Documents { get; init; } = 6;
    /// <summary>Most tokens of a document (its opening passage, cut at a sentence end); at most half the model's context.</summary>
    public int DocumentTokens { get; init; } = 320;
    /// <summary>Questions asked, each with cartridges (Ask) and with RAG (AskRag).</summary>
    public int Questions { get; init; } = 4;
    public int MaxTokens { get; init; } = 48;
    /// <summary>Chunk size of the collection's retrieval index (what RAG pastes).</summary>
    public int RetrievalChunkTokens { get; init; } = 128;
    /// <summary>Resident budget for training and serving.</summary>
    public long ResidentBytes { get; init; } = 256L << 20;
    /// <summary>The CAS recipe (null: <see cref="DemoRun.Recipe"/> for the number of documents).</summary>
    public CasTrainingOptions? Training { get; init; }
}

public abstract record DemoEvent;
/// <summary>A line of progress for a person.</summary>
public sealed record DemoNote(string Text) : DemoEvent;
/// <summary>Progress of the CAS training job.</summary>
public sealed record DemoTraining(CasJobEvent Event) : DemoEvent;
/// <summary>One answer, as soon as it is complete.</summary>
public sealed record DemoAnswered(DemoAnswer Answer) : DemoEvent;

/// <summary>One question asked in one mode ("cas": Ask, cartridges composed; "rag": AskRag, chunks pasted), as the gRPC client saw it.</summary>
public sealed record DemoAnswer(int QuestionIndex, string Question, string GoldDocumentId, string Mode, string Text, string FinishReason,
    IReadOnlyList<string> Documents, bool GoldUsed, int PromptTokens, int CartridgeSlots, int CompletionTokens, long KvBytesAttended,
    double RetrieveMs, double LoadMs, double PrefillMs, double DecodeMs, double TotalMs, double ClientMs);

public sealed record DemoResult(string Source, string SourcePath, string Collection, int Documents, int DocumentsAdded,
    int DocumentsFresh, CasJobResult Training, bool Trained, int CartridgeSlotsTotal, TimeSpan BuildTime, TimeSpan TrainTime,
    TimeSpan ServeStartTime, TimeSpan AskTime, TimeSpan Total, IReadOnlyList<DemoAnswer> Answers)
{
    IEnumerable<DemoAnswer> Of(string mode) => Answers.Where(a => a.Mode == mode);
    public double Mean(string mode, Func<DemoAnswer, double> f) => Of(mode).Select(f).DefaultIfEmpty(double.NaN).Average();
    public int GoldUsed(string mode) => Of(mode).Count(a => a.GoldUsed);
}

/// <summary>
/// The README demo end to end: a small collection (SQuALITY openings from ../shared/datasets, or the repository's sample),
/// CAS cartridges for it (<see cref="CasTrainer"/>; skipped when every cartridge is already fresh in the data folder), the
/// gRPC service (<see cref="CasServer"/> on a free loopback port), a few questions through a gRPC client with cartridges
/// (Ask) and with RAG (AskRag), then the server is stopped. Writes nothing to the console: progress comes through
/// <see cref="IProgress{T}"/>, results in <see cref="DemoResult"/>.
/// </summary>
public static class DemoRun
{
    /// <summary>
    /// The demo's training recipe: p = tokens / 10 (≈25 slots for a 256-token passage, 10× smaller than the text), 64
    /// probes per chunk and 4 epochs (256 gold examples per document), every document resident at once (no rotation
    /// wait), distractor mixing as CAS does (P_iso 0.75, up to 5 others). Half the default recipe's probes (128 per
    /// chunk) so that 6 documents train in under 2 minutes on 2 cores with stories260K (97 s measured under heavy load).
    /// </summary>
    public static CasTrainingOptions Recipe(int documents) => new()
    {
        Compression = 10, Resident = Math.Max(1, documents), MaxDistractors = 5, Epochs = 4,
        Probes = new DocumentProbeOptions { ExamplesPerChunk = 64, ChunkTokens = 0 },
    };

    /// <summary>The collection the demo uses for a corpus and a model (its name carries both, so one data folder holds several).</summary>
    public static string CollectionName(string source, string fingerprint) => $"demo-{source}-{Cartridge.ShortFingerprint(fingerprint)}";

    public static async Task<DemoResult> ExecuteAsync(DemoOptions o, IProgress<DemoEvent>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (o.Questions < 1) throw new InvalidRequestException($"the demo asks at least one question, got {o.Questions}.");
        if (o.MaxTokens < 1) throw new InvalidRequestException($"--max-tokens must be ≥ 1, got {o.MaxTokens}.");
        var total = Stopwatch.StartNew();
        void Note(string s) => progress?.Report(new DemoNote(s));

        // ---- the collection
        var sw = Stopwatch.StartNew();
        Note($"loading the model {o.ModelPath}");
        Model model = ModelLoader.Load(o.ModelPath);
        ITokenizer tok = TokenizerLoader.Load(o.TokenizerPath);
        string fingerprint = Cartridge.Fingerprint(model);
        int docTokens = Math.Min(o.DocumentTokens, model.Config.MaxSeqLen / 2);
        var corpus = DemoCorpus.Load(o.DatasetsDir, o.SamplePath, tok, o.Documents, docTokens);
        var questions = corpus.Questions(o.Questions);
        if (questions.Count == 0) throw new InvalidRequestException($"the documents of {corpus.Path} carry no questions; the demo needs some.");
        string name = CollectionName(corpus.Source, fingerprint);
        Note($"collection {name}: {corpus.Documents.Count} documents from {corpus.Path} (" +
             (corpus.Source == "sample" ? "the sample shipped in the repository" : "each story's opening, at most " + docTokens + " tokens") + ")");
        int added, fresh, slots;
        CasJobResult training;
        TimeSpan buildTime, trainTime;
        var recipe = (o.Training ?? Recipe(corpus.Documents.Count)) with { ResidentBudgetBytes = o.ResidentBytes };
        using (var catalog = new CollectionCatalog(o.DataDir))
        {
            var info = catalog.Find(name) ?? catalog.Create(name, Path.GetFullPath(o.ModelPath), fingerprint, Path.GetFullPath(o.TokenizerPath), o.RetrievalChunkTokens);
            var report = catalog.AddDocuments(name, corpus.Documents.Select(d => (d.Document, "jsonl")), tok, cancellation: cancel);
            added = report.Added + report.Changed;
            buildTime = sw.Elapsed;
            Note($"collection {name}: {report.Added} added, {report.Changed} changed, {report.Unchanged} unchanged ({info.ChunkTokens}-token retrieval chunks)");

            // ---- cartridges (CAS training; nothing to do when all are fresh)
            sw.Restart();
            using (var store = new FasterCartridgeStore(o.DataDir))
            using (var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = Math.Max(1, o.ResidentBytes) }))
            {
                int needing = catalog.NeedingTraining(name, store).Count;
                Note(needing == 0
                    ? $"cartridges: all {corpus.Documents.Count} fresh in {Path.GetFullPath(o.DataDir)}; not training"
                    : $"cartridges: training {needing} (CAS: p = tokens/{recipe.Compression:0.#}, {recipe.Probes.ExamplesPerChunk} probes per chunk, {recipe.Epochs:0.#} epochs, distractor mixing)");
                var trainer = new CasTrainer(model, tok, catalog, store, budget, o.DataDir);
                var jobProgress = progress == null ? null : new SyncProgress<CasJobEvent>(e => progress.Report(new DemoTraining(e)));
                training = trainer.Run(name, recipe, jobProgress, cancel);
                var status = catalog.Status(name, store);
                fresh = status.Count(s => s.State == Cas.Collections.CartridgeState.Fresh);
                slots = status.Sum(s => s.Cartridge?.Length ?? 0);
            }
            trainTime = sw.Elapsed;
        }
        if (fresh < corpus.Documents.Count)
            throw new InvalidOperationException($"after training, only {fresh} of {corpus.Documents.Count} cartridges are fresh in {o.DataDir}; run `cas collection status {name} --data-dir {o.DataDir}`.");

        // ---- the service, and questions through a gRPC client
        sw.Restart();
        Note("starting the gRPC service on a free loopback port");
        var answers = new List<DemoAnswer>();
        TimeSpan serveStart, askTime;
        await using (var server = await CasServer.StartAsync(new CasServerOptions
        {
            DataDir = o.DataDir, Host = "127.0.0.1", Port = 0, ModelPath = Path.GetFullPath(o.ModelPath), TokenizerPath = Path.GetFullPath(o.TokenizerPath),
            ResidentBytes = o.ResidentBytes, LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
        }, cancel))
        {
            serveStart = sw.Elapsed;
            Note($"serving at {server.Address}; asking {questions.Count} questions with cartridges (Ask) and with RAG (AskRag)");
            sw.Restart();
            using var channel = GrpcChannel.ForAddress(server.Address);
            var client = new QueryService.QueryServiceClient(channel);
            for (int i = 0; i < questions.Count; i++)
            {
                var (question, gold) = questions[i];
                foreach (var mode in new[] { "cas", "rag" })
                {
                    var a = await AskAsync(client, mode, name, i + 1, question, gold, o.MaxTokens, cancel);
                    answers.Add(a);
                    progress?.Report(new DemoAnswered(a));
                }
            }
            askTime = sw.Elapsed;
            Note("stopping the service");
        }
        return new DemoResult(corpus.Source, corpus.Path, name, corpus.Documents.Count, added, fresh, training, training.Trained > 0, slots,
            buildTime, trainTime, serveStart, askTime, total.Elapsed, answers);
    }

    /// <summary>
    /// One question through the real client path (as `cas ask` does): <paramref name="mode"/> "cas" calls Ask, "rag"
    /// AskRag; the streamed deltas, then the result, with <paramref name="gold"/> looked up among the documents used.
    /// </summary>
    public static async Task<DemoAnswer> AskAsync(QueryService.QueryServiceClient client, string mode, string collection, int index, string question,
        string gold, int maxTokens, CancellationToken cancel)
    {
        if (mode is not ("cas" or "rag")) throw new ArgumentException($"mode must be cas or rag, got '{mode}'.", nameof(mode));
        var request = new AskRequest { Collection = collection, Question = question, MaxTokens = maxTokens };
        var sw = Stopwatch.StartNew();
        using var call = mode == "cas" ? client.Ask(request, cancellationToken: cancel) : client.AskRag(request, cancellationToken: cancel);
        var streamed = new System.Text.StringBuilder();
        AskResult? result = null;
        await foreach (var r in call.ResponseStream.ReadAllAsync(cancel))
        {
            if (r.KindCase == AskResponse.KindOneofCase.Delta) streamed.Append(r.Delta.Text);
            else result = r.Result;
        }
        double clientMs = sw.Elapsed.TotalMilliseconds;
        if (result == null) throw new InvalidOperationException($"the server ended the {mode} answer to question {index} without a result message.");
        var docs = result.Documents.Select(d => d.DocumentId).ToList();
        var t = result.Tokens; var l = result.Latency;
        return new DemoAnswer(index, question, gold, mode, streamed.ToString(), result.FinishReason.ToString().ToLowerInvariant(), docs,
            docs.Contains(gold), t.PromptTokens, t.CartridgeSlots, t.CompletionTokens, t.KvBytesAttended,
            l.RetrieveMs, l.LoadMs, l.PrefillMs, l.DecodeMs, l.TotalMs, clientMs);
    }
}
