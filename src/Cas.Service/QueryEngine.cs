using System.Diagnostics;
using System.Text;
using System.Threading.Channels;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Service.V1;
using Cas.Store;

namespace Cas.Service;

/// <summary>How a question is answered: after the retrieved documents' cartridges, with retrieved chunks pasted (RAG), or with whole documents in context (ICL).</summary>
public enum AskMode { Cartridges, Rag, Icl, NoContext }

/// <summary>
/// Answers questions over a collection: retrieve (BM25 over chunks, or dense: <see cref="DenseIndex"/>) → documents,
/// deduplicated in retrieval order → (Ask) up to D fresh cartridges within a KV-slot budget, acquired from the budget
/// manager and held until the sequence has left the decode batch → decode on the model's <see cref="DecodeScheduler"/>,
/// text streamed as it comes. The gRPC QueryService is a thin caller; so is anything in-process.
/// </summary>
public sealed class QueryEngine(ServiceState state)
{
    public const int DefaultMaxTokens = 128, DefaultRetrieveChunks = 8, DefaultMaxCartridges = 4, MaxRetrieveChunks = 256;

    // Prompting.Build only asks whether a cartridge comes first (then the prompt is encoded as a continuation, without
    // BOS); this stands for "some cartridge" while the cartridges are still being chosen.
    static readonly KvPrefix SomeCartridge = new(0, 0, 0, 0, [], []);

