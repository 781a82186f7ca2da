using System.Runtime.CompilerServices;
using System.Text;
using System.Threading.Channels;
using Cas.Engine;
using Cas.Service;
using Cas.Service.V1;
using Microsoft.Extensions.AI;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Cas.Client;

/// <summary>How a <see cref="CasChatClient"/> asks, unless a call's <see cref="ChatOptions"/> says otherwise.</summary>
public sealed record CasChatOptions
{
    /// <summary>Cartridges (Ask), RAG (AskRag) or the documents in context (AskIcl). Per call:
    /// <c>ChatOptions.AdditionalProperties["cas_mode"] = "cas" | "rag" | "icl"</c>.</summary>
    public AskMode Mode { get; init; } = AskMode.Cartridges;
    /// <summary>Most answer tokens; 0: the service's default (128). Per call: <see cref="ChatOptions.MaxOutputTokens"/>.</summary>
    public int MaxTokens { get; init; }
    /// <summary>0 = greedy. Per call: <see cref="ChatOptions.Temperature"/> (also TopP, TopK, Seed).</summary>
    public float Temperature { get; init; }
}

/// <summary>
/// A <c>Microsoft.Extensions.AI</c> <see cref="IChatClient"/> over one collection: each call sends the last user
/// message as the question (retrieval uses it alone) and the earlier messages as the conversation's history, which the
/// service renders with the model's chat template (plain <c>User: …\nAssistant:</c> turns for a base model). Answers
/// come from an <see cref="ICasAsker"/>: the in-process engine (<see cref="InProcess"/>), a server
/// (<see cref="Remote"/>) or cartridge files. Semantic Kernel can use it as its chat service
/// (<c>chatClient.AsChatCompletionService()</c>); <see cref="GetService"/> answers <see cref="ChatClientMetadata"/>.
/// <para>Accounting: <see cref="ChatResponse.Usage"/> (input = prompt text tokens, output = answer tokens, and
/// <c>cartridge_slots</c>, <c>kv_bytes_attended</c> in AdditionalCounts) and
/// <see cref="ChatResponse.AdditionalProperties"/>: <see cref="ResultKey"/> (the whole <see cref="AskResult"/>) and
/// <see cref="DocumentsKey"/> (the ids of the documents used). A streamed answer's last update carries the same.
/// </para>
/// Refused requests throw the service's typed exceptions (<see cref="InvalidRequestException"/>,
/// <see cref="NotFoundException"/>, <see cref="FailedPreconditionException"/>, …; remote ones as <see cref="CasClient"/> maps them).
/// </summary>
public sealed class CasChatClient : IChatClient
{
    /// <summary>Key of the <see cref="AskResult"/> in a response's AdditionalProperties.</summary>
    public const string ResultKey = "cas_result";
    /// <summary>Key of the used documents' ids (string[]) in a response's AdditionalProperties.</summary>
    public const string DocumentsKey = "cas_documents";
    /// <summary>ChatOptions.AdditionalProperties key choosing the mode of one call: "cas" (or "cartridges"), "rag", "icl".</summary>
    public const string ModeKey = "cas_mode";

    readonly ICasAsker _asker;
    readonly string _collection;
    readonly CasChatOptions _options;
    readonly ChatClientMetadata _metadata;

    public CasChatClient(ICasAsker asker, string collection, CasChatOptions? options = null)
    {
        _asker = asker ?? throw new ArgumentNullException(nameof(asker));
        _collection = collection ?? throw new ArgumentNullException(nameof(collection));
        _options = options ?? new CasChatOptions();
        _metadata = new ChatClientMetadata("cas", asker.Address, collection.Length > 0 ? collection : "cartridges");
    }

    /// <summary>Answers from this process: the <see cref="QueryEngine"/> the gRPC service also calls.</summary>
    public static CasChatClient InProcess(QueryEngine engine, string collection, CasChatOptions? options = null) =>
        new(new EngineAsker(engine ?? throw new ArgumentNullException(nameof(engine))), collection, options);

    /// <summary>Answers from a server through <paramref name="client"/> (not disposed with this one).</summary>
    public static CasChatClient Remote(CasClient client, string collection, CasChatOptions? options = null) =>
        new(new RemoteAsker(client ?? throw new ArgumentNullException(nameof(client))), collection, options);

