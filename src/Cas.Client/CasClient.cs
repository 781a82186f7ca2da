using Cas.Engine;
using Cas.Service;
using Cas.Service.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Client;

/// <summary>
/// A refused call whose status has no library exception of its own (UNAUTHENTICATED, RESOURCE_EXHAUSTED, UNAVAILABLE,
/// DEADLINE_EXCEEDED, INTERNAL, …): the status code and the server's message.
/// </summary>
public sealed class CasServiceException(StatusCode status, string message, Exception inner) : CasException(message, inner)
{
    public StatusCode Status { get; } = status;
}

/// <summary>
/// The remote client of `cas serve`: one channel, the four services' stubs, the API key sent with every call, and
/// <see cref="AskAsync"/>, which streams an answer and turns refused calls into the same typed exceptions the
/// in-process <see cref="QueryEngine"/> throws (<see cref="InvalidRequestException"/>, <see cref="NotFoundException"/>,
/// <see cref="FailedPreconditionException"/>, <see cref="NotImplementedFeatureException"/>, and
/// <see cref="OperationCanceledException"/> when the caller cancelled), else <see cref="CasServiceException"/>. Their
/// messages start with the status name (<c>NotFound: no collection 'x'; …</c>).
/// </summary>
public sealed class CasClient : IDisposable
{
    readonly bool _ownsChannel;

    /// <summary>A client of the server at <paramref name="address"/> (http:// for cleartext HTTP/2, https:// for TLS).</summary>
    public CasClient(Uri address, string? apiKey = null)
        : this(GrpcChannel.ForAddress(address ?? throw new ArgumentNullException(nameof(address))), apiKey, ownsChannel: true) => Address = address;

    /// <summary>A client over an existing channel (disposed with this client only when <paramref name="ownsChannel"/>).</summary>
    public CasClient(GrpcChannel channel, string? apiKey = null, bool ownsChannel = false)
    {
        Channel = channel ?? throw new ArgumentNullException(nameof(channel));
        Address = new Uri(channel.Target.Contains("://") ? channel.Target : "http://" + channel.Target);
        _ownsChannel = ownsChannel;
        Headers = apiKey is { Length: > 0 } key ? new Metadata { { ExceptionInterceptor.ApiKeyHeader, key } } : null;
        Query = new QueryService.QueryServiceClient(channel);
        Collections = new CollectionService.CollectionServiceClient(channel);
        Cartridges = new CartridgeService.CartridgeServiceClient(channel);
        Training = new TrainingService.TrainingServiceClient(channel);
    }

    /// <summary>Parses a --server value: an absolute http(s) URL.</summary>
    public static Uri ParseAddress(string? url) =>
        Uri.TryCreate(url, UriKind.Absolute, out var u) && (u.Scheme == Uri.UriSchemeHttp || u.Scheme == Uri.UriSchemeHttps)
            ? u : throw new InvalidRequestException($"--server must be a URL such as http://127.0.0.1:50051, got '{url}'.");

    public GrpcChannel Channel { get; }
    /// <summary>The server's address (for a client made over a channel: http:// and the channel's target).</summary>
    public Uri Address { get; }
    /// <summary>The headers sent with every call (the API key), or null.</summary>
    public Metadata? Headers { get; }
    public QueryService.QueryServiceClient Query { get; }
    public CollectionService.CollectionServiceClient Collections { get; }
    public CartridgeService.CartridgeServiceClient Cartridges { get; }
    public TrainingService.TrainingServiceClient Training { get; }

    /// <summary>
    /// Asks (Ask, AskRag or AskIcl by <paramref name="mode"/>); <paramref name="onText"/> gets the answer's text as the
    /// server streams it. Returns the final <see cref="AskResult"/> (the answer, documents, accounting).
    /// </summary>
    public async Task<AskResult> AskAsync(AskMode mode, AskRequest request, Func<string, Task>? onText, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var options = new CallOptions(Headers, cancellationToken: cancel);
        try
        {
            using var call = mode switch
            {
                AskMode.Rag => Query.AskRag(request, options),
                AskMode.Icl => Query.AskIcl(request, options),
                AskMode.NoContext => Query.AskNoContext(request, options),
                _ => Query.Ask(request, options),
            };
            AskResult? result = null;
            while (await call.ResponseStream.MoveNext(cancel))
            {
                var m = call.ResponseStream.Current;
                if (m.KindCase == AskResponse.KindOneofCase.Delta) { if (onText != null) await onText(m.Delta.Text); }
                else if (m.KindCase == AskResponse.KindOneofCase.Result) result = m.Result;
            }
            return result ?? throw new CasServiceException(StatusCode.Internal, "the server ended the answer without its final result message.", new InvalidOperationException());
        }
        catch (RpcException e) { throw ToException(e, cancel); }
    }

