using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Resources;
using Cas.Service.V1;
using Cas.Store;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using CatalogJobState = Cas.Collections.JobState;
using CatalogCartridgeState = Cas.Collections.CartridgeState;

namespace Cas.Service;

// The gRPC services: thin callers of the catalog, the store, the budget manager and the QueryEngine. They throw the
// libraries' typed exceptions; ExceptionInterceptor turns them into statuses.

static class Convert
{
    public static Timestamp Time(DateTime utc) => Timestamp.FromDateTime(DateTime.SpecifyKind(utc, DateTimeKind.Utc));

    public static V1.Collection Collection(CollectionInfo c) => new()
    {
        Name = c.Name, ModelPath = c.ModelPath, ModelFingerprint = c.ModelFingerprint, TokenizerPath = c.TokenizerPath,
        ChunkTokens = c.ChunkTokens, Created = Time(c.CreatedUtc), Documents = c.Documents, Chunks = c.Chunks, Characters = c.Characters,
    };

    public static CartridgeInfo Cartridge(StoredCartridgeInfo c)
    {
        var info = new CartridgeInfo
        {
            Id = c.Id, Version = c.Version, ModelFingerprint = c.ModelFingerprint, Length = c.Length, Layers = c.Layers, KvHeads = c.KvHeads,
            HeadDim = c.HeadDim, Dtype = c.DType.ToString().ToLowerInvariant(), Bytes = c.Bytes, ComputeBytes = c.ComputeBytes,
            Committed = Time(c.CommittedUtc), Bad = c.Bad ?? "",
        };
        foreach (var (k, v) in c.Labels) info.Labels[k] = v;
        return info;
    }

    public static V1.JobState Job(CatalogJobState s) => s switch
    {
        CatalogJobState.Queued => V1.JobState.Queued,
        CatalogJobState.Running => V1.JobState.Running,
        CatalogJobState.Done => V1.JobState.Done,
        CatalogJobState.Failed => V1.JobState.Failed,
        _ => V1.JobState.Cancelled,
    };
}

public sealed class CollectionServiceImpl(ServiceState state) : CollectionService.CollectionServiceBase
{
    public override Task<V1.Collection> CreateCollection(CreateCollectionRequest request, ServerCallContext context)
    {
        string modelPath, tokenizerPath;
        if (request.ModelPath.Length > 0)
        {
            modelPath = request.ModelPath;
            tokenizerPath = request.TokenizerPath.Length > 0 ? request.TokenizerPath
                : state.Options.ModelPath != null && Path.GetFullPath(modelPath) == Path.GetFullPath(state.Options.ModelPath) && state.Options.TokenizerPath != null
                    ? state.Options.TokenizerPath
                    : throw new InvalidRequestException("with a model_path other than the server's model, give its tokenizer_path too.");
        }
        else
        {
            modelPath = state.Options.ModelPath ?? throw new InvalidRequestException("this server has no default model; give model_path and tokenizer_path.");
            tokenizerPath = request.TokenizerPath.Length > 0 ? request.TokenizerPath : state.Options.TokenizerPath
                ?? throw new InvalidRequestException("this server has no default tokenizer; give tokenizer_path.");
        }
        if (!File.Exists(modelPath) && !Directory.Exists(modelPath)) throw new InvalidRequestException($"model_path {modelPath} does not exist on the server.");
        if (!File.Exists(tokenizerPath) && !Directory.Exists(tokenizerPath)) throw new InvalidRequestException($"tokenizer_path {tokenizerPath} does not exist on the server.");
        var host = state.Model(modelPath, tokenizerPath);
        var info = state.Catalog.Create(request.Name, host.ModelPath, host.Fingerprint, host.TokenizerPath, request.ChunkTokens == 0 ? 512 : request.ChunkTokens);
        return Task.FromResult(Convert.Collection(info));
    }