    /// <summary>The collection asked.</summary>
    public string Collection => _collection;

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (mode, request) = ToRequest(messages, options);
        var result = await _asker.AskAsync(mode, request, _ => Task.CompletedTask, cancellationToken);
        string id = NewId();
        var response = new ChatResponse(new AiChatMessage(ChatRole.Assistant, result.Answer) { MessageId = id })
        {
            ResponseId = id, ModelId = _metadata.DefaultModelId, FinishReason = Finish(result), Usage = Usage(result),
            AdditionalProperties = Properties(result), CreatedAt = DateTimeOffset.UtcNow,
        };
        return response;
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (mode, request) = ToRequest(messages, options);
        string id = NewId();
        var pieces = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var task = _asker.AskAsync(mode, request, t => { pieces.Writer.TryWrite(t); return Task.CompletedTask; }, stop.Token);
        _ = task.ContinueWith(_ => pieces.Writer.TryComplete(), TaskScheduler.Default);
        try
        {
            await foreach (var piece in pieces.Reader.ReadAllAsync(CancellationToken.None))
                yield return new ChatResponseUpdate(ChatRole.Assistant, piece) { ResponseId = id, MessageId = id, ModelId = _metadata.DefaultModelId };
            var result = await task; // a refused call throws here, typed
            yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(Usage(result))])
            {
                ResponseId = id, MessageId = id, ModelId = _metadata.DefaultModelId, FinishReason = Finish(result),
                AdditionalProperties = Properties(result), CreatedAt = DateTimeOffset.UtcNow,
            };
        }
        finally
        {
            // The consumer stopped early (or the call failed): stop the decode and let it release what it holds.
            stop.Cancel();
            try { await task; } catch { /* already reported to the consumer, or nobody is listening any more */ }
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey != null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType.IsInstanceOfType(this)) return this;
        if (serviceType.IsInstanceOfType(_asker)) return _asker;
        return null;
    }

    public void Dispose() { }

    /// <summary>
    /// The request for a conversation: the last message (a user message) is the question, the earlier ones the history
    /// (system messages joined into one first turn); tool messages and calls are refused (the model has no tools).
    /// </summary>
    public (AskMode Mode, AskRequest Request) ToRequest(IEnumerable<AiChatMessage> messages, ChatOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = messages.ToList();
        if (list.Count == 0 || list[^1].Role != ChatRole.User)
            throw new InvalidRequestException("the conversation must end with a user message: it is the question asked.");
        var system = new StringBuilder();
        var turns = new List<ChatTurn>();
        for (int i = 0; i < list.Count - 1; i++)
        {
            var m = list[i];
            if (m.Role == ChatRole.System) { if (system.Length > 0) system.Append('\n'); system.Append(m.Text); }
            else if (m.Role == ChatRole.User) turns.Add(new ChatTurn { Role = "user", Content = m.Text });
            else if (m.Role == ChatRole.Assistant) turns.Add(new ChatTurn { Role = "assistant", Content = m.Text });
            else throw new InvalidRequestException($"message {i} has role '{m.Role}'; this model answers system, user and assistant messages only (no tools).");
        }
        var request = new AskRequest
        {
            Collection = _collection, Question = list[^1].Text, Chat = true,
            MaxTokens = options?.MaxOutputTokens ?? _options.MaxTokens, Temperature = options?.Temperature ?? _options.Temperature,
            TopP = options?.TopP ?? 0, TopK = options?.TopK ?? 0, Seed = options?.Seed is long s ? unchecked((ulong)s) : 0,
        };
        if (system.Length > 0) request.History.Add(new ChatTurn { Role = "system", Content = system.ToString() });
        request.History.Add(turns);
        var mode = _options.Mode;
        if (options?.AdditionalProperties?.TryGetValue(ModeKey, out var m2) == true && m2 != null) mode = ParseMode(m2.ToString());
        return (mode, request);
    }

    /// <summary>"cas" (or "cartridges"), "rag", "icl".</summary>
    public static AskMode ParseMode(string? name) => (name ?? "").Trim().ToLowerInvariant() switch
    {
        "cas" or "cartridges" or "ask" => AskMode.Cartridges,
        "rag" => AskMode.Rag,
        "icl" => AskMode.Icl,
        _ => throw new InvalidRequestException($"unknown mode '{name}'; use cas, rag or icl."),
    };

    static string NewId() => "cas-" + Guid.NewGuid().ToString("N")[..16];

    static ChatFinishReason Finish(AskResult r) =>
        r.FinishReason == Service.V1.FinishReason.Stop ? ChatFinishReason.Stop : ChatFinishReason.Length;

    static UsageDetails Usage(AskResult r) => new()
    {
        InputTokenCount = r.Tokens.PromptTokens, OutputTokenCount = r.Tokens.CompletionTokens,
        TotalTokenCount = r.Tokens.PromptTokens + r.Tokens.CompletionTokens,
        AdditionalCounts = new() { ["cartridge_slots"] = r.Tokens.CartridgeSlots, ["kv_bytes_attended"] = r.Tokens.KvBytesAttended },
    };

    static AdditionalPropertiesDictionary Properties(AskResult r) => new()
    {
        [ResultKey] = r, [DocumentsKey] = r.Documents.Select(d => d.DocumentId).ToArray(),
    };
}

/// <summary>Reading a <see cref="CasChatClient"/>'s accounting back.</summary>
public static class CasChatResponses
{
    /// <summary>
    /// The service's result of the answer (documents, cartridges, tokens, latency), or null for another client's
    /// response. Found on the response, or, for updates merged with <c>ToChatResponse()</c> (which keeps an update's
    /// properties on the message it builds), on its last message.
    /// </summary>
    public static AskResult? AskResult(this ChatResponse response)
    {
        ArgumentNullException.ThrowIfNull(response);
        if (response.AdditionalProperties?.TryGetValue(CasChatClient.ResultKey, out var r) == true && r is AskResult a) return a;
        return response.Messages.Count > 0 && response.Messages[^1].AdditionalProperties?.TryGetValue(CasChatClient.ResultKey, out var m) == true ? m as AskResult : null;
    }
}