    /// <summary>Answers <paramref name="request"/>; <paramref name="onText"/> gets the answer's text as it is decoded.</summary>
    public async Task<AskResult> AskAsync(AskMode mode, AskRequest request, Func<string, Task> onText, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request);
        return (await RunAsync(mode, request, QuestionText(request), onText, null, cancel)).Result;
    }

    /// <summary>
    /// Scores <paramref name="answer"/> as the reply to <paramref name="request"/> instead of decoding one: retrieval,
    /// the choice and loading of cartridges (or the pasted chunks/documents) and the prompt are exactly those of
    /// <see cref="AskAsync"/> (the same code runs); then one forward pass of the model over prefix + prompt + answer
    /// gives −log q of every answer token. <paramref name="request"/>.MaxTokens reserves the same room for the answer as
    /// Ask would (0: the answer's length), so Ask and Score choose the same context.
    /// </summary>
    public async Task<ScoreResult> ScoreAsync(AskMode mode, AskRequest request, int[] answer, ScoreFraming framing, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request); ArgumentNullException.ThrowIfNull(answer);
        if (answer.Length == 0) throw new InvalidRequestException("the answer to score is empty.");
        if (request.MaxTokens == 0) request = new AskRequest(request) { MaxTokens = answer.Length };
        if (request.MaxTokens < answer.Length) throw new InvalidRequestException($"max_tokens={request.MaxTokens} is shorter than the {answer.Length}-token answer to score.");
        string text = framing == ScoreFraming.Question ? QuestionText(request) : (request.Question ?? "").Trim();
        var (_, score) = await RunAsync(mode, request, text, _ => Task.CompletedTask, answer, cancel);
        return score!;
    }

    // Ask and Score: validate, retrieve, choose and load cartridges or paste context, then decode (Ask) or score the
    // given answer (Score). questionText is what follows the context: the service's "Question: …\nAnswer:" for Ask.
    async Task<(AskResult Result, ScoreResult? Score)> RunAsync(AskMode mode, AskRequest request, string questionText, Func<string, Task> onText,
        int[]? scoreAnswer, CancellationToken cancel)
    {
        long t0 = Stopwatch.GetTimestamp();
        if (string.IsNullOrWhiteSpace(request.Question)) throw new InvalidRequestException("the question is empty; ask something.");
        if (request.MaxTokens < 0 || request.RetrieveChunks < 0 || request.MaxCartridges < 0 || request.MaxCartridgeSlots < 0)
            throw new InvalidRequestException("max_tokens, retrieve_chunks, max_cartridges and max_cartridge_slots must not be negative (0 takes the default).");
        if (request.RetrieveChunks > MaxRetrieveChunks) throw new InvalidRequestException($"retrieve_chunks is at most {MaxRetrieveChunks}, got {request.RetrieveChunks}.");
        Turns(request);
        bool dense = DenseRetrieval(request);
        var sampling = Sampling(request);
        var collection = state.Collection(request.Collection);
        var host = state.ModelOf(collection);
        var config = host.Config;
        int maxTokens = request.MaxTokens == 0 ? DefaultMaxTokens : request.MaxTokens;
        int maxDocs = request.MaxCartridges == 0 ? DefaultMaxCartridges : request.MaxCartridges;
        var result = new AskResult();

        // Retrieve: chunks → their documents, deduplicated, in retrieval order (or the documents the caller named).
        var docs = new List<(string Id, double Score)>();
        IReadOnlyList<ChunkHit> hits = [];
        if (request.DocumentIds.Count > 0)
        {
            // Only the named documents are read (one row each), not the whole collection.
            var known = state.Catalog.Status(collection.Name, state.Store, request.DocumentIds).Select(s => s.Document.DocumentId).ToHashSet(StringComparer.Ordinal);
            foreach (var id in request.DocumentIds)
            {
                if (!known.Contains(id)) throw new NotFoundException($"collection '{collection.Name}' has no document '{id}'.");
                if (!docs.Exists(d => d.Id == id)) docs.Add((id, 0));
            }
        }
        else if (mode != AskMode.NoContext)
        {
            if (collection.Documents == 0) throw new FailedPreconditionException($"collection '{collection.Name}' has no documents; add some (AddDocuments) first.");
            int k = request.RetrieveChunks == 0 ? DefaultRetrieveChunks : request.RetrieveChunks;
            hits = dense
                ? await Task.Run(() => state.Dense.Search(collection, host, request.Question, k, cancel), cancel)
                : state.Catalog.Search(collection.Name, request.Question, k);
            foreach (var h in hits)
            {
                result.Chunks.Add(new RetrievedChunk { DocumentId = h.DocumentId, Ordinal = h.Ordinal, Score = h.Score, CharStart = h.CharStart, CharEnd = h.CharEnd });
                if (!docs.Exists(d => d.Id == h.DocumentId)) docs.Add((h.DocumentId, h.Score));
            }
        }
        double retrieveMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;

        var leases = new List<CartridgeLease>();
        try
        {
            PromptTokens prompt;
            double loadMs = 0;
            if (mode == AskMode.Cartridges)
            {
                prompt = Build(host, request, questionText, afterCartridge: true);
                int budget = request.MaxCartridgeSlots > 0 ? request.MaxCartridgeSlots : Math.Max(0, config.MaxSeqLen - prompt.Ids.Length - maxTokens);
                // The cartridge state of the retrieved documents only: an unretrieved document may be untrained (or the
                // collection huge) without this question paying for it.
                var status = state.Catalog.Status(collection.Name, state.Store, docs.Select(d => d.Id)).ToDictionary(s => s.Document.DocumentId, StringComparer.Ordinal);
                var chosen = new List<(string Doc, double Score, StoredCartridgeInfo Info)>();
                int slots = 0;
                foreach (var (id, score) in docs)
                {
                    var s = status[id];
                    if (chosen.Count >= maxDocs) { result.Skipped.Add($"{id}: beyond max_cartridges={maxDocs}"); continue; }
                    if (s.State != Cas.Collections.CartridgeState.Fresh) { result.Skipped.Add($"{id}: cartridge {s.State.ToString().ToLowerInvariant()}"); continue; }
                    if (slots + s.Cartridge!.Length > budget) { result.Skipped.Add($"{id}: its {s.Cartridge.Length} slots exceed the KV-slot budget ({budget - slots} left of {budget})"); continue; }
                    chosen.Add((id, score, s.Cartridge));
                    slots += s.Cartridge.Length;
                }
                if (docs.Count > 0 && chosen.Count == 0)
                {
                    var untrained = docs.Where(d => status[d.Id].State != Cas.Collections.CartridgeState.Fresh).Select(d => $"{d.Id} ({status[d.Id].State.ToString().ToLowerInvariant()})").ToList();
                    if (untrained.Count > 0)
                        throw new FailedPreconditionException($"training of collection '{collection.Name}' has not finished: no fresh cartridge for the retrieved documents {string.Join(", ", untrained)}. " +
                            $"Train it (`cas collection train {collection.Name}`, or `cas store import FILE --collection {collection.Name} --document ID`), or use AskRag/AskIcl.");
                    throw new InvalidRequestException($"no retrieved document's cartridge fits the KV-slot budget of {budget} slots ({string.Join("; ", result.Skipped)}); raise max_cartridge_slots, lower max_tokens or ask a shorter question.");
                }
                long l0 = Stopwatch.GetTimestamp();
                foreach (var c in chosen)
                {
                    var lease = await Task.Run(() => state.Budget.Acquire(c.Info.Id, cancel), cancel);
                    leases.Add(lease);
                    result.Documents.Add(new UsedDocument { DocumentId = c.Doc, Score = c.Score, CartridgeId = lease.Info.Id, CartridgeVersion = lease.Info.Version, CartridgeSlots = lease.Info.Length });
                }
                loadMs = Stopwatch.GetElapsedTime(l0).TotalMilliseconds;
                if (leases.Count == 0) prompt = Build(host, request, questionText, afterCartridge: false);
            }
            else
            {
                // Pasted context: chunks (RAG) or whole documents (ICL), in retrieval order, as many as fit with the question and the answer.
                int room = config.MaxSeqLen - maxTokens;
                var bare = Build(host, request, questionText, afterCartridge: false);
                if (bare.Ids.Length > room) throw new InvalidRequestException($"the question ({bare.Ids.Length} tokens) and max_tokens={maxTokens} do not fit the model's context of {config.MaxSeqLen}.");
                var pieces = new List<string>();
                var candidates = mode == AskMode.NoContext ? []
                    : mode == AskMode.Rag
                    ? hits.Select(h => (Doc: h.DocumentId, Score: h.Score, Text: h.Text, What: $"{h.DocumentId}#{h.Ordinal}")).ToList()
                    : docs.Take(maxDocs).Select(d => (Doc: d.Id, Score: d.Score, Text: state.Catalog.DocumentText(collection.Name, d.Id), What: d.Id)).ToList();
                if (mode == AskMode.Icl) foreach (var d in docs.Skip(maxDocs)) result.Skipped.Add($"{d.Id}: beyond max_cartridges={maxDocs}");
                prompt = bare;
                foreach (var c in candidates)
                {
                    var trial = Build(host, request, ContextText([.. pieces, c.Text], questionText), afterCartridge: false);
                    if (trial.Ids.Length > room) { result.Skipped.Add($"{c.What}: does not fit the context ({trial.Ids.Length} tokens with it, room {room})"); continue; }
                    pieces.Add(c.Text);
                    prompt = trial;
                    if (!result.Documents.Any(d => d.DocumentId == c.Doc)) result.Documents.Add(new UsedDocument { DocumentId = c.Doc, Score = c.Score });
                }
                if (mode == AskMode.Icl && candidates.Count > 0 && pieces.Count == 0)
                    throw new FailedPreconditionException($"none of the documents fits the model's context of {config.MaxSeqLen} tokens with the question and max_tokens={maxTokens} ({string.Join("; ", result.Skipped)}); use Ask (cartridges) or AskRag.");
            }

            if (scoreAnswer is not null) return (result, Score(host, leases.Select(l => l.Prefix).ToList(), prompt.Ids, scoreAnswer, result, retrieveMs, loadMs, t0));

            var decoded = await DecodeAsync(host, new DecodeRequest(leases.Select(l => l.Prefix).ToList(), prompt.Ids)
            {
                MaxTokens = maxTokens, Sampling = sampling, StopTokens = prompt.StopTokens,
            }, onText, cancel);
            result.Answer = decoded.Text;
            var r = decoded.Result;
            result.FinishReason = Finish(r.Finish);
            result.Tokens = Accounting(config, r.PromptTokens, r.PrefixSlots, r.Tokens.Length);
            result.Latency = new LatencyBreakdown
            {
                RetrieveMs = retrieveMs, LoadMs = loadMs, QueuedMs = r.QueuedMs, PrefillMs = r.PrefillMs, DecodeMs = r.DecodeMs,
                TotalMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds,
            };
            return (result, null);
        }
        finally
        {
            foreach (var l in leases) l.Dispose();
        }
    }

    /// <summary>
    /// Decodes on the model's scheduler and streams the text. Returns only once the sequence has left the batch (done,
    /// failed or cancelled), so the caller may release the cartridges it attends to.
    /// </summary>
    static async Task<(DecodeResult Result, string Text)> DecodeAsync(ModelHost host, DecodeRequest request, Func<string, Task> onText, CancellationToken cancel)
    {
        var text = new StringBuilder();
        var pieces = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var tail = new StringBuilder();
        var stream = new CompletionStream(host.Tokenizer, request.Prompt, t => { if (!pieces.Writer.TryWrite(t)) tail.Append(t); });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var task = host.Scheduler.Submit(request, stream.Add, stop.Token);
        _ = task.ContinueWith(_ => pieces.Writer.TryComplete(), TaskScheduler.Default);
        try
        {
            await foreach (var piece in pieces.Reader.ReadAllAsync(CancellationToken.None))
            {
                text.Append(piece);
                await onText(piece);
            }
            var result = await task;
            stream.Finish();
            if (tail.Length > 0) { text.Append(tail); await onText(tail.ToString()); }
            return (result, text.ToString());
        }
        finally
        {
            // Whatever ended this call (the client went away, a write failed), the sequence leaves the batch first.
            stop.Cancel();
            try { await task; } catch { /* its outcome was already reported, or the call is failing for another reason */ }
        }
    }

    /// <summary>Whether the request asks for dense retrieval: "dense"; "bm25" or empty: BM25; anything else INVALID_ARGUMENT.</summary>
    public static bool DenseRetrieval(AskRequest request) => request.Retrieval switch
    {
        "" or "bm25" => false,
        "dense" => true,
        var r => throw new InvalidRequestException($"unknown retrieval '{r}'; use \"bm25\" (the default) or \"dense\"."),
    };

    /// <summary>The request's history as chat messages for <see cref="Prompting"/>; INVALID_ARGUMENT for a role other than
    /// user or assistant (or system as the first turn).</summary>
    public static IReadOnlyList<ChatMessage> Turns(AskRequest request)
    {
        var turns = new List<ChatMessage>(request.History.Count);
        for (int i = 0; i < request.History.Count; i++)
        {
            var (role, content) = (request.History[i].Role, request.History[i].Content);
            if (role is not ("user" or "assistant") && !(role == "system" && i == 0))
                throw new InvalidRequestException($"history[{i}] has role '{role}'; a turn is \"user\" or \"assistant\" (or \"system\", first only).");
            turns.Add(new ChatMessage(role, content));
        }
        return turns;
    }

    /// <summary>The request's sampling (0 fields take the defaults: top-p off, seed 42), validated.</summary>
    public static SamplingOptions Sampling(AskRequest request)
    {
        var sampling = new SamplingOptions
        {
            Temperature = request.Temperature, TopK = request.TopK, TopP = request.TopP is 0 ? 1f : request.TopP, Seed = request.Seed == 0 ? 42 : request.Seed,
        };
        sampling.Validate();
        return sampling;
    }

    /// <summary>How a decode ended, as the API says it.</summary>
    public static V1.FinishReason Finish(Cas.Engine.FinishReason finish) => finish switch
    {
        Cas.Engine.FinishReason.Stop => V1.FinishReason.Stop,
        Cas.Engine.FinishReason.Length => V1.FinishReason.Length,
        _ => V1.FinishReason.Context,
    };

    /// <summary>Token accounting of one answer; K/V bytes are those of the sequence's fp32 cache at the end.</summary>
    public static TokenAccounting Accounting(Cas.Engine.Models.ModelConfig config, int promptTokens, int cartridgeSlots, int completionTokens) => new()
    {
        PromptTokens = promptTokens, CartridgeSlots = cartridgeSlots, CompletionTokens = completionTokens,
        KvBytesAttended = 2L * config.Layers * config.KvHeads * config.HeadDim * sizeof(float) * (cartridgeSlots + promptTokens + completionTokens),
    };

    // A chat turn (`chat`, or a conversation with history) is the question itself, the template frames it; plain text
    // gets "Question: …\nAnswer:".
    static bool IsChat(AskRequest request) => request.Chat || request.History.Count > 0;

    static string QuestionText(AskRequest request) =>
        IsChat(request) ? request.Question.Trim() : $"Question: {request.Question.Trim()}\nAnswer:";

    ScoreResult Score(ModelHost host, IReadOnlyList<KvPrefix> cartridges, int[] prompt, int[] answer, AskResult result, double retrieveMs, double loadMs, long t0)
    {
        var config = host.Config;
        foreach (int id in answer)
            if ((uint)id >= (uint)config.VocabSize) throw new InvalidRequestException($"answer token id {id} is outside the model's vocabulary [0, {config.VocabSize}).");
        int[] tokens = [.. prompt, .. answer];
        var prefix = cartridges.Count == 0 ? null : cartridges.Count == 1 ? cartridges[0] : KvPrefix.Concat(cartridges);
        int slots = prefix?.Length ?? 0;
        if (slots + tokens.Length > config.MaxSeqLen)
            throw new InvalidRequestException($"{slots} cartridge slots + {prompt.Length} prompt tokens + the {answer.Length}-token answer exceed the model's context of {config.MaxSeqLen}.");
        long p0 = Stopwatch.GetTimestamp();
        var nll = host.OffDecodeThread(transformer =>
        {
            var cache = new KvCache(config, slots + tokens.Length, prefix);
            var logits = new float[tokens.Length * config.VocabSize];
            transformer.ForwardAll(cache, tokens, logits);
            var logProbs = new float[config.VocabSize];
            var nll = new double[answer.Length];
            for (int i = 0; i < answer.Length; i++)
            {
                // The logits at the position before answer token i predict it.
                Cas.Engine.Compute.Ops.LogSoftmax(logits.AsSpan((prompt.Length - 1 + i) * config.VocabSize, config.VocabSize), logProbs);
                nll[i] = -logProbs[answer[i]];
            }
            return nll;
        });
        double forwardMs = Stopwatch.GetElapsedTime(p0).TotalMilliseconds;
        result.Tokens = Accounting(config, prompt.Length, slots, answer.Length);
        result.Latency = new LatencyBreakdown { RetrieveMs = retrieveMs, LoadMs = loadMs, PrefillMs = forwardMs, TotalMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds };
        result.FinishReason = V1.FinishReason.Stop;
        return new ScoreResult(result, prompt, nll);
    }

    static string ContextText(IReadOnlyList<string> pieces, string questionText) =>
        pieces.Count == 0 ? questionText : string.Join("\n\n", pieces) + "\n\n" + questionText;

    static PromptTokens Build(ModelHost host, AskRequest request, string text, bool afterCartridge) =>
        Prompting.Build(host.Tokenizer, new CompletionRequest(afterCartridge && !IsChat(request) ? "\n" + text : text)
        {
            Chat = IsChat(request), TokenizerPath = host.TokenizerPath, Prefix = afterCartridge ? SomeCartridge : null,
            History = Turns(request),
        });
}

/// <summary>What follows the context when an answer is scored.</summary>
public enum ScoreFraming
{
    /// <summary>The service's framing, as Ask uses it: "Question: …\nAnswer:".</summary>
    Question,
    /// <summary>The question text itself, continued by the answer (held-out document probes: the answer continues the probe).</summary>
    Continuation,
}

/// <summary>
/// A scored answer: the Ask result of the same request (documents, cartridges, retrieved chunks, token accounting with
/// the answer as the completion, latency with the forward pass as prefill), the prompt's ids, and −log q of each answer token.
/// </summary>
public sealed record ScoreResult(AskResult Ask, int[] Prompt, double[] TokenNll)
{
    /// <summary>Σ −log q over the answer's tokens.</summary>
    public double Nll { get { double s = 0; foreach (double x in TokenNll) s += x; return s; } }
}