    public override async Task<AddDocumentsResponse> AddDocuments(IAsyncStreamReader<AddDocumentsRequest> requestStream, ServerCallContext context)
    {
        var total = new AddDocumentsResponse();
        CollectionInfo? collection = null;
        ModelHost? host = null;
        bool first = true;
        await foreach (var message in requestStream.ReadAllAsync(context.CancellationToken))
        {
            if (first)
            {
                collection = state.Collection(message.Collection);
                host = state.ModelOf(collection);
                first = false;
            }
            else if (message.Collection.Length > 0 && message.Collection != collection!.Name)
                throw new InvalidRequestException($"one AddDocuments call adds to one collection: the first message named '{collection.Name}', a later one '{message.Collection}'.");
            var docs = new List<(Document, string)>();
            foreach (var d in message.Documents)
            {
                if (string.IsNullOrEmpty(d.Id)) throw new InvalidRequestException("every document needs an id.");
                docs.Add((new Document(d.Id, d.Text, d.Source.Length > 0 ? d.Source : d.Id, Document.NoMetadata, Document.NoQuestions), d.Kind.Length > 0 ? d.Kind : "text"));
            }
            var report = await Task.Run(() => state.Catalog.AddDocuments(collection!.Name, docs, host!.Tokenizer, cancellation: context.CancellationToken), context.CancellationToken);
            total.Added += report.Added; total.Changed += report.Changed; total.Unchanged += report.Unchanged; total.Chunks += report.Chunks;
        }
        if (first) throw new InvalidRequestException("AddDocuments got no message; the first one must name the collection.");
        return total;
    }

    public override Task<ListCollectionsResponse> ListCollections(ListCollectionsRequest request, ServerCallContext context)
    {
        var response = new ListCollectionsResponse();
        foreach (var c in state.Catalog.List()) response.Collections.Add(Convert.Collection(c));
        return Task.FromResult(response);
    }

    public override Task<CollectionDetail> GetCollection(GetCollectionRequest request, ServerCallContext context)
    {
        var c = state.Collection(request.Name);
        var detail = new CollectionDetail { Collection = Convert.Collection(c) };
        foreach (var s in state.Catalog.Status(c.Name, state.Store))
        {
            var d = s.Document;
            detail.Documents.Add(new DocumentInfo
            {
                Id = d.DocumentId, Kind = d.Kind, Source = d.Source, ContentHash = d.ContentHash, Characters = d.Characters, Tokens = d.Tokens, Chunks = d.Chunks,
                Updated = Convert.Time(d.UpdatedUtc), CartridgeId = d.CartridgeId, CartridgeVersion = s.Cartridge?.Version ?? 0,
                CartridgeState = s.State switch
                {
                    CatalogCartridgeState.Missing => V1.CartridgeState.Missing,
                    CatalogCartridgeState.Fresh => V1.CartridgeState.Fresh,
                    CatalogCartridgeState.Stale => V1.CartridgeState.Stale,
                    _ => V1.CartridgeState.Bad,
                },
            });
        }
        return Task.FromResult(detail);
    }

    /// <summary>Pieces of at most this many chars: ≤ 3 UTF-8 bytes each (a surrogate pair is 2 chars, 4 bytes), well under any message limit.</summary>
    int TextPieceChars => Math.Clamp(state.Options.MaxMessageBytes / 8, 1024, 256 << 10);

    public override async Task GetDocumentText(GetDocumentTextRequest request, IServerStreamWriter<DocumentText> responseStream, ServerCallContext context)
    {
        var c = state.Collection(request.Collection);
        if (string.IsNullOrEmpty(request.DocumentId)) throw new InvalidRequestException("give a document_id (GetCollection lists the documents).");
        if (state.Catalog.Status(c.Name, state.Store, [request.DocumentId]).Count == 0)
            throw new NotFoundException($"collection '{c.Name}' has no document '{request.DocumentId}'; GetCollection lists its documents.");
        string text = state.Catalog.DocumentText(c.Name, request.DocumentId);
        int piece = TextPieceChars;
        for (int at = 0; at == 0 || at < text.Length;)
        {
            int n = Math.Min(piece, text.Length - at);
            if (n > 0 && at + n < text.Length && char.IsHighSurrogate(text[at + n - 1])) n--; // never split a surrogate pair (a piece must be valid UTF-8)
            await responseStream.WriteAsync(new DocumentText { Text = text.Substring(at, n) }, context.CancellationToken);
            at += n;
            if (n == 0) break;
        }
    }

