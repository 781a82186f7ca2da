using System.Diagnostics;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Service;
using Cas.Service.V1;

namespace Cas.Client;

/// <summary>
/// Whatever answers an <see cref="AskRequest"/>: the in-process <see cref="QueryEngine"/>, a remote server
/// (<see cref="CasClient"/>), or cartridge files loaded in this process. <paramref name="onText"/> gets the answer's
/// text as it is decoded; the result is the whole answer with its documents and accounting.
/// </summary>
public interface ICasAsker
{
    Task<AskResult> AskAsync(AskMode mode, AskRequest request, Func<string, Task> onText, CancellationToken cancel);

    /// <summary>Where answers come from, for <see cref="Microsoft.Extensions.AI.ChatClientMetadata"/>: null in process.</summary>
    Uri? Address { get; }
}

/// <summary>The in-process engine: no gRPC, the same code the QueryService calls.</summary>
public sealed class EngineAsker(QueryEngine engine) : ICasAsker
{
    public Task<AskResult> AskAsync(AskMode mode, AskRequest request, Func<string, Task> onText, CancellationToken cancel) =>
        engine.AskAsync(mode, request, onText, cancel);

    public Uri? Address => null;
}

/// <summary>A running `cas serve`.</summary>
public sealed class RemoteAsker(CasClient client) : ICasAsker
{
    public Task<AskResult> AskAsync(AskMode mode, AskRequest request, Func<string, Task> onText, CancellationToken cancel) =>
        client.AskAsync(mode, request, onText, cancel);

    public Uri? Address => client.Address;
}

/// <summary>
/// Cartridge files composed in front of a model loaded in this process, no collection and no retrieval (`cas chat
/// --cartridge`): the question and history go through <see cref="Prompting"/> with the chat template (as the service
/// formats a chat question), decoded by <see cref="Completion.Run"/>. Only <see cref="AskMode.Cartridges"/>; the
/// request's collection, retrieval and document fields are ignored. Calls run one at a time.
/// </summary>
public sealed class CartridgeAsker : ICasAsker
{
    readonly Model _model;
    readonly ITokenizer _tokenizer;
    readonly string? _tokenizerPath;
    readonly KvPrefix _prefix;
    readonly IReadOnlyList<(string Name, int Slots)> _parts;
    readonly SemaphoreSlim _gate = new(1, 1);

    /// <param name="cartridges">The cartridges in slot order (checked against the model by whoever loaded them), each with
    /// the name reported for it (e.g. its file).</param>
    public CartridgeAsker(Model model, ITokenizer tokenizer, string? tokenizerPath, IReadOnlyList<(string Name, KvPrefix Prefix)> cartridges)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        ArgumentNullException.ThrowIfNull(cartridges);
        if (cartridges.Count == 0) throw new InvalidRequestException("give at least one cartridge.");
        _prefix = cartridges.Count == 1 ? cartridges[0].Prefix : KvPrefix.Concat(cartridges.Select(c => c.Prefix).ToList());
        _parts = cartridges.Select(c => (c.Name, c.Prefix.Length)).ToList();
        _tokenizerPath = tokenizerPath;
    }

    public Uri? Address => null;

    public async Task<AskResult> AskAsync(AskMode mode, AskRequest request, Func<string, Task> onText, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request); ArgumentNullException.ThrowIfNull(onText);
        if (mode != AskMode.Cartridges) throw new InvalidRequestException("RAG and ICL need a collection to retrieve from; with cartridge files only cartridge answers are possible.");
        if (string.IsNullOrWhiteSpace(request.Question)) throw new InvalidRequestException("the question is empty; ask something.");
        if (request.MaxTokens < 0) throw new InvalidRequestException("max_tokens must not be negative (0 takes the default).");
        var completion = new CompletionRequest(request.Question.Trim())
        {
            Chat = true, TokenizerPath = _tokenizerPath, Prefix = _prefix,
            History = QueryEngine.Turns(request),
            MaxTokens = request.MaxTokens == 0 ? QueryEngine.DefaultMaxTokens : request.MaxTokens,
            Sampling = QueryEngine.Sampling(request),
        };
        await _gate.WaitAsync(cancel);
        try
        {
            long t0 = Stopwatch.GetTimestamp();
            var text = new System.Text.StringBuilder();
            // The engine's generator is synchronous: run it off the caller's thread, the text handed on as it comes.
            var r = await Task.Run(() => Completion.Run(_model, _tokenizer, completion, t =>
            {
                text.Append(t);
                onText(t).GetAwaiter().GetResult();
            }, cancel), cancel);
            var result = new AskResult
            {
                Answer = text.ToString(),
                FinishReason = QueryEngine.Finish(r.Finish),
                Tokens = QueryEngine.Accounting(_model.Config, r.PromptTokens, _prefix.Length, r.Tokens.Length),
                Latency = new LatencyBreakdown { TotalMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds },
            };
            foreach (var (name, slots) in _parts) result.Documents.Add(new UsedDocument { DocumentId = name, CartridgeId = name, CartridgeSlots = slots });
            return result;
        }
        finally { _gate.Release(); }
    }
}