    /// <summary>
    /// The Score RPC: <see cref="QueryEngine.ScoreAsync"/> on the server. −log q of <paramref name="answer"/> (token ids of
    /// the collection's tokenizer) with exactly the context the mode's Ask would use; the same record the engine returns.
    /// </summary>
    public async Task<ScoreResult> ScoreAsync(AskMode mode, AskRequest request, int[] answer, ScoreFraming framing, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request); ArgumentNullException.ThrowIfNull(answer);
        var message = new ScoreRequest { Request = request, Mode = QueryServiceImpl.Mode(mode), Framing = QueryServiceImpl.Framing(framing) };
        message.Answer.Add(answer);
        var r = await Unary(o => Query.ScoreAsync(message, o), cancel);
        return new ScoreResult(r.Result ?? new AskResult(), [.. r.Prompt], [.. r.TokenNll]);
    }

    /// <summary>GetCollection: the collection (model path and fingerprint) and its documents with their cartridges' state.</summary>
    public Task<CollectionDetail> GetCollectionAsync(string name, CancellationToken cancel = default) =>
        Unary(o => Collections.GetCollectionAsync(new GetCollectionRequest { Name = name }, o), cancel);

    /// <summary>GetCartridge: a stored cartridge's info (length p, version, bytes, …).</summary>
    public Task<CartridgeInfo> GetCartridgeAsync(string id, CancellationToken cancel = default) =>
        Unary(o => Cartridges.GetCartridgeAsync(new GetCartridgeRequest { Id = id }, o), cancel);

    /// <summary>GetBudget: the server's budget manager counters (resident bytes, peak, budget, swap-ins).</summary>
    public Task<BudgetStatus> GetBudgetAsync(CancellationToken cancel = default) =>
        Unary(o => Cartridges.GetBudgetAsync(new GetBudgetRequest(), o), cancel);

    /// <summary>GetDocumentText: a document's text as added (its streamed pieces joined).</summary>
    public async Task<string> GetDocumentTextAsync(string collection, string documentId, CancellationToken cancel = default)
    {
        try
        {
            using var call = Collections.GetDocumentText(new GetDocumentTextRequest { Collection = collection, DocumentId = documentId }, new CallOptions(Headers, cancellationToken: cancel));
            var text = new System.Text.StringBuilder();
            while (await call.ResponseStream.MoveNext(cancel)) text.Append(call.ResponseStream.Current.Text);
            return text.ToString();
        }
        catch (RpcException e) { throw ToException(e, cancel); }
    }

    async Task<T> Unary<T>(Func<CallOptions, AsyncUnaryCall<T>> call, CancellationToken cancel)
    {
        try
        {
            using var c = call(new CallOptions(Headers, cancellationToken: cancel));
            return await c.ResponseAsync;
        }
        catch (RpcException e) { throw ToException(e, cancel); }
    }

    /// <summary>The typed exception for a refused call (see the class summary).</summary>
    public static Exception ToException(RpcException e, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(e);
        string detail = $"{e.StatusCode}: {e.Status.Detail}";
        return e.StatusCode switch
        {
            StatusCode.Cancelled when cancel.IsCancellationRequested => new OperationCanceledException(detail, e, cancel),
            StatusCode.InvalidArgument => new InvalidRequestException(detail),
            StatusCode.NotFound => new NotFoundException(detail),
            StatusCode.FailedPrecondition => new FailedPreconditionException(detail),
            StatusCode.Unimplemented => new NotImplementedFeatureException(detail),
            _ => new CasServiceException(e.StatusCode, detail, e),
        };
    }

    public void Dispose()
    {
        if (_ownsChannel) Channel.Dispose();
    }
}