    public override Task<DeleteCollectionResponse> DeleteCollection(DeleteCollectionRequest request, ServerCallContext context)
    {
        var c = state.Collection(request.Name);
        var docs = state.Catalog.Documents(c.Name);
        int cartridges = 0;
        if (!request.KeepCartridges)
            foreach (var d in docs) if (state.Store.Delete(d.CartridgeId)) cartridges++;
        state.Catalog.Delete(c.Name);
        return Task.FromResult(new DeleteCollectionResponse { DocumentsDeleted = docs.Count, CartridgesDeleted = cartridges });
    }
}

public sealed class CartridgeServiceImpl(ServiceState state) : CartridgeService.CartridgeServiceBase
{
    // Export pieces: 1 MiB, or half the message limit when that is smaller, so a piece (plus the first one's info) is
    // always a message the server may send.
    int PieceBytes => Math.Clamp(state.Options.MaxMessageBytes / 2, 4096, 1 << 20);

    public override Task<ListCartridgesResponse> ListCartridges(ListCartridgesRequest request, ServerCallContext context)
    {
        var response = new ListCartridgesResponse();
        foreach (var c in state.Store.List(request.IdPrefix.Length > 0 ? request.IdPrefix : null)) response.Cartridges.Add(Convert.Cartridge(c));
        return Task.FromResult(response);
    }

    public override Task<CartridgeInfo> GetCartridge(GetCartridgeRequest request, ServerCallContext context) =>
        Task.FromResult(Convert.Cartridge(Find(request.Id)));

    StoredCartridgeInfo Find(string id)
    {
        if (string.IsNullOrEmpty(id)) throw new InvalidRequestException("give a cartridge id (ListCartridges shows them).");
        return state.Store.Find(id) ?? throw new NotFoundException($"no cartridge '{id}'; ListCartridges shows the ones there are.");
    }

    public override async Task ExportCartridge(GetCartridgeRequest request, IServerStreamWriter<CartridgeData> responseStream, ServerCallContext context)
    {
        Find(request.Id);
        var file = await Task.Run(() => state.Store.ReadFile(request.Id, context.CancellationToken), context.CancellationToken);
        var bytes = file.Bytes;
        int pieceBytes = PieceBytes;
        for (int at = 0; at == 0 || at < bytes.Length; at += pieceBytes)
        {
            var piece = new CartridgeData { Data = ByteString.CopyFrom(bytes, at, Math.Min(pieceBytes, bytes.Length - at)) };
            if (at == 0) piece.Info = Convert.Cartridge(file.Info);
            await responseStream.WriteAsync(piece, context.CancellationToken);
        }
    }

    public override async Task<CartridgeInfo> ImportCartridge(IAsyncStreamReader<ImportCartridgeRequest> requestStream, ServerCallContext context)
    {
        ImportCartridgeRequest? head = null;
        string tmp = Path.Combine(Path.GetTempPath(), $"cas-import-{Guid.NewGuid():N}.safetensors");
        try
        {
            await using (var file = File.Create(tmp))
                await foreach (var message in requestStream.ReadAllAsync(context.CancellationToken))
                {
                    head ??= message;
                    if (!message.Data.IsEmpty) await file.WriteAsync(message.Data.Memory, context.CancellationToken);
                }
            if (head == null) throw new InvalidRequestException("ImportCartridge got no message; the first names the target and carries data.");
            var cartridge = Cartridge.Read(tmp);
            string id;
            IReadOnlyDictionary<string, string> labels;
            if (head.Collection.Length > 0)
            {
                if (head.DocumentId.Length == 0) throw new InvalidRequestException("with a collection, give document_id (the document the cartridge was trained on).");
                if (head.Id.Length > 0) throw new InvalidRequestException("give either collection + document_id or id, not both.");
                var c = state.Collection(head.Collection);
                if (!string.Equals(c.ModelFingerprint, cartridge.ModelFingerprint, StringComparison.OrdinalIgnoreCase))
                    throw new CartridgeMismatchException($"the cartridge was trained for model {Cartridge.ShortFingerprint(cartridge.ModelFingerprint)} but collection '{c.Name}' is for model {Cartridge.ShortFingerprint(c.ModelFingerprint)}.");
                var doc = state.Catalog.Documents(c.Name).FirstOrDefault(d => d.DocumentId == head.DocumentId)
                    ?? throw new NotFoundException($"collection '{c.Name}' has no document '{head.DocumentId}'.");
                id = doc.CartridgeId;
                labels = CollectionCatalog.CartridgeLabels(doc);
            }
            else if (head.Id.Length > 0)
            {
                id = head.Id;
                labels = new Dictionary<string, string> { [CollectionCatalog.LabelSource] = "grpc-import" };
            }
            else throw new InvalidRequestException("say where the cartridge goes: collection + document_id, or id.");
            var stored = await Task.Run(() => state.Store.Put(id, cartridge, labels, head.Fp32 ? StoredDType.F32 : StoredDType.BF16, context.CancellationToken), context.CancellationToken);
            return Convert.Cartridge(stored);
        }
        finally { File.Delete(tmp); }
    }

    public override Task<BudgetStatus> GetBudget(GetBudgetRequest request, ServerCallContext context)
    {
        var m = state.Budget.Metrics();
        return Task.FromResult(new BudgetStatus
        {
            ResidentBytes = m.ResidentBytes, PeakResidentBytes = m.PeakResidentBytes, ResidentBudget = m.ResidentBudget, ReservedBytes = m.ReservedBytes,
            HostBytes = m.HostBytes, ResidentEntries = m.ResidentEntries, Pinned = m.Pinned, ResidentHits = m.ResidentHits, HostHits = m.HostHits,
            Misses = m.Misses, Evictions = m.Evictions, HostEvictions = m.HostEvictions, SwapIns = m.SwapIns,
            SwapInP50Ms = m.SwapInP50Ms, SwapInP95Ms = m.SwapInP95Ms, SwapInP99Ms = m.SwapInP99Ms,
        });
    }

    public override Task<DeleteCartridgeResponse> DeleteCartridge(DeleteCartridgeRequest request, ServerCallContext context)
    {
        Find(request.Id);
        return Task.FromResult(new DeleteCartridgeResponse { Deleted = state.Store.Delete(request.Id) });
    }
}

/// <summary>
/// Training jobs. Start and cancel drive <see cref="Cas.Jobs.CasTrainer"/> through <see cref="TrainingRuns"/> (one
/// background run per collection, owned by the server state); reading jobs (get, list, watch) works on the catalog's
/// job rows, whoever wrote them (this server or `cas collection train`).
/// </summary>
public sealed class TrainingServiceImpl(ServiceState state, ILogger<TrainingServiceImpl> log) : TrainingService.TrainingServiceBase
{
    public override async Task<TrainingJob> StartTraining(StartTrainingRequest request, ServerCallContext context)
    {
        var c = state.Collection(request.Collection);
        var options = TrainingOptions(request, state.Options.Training);
        state.Training.Log ??= log;
        long id = await state.Training.StartAsync(c, options, context.CancellationToken);
        return Job(id);
    }

    /// <summary>The request's fields over the server's recipe; 0 (unset) keeps the recipe's value.</summary>
    internal static Cas.Jobs.CasTrainingOptions TrainingOptions(StartTrainingRequest r, Cas.Jobs.CasTrainingOptions recipe)
    {
        if (r.DocumentIds.Count > 0 || r.RetrainFresh)
            throw new NotImplementedFeatureException("the CAS trainer trains every document whose cartridge is missing, stale or bad; choosing documents " +
                "(document_ids) or retraining fresh ones (retrain_fresh) is not supported yet. Delete a cartridge (DeleteCartridge) to have it retrained.");
        if (r.CartridgeTokens < 0) throw new InvalidRequestException($"cartridge_tokens must be ≥ 0 (0: tokens / compression), got {r.CartridgeTokens}.");
        if (r.StepsPerDocument is < 0 or > int.MaxValue) throw new InvalidRequestException($"steps_per_document must lie in [0, {int.MaxValue}] (0: the recipe's epochs), got {r.StepsPerDocument}.");
        if (double.IsNaN(r.LearningRate) || r.LearningRate < 0 || r.LearningRate > float.MaxValue)
            throw new InvalidRequestException($"learning_rate must be positive (0: the default), got {r.LearningRate.ToString(System.Globalization.CultureInfo.InvariantCulture)}.");
        var o = recipe;
        if (r.CartridgeTokens > 0) o = o with { MinCartridgeTokens = r.CartridgeTokens, Compression = double.MaxValue }; // every document gets p (at most its own length)
        if (r.StepsPerDocument > 0) o = o with { Steps = (int)r.StepsPerDocument, Epochs = null };
        if (r.LearningRate > 0) o = o with { LearningRate = (float)r.LearningRate };
        if (r.Seed != 0) o = o with { Seed = r.Seed };
        o.Validate();
        return o;
    }

    public override async Task<TrainingJob> CancelTrainingJob(CancelTrainingJobRequest request, ServerCallContext context)
    {
        var job = Job(request.Id);
        if (!await state.Training.CancelAsync(request.Id, context.CancellationToken))
        {
            if (job.State is V1.JobState.Done or V1.JobState.Failed or V1.JobState.Cancelled) return job; // already ended: nothing to do
            throw new FailedPreconditionException($"training job {request.Id} is not running in this server (its row says {job.State}); " +
                "a job run by `cas collection train` is stopped with Ctrl+C in that process.");
        }
        return Job(request.Id);
    }

    public override Task<TrainingJob> GetTrainingJob(GetTrainingJobRequest request, ServerCallContext context) => Task.FromResult(Job(request.Id));

    public override Task<ListTrainingJobsResponse> ListTrainingJobs(ListTrainingJobsRequest request, ServerCallContext context)
    {
        var c = state.Collection(request.Collection);
        var response = new ListTrainingJobsResponse();
        foreach (var j in state.Catalog.Jobs(c.Name)) response.Jobs.Add(ToJob(j));
        return Task.FromResult(response);
    }

    public override async Task WatchTrainingJob(GetTrainingJobRequest request, IServerStreamWriter<TrainingJob> responseStream, ServerCallContext context)
    {
        TrainingJob? last = null;
        while (true)
        {
            var job = Job(request.Id);
            if (!job.Equals(last)) { await responseStream.WriteAsync(job, context.CancellationToken); last = job; }
            if (job.State is V1.JobState.Done or V1.JobState.Failed or V1.JobState.Cancelled) return;
            await Task.Delay(250, context.CancellationToken);
        }
    }

    TrainingJob Job(long id)
    {
        var row = state.Catalog.FindJob(id) ?? throw new NotFoundException($"no training job {id}.");
        return ToJob(row);
    }

    TrainingJob ToJob(JobRow j)
    {
        var job = new TrainingJob
        {
            Id = j.Id, Collection = j.Collection, Kind = j.Kind, State = Convert.Job(j.State), SettingsJson = j.Settings,
            Created = Convert.Time(j.CreatedUtc), Updated = Convert.Time(j.UpdatedUtc), Error = j.Error ?? "",
        };
        foreach (var d in state.Catalog.JobDocuments(j.Id))
        {
            job.Documents.Add(new TrainingDocumentProgress
            {
                DocumentId = d.DocumentId, State = Convert.Job(d.State), StepsDone = d.StepsDone, StepsTotal = d.StepsTotal,
                Loss = d.Loss ?? 0, CartridgeVersion = d.CartridgeVersion ?? 0,
            });
            job.StepsDone += d.StepsDone; job.StepsTotal += d.StepsTotal;
        }
        return job;
    }
}

public sealed class QueryServiceImpl(QueryEngine engine) : QueryService.QueryServiceBase
{
    public override Task Ask(AskRequest request, IServerStreamWriter<AskResponse> responseStream, ServerCallContext context) =>
        Run(AskMode.Cartridges, request, responseStream, context);

    public override Task AskRag(AskRequest request, IServerStreamWriter<AskResponse> responseStream, ServerCallContext context) =>
        Run(AskMode.Rag, request, responseStream, context);

    public override Task AskIcl(AskRequest request, IServerStreamWriter<AskResponse> responseStream, ServerCallContext context) =>
        Run(AskMode.Icl, request, responseStream, context);

    public override Task AskNoContext(AskRequest request, IServerStreamWriter<AskResponse> responseStream, ServerCallContext context) =>
        Run(AskMode.NoContext, request, responseStream, context);

    /// <summary><see cref="QueryEngine.ScoreAsync"/> of the request's answer in its mode and framing.</summary>
    public override async Task<ScoreResponse> Score(ScoreRequest request, ServerCallContext context)
    {
        if (request.Request == null) throw new InvalidRequestException("Score needs the request (an AskRequest: collection, question, …) whose context scores the answer.");
        var s = await engine.ScoreAsync(Mode(request.Mode), request.Request, [.. request.Answer], Framing(request.Framing), context.CancellationToken);
        var response = new ScoreResponse { Result = s.Ask, Nll = s.Nll };
        response.Prompt.Add(s.Prompt);
        response.TokenNll.Add(s.TokenNll);
        return response;
    }

    /// <summary>The engine's mode for a <see cref="QueryMode"/> (unspecified: cartridges, as Ask).</summary>
    public static AskMode Mode(QueryMode mode) => mode switch
    {
        QueryMode.Unspecified or QueryMode.Cartridges => AskMode.Cartridges,
        QueryMode.Rag => AskMode.Rag,
        QueryMode.Icl => AskMode.Icl,
        QueryMode.NoContext => AskMode.NoContext,
        _ => throw new InvalidRequestException($"unknown mode {(int)mode}; use QUERY_MODE_CARTRIDGES, _RAG, _ICL or _NO_CONTEXT."),
    };

    /// <summary>The <see cref="QueryMode"/> of an engine mode (what a client sends).</summary>
    public static QueryMode Mode(AskMode mode) => mode switch
    {
        AskMode.Rag => QueryMode.Rag, AskMode.Icl => QueryMode.Icl, AskMode.NoContext => QueryMode.NoContext, _ => QueryMode.Cartridges,
    };

    /// <summary>The engine's framing for an <see cref="AnswerFraming"/> (unspecified: question, as Ask).</summary>
    public static ScoreFraming Framing(AnswerFraming framing) => framing switch
    {
        AnswerFraming.Unspecified or AnswerFraming.Question => ScoreFraming.Question,
        AnswerFraming.Continuation => ScoreFraming.Continuation,
        _ => throw new InvalidRequestException($"unknown framing {(int)framing}; use ANSWER_FRAMING_QUESTION or ANSWER_FRAMING_CONTINUATION."),
    };

    /// <summary>The <see cref="AnswerFraming"/> of an engine framing.</summary>
    public static AnswerFraming Framing(ScoreFraming framing) =>
        framing == ScoreFraming.Continuation ? AnswerFraming.Continuation : AnswerFraming.Question;

    async Task Run(AskMode mode, AskRequest request, IServerStreamWriter<AskResponse> responseStream, ServerCallContext context)
    {
        var result = await engine.AskAsync(mode, request,
            text => responseStream.WriteAsync(new AskResponse { Delta = new AnswerDelta { Text = text } }, context.CancellationToken),
            context.CancellationToken);
        await responseStream.WriteAsync(new AskResponse { Result = result }, context.CancellationToken);
    }
}
