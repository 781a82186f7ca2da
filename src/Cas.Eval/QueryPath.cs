using Cas.Client;
using Cas.Engine;
using Cas.Service;
using Cas.Service.V1;

namespace Cas.Eval;

/// <summary>
/// The query path an evaluation runs its questions through: the service's <see cref="QueryEngine"/> in this process
/// (<see cref="InProcessQueryPath"/>), or a running server over gRPC (<see cref="RemoteQueryPath"/>). Both answer with the same records, so the
/// evaluator and its report do not know which one ran.
/// </summary>
public interface IQueryPath
{
    /// <summary><see cref="QueryEngine.ScoreAsync"/>: −log q of <paramref name="answer"/> with exactly the context Ask would use.</summary>
    Task<ScoreResult> ScoreAsync(AskMode mode, AskRequest request, int[] answer, ScoreFraming framing, CancellationToken cancel);

    /// <summary><see cref="QueryEngine.AskAsync"/>: a decoded answer with its accounting and latency split.</summary>
    Task<AskResult> AskAsync(AskMode mode, AskRequest request, CancellationToken cancel);

    /// <summary>
    /// The one fresh cartridge of a monolithic-baseline collection: its document and KV slots.
    /// <see cref="InvalidRequestException"/> when the collection does not hold exactly one document with a fresh cartridge.
    /// </summary>
    Task<(string DocumentId, int Slots)> MonoCartridgeAsync(string collection, CancellationToken cancel);

    /// <summary>The budget manager's peak resident bytes and its budget, where the questions ran.</summary>
    Task<(long PeakResidentBytes, long ResidentBudget)> ResidentAsync(CancellationToken cancel);
}

/// <summary>The query path in this process: a <see cref="QueryEngine"/> over <paramref name="state"/> (what the gRPC QueryService calls).</summary>
public sealed class InProcessQueryPath(ServiceState state) : IQueryPath
{
    readonly QueryEngine _engine = new(state);

    public Task<ScoreResult> ScoreAsync(AskMode mode, AskRequest request, int[] answer, ScoreFraming framing, CancellationToken cancel) =>
        _engine.ScoreAsync(mode, request, answer, framing, cancel);

    public Task<AskResult> AskAsync(AskMode mode, AskRequest request, CancellationToken cancel) =>
        _engine.AskAsync(mode, request, _ => Task.CompletedTask, cancel);

    public Task<(string DocumentId, int Slots)> MonoCartridgeAsync(string collection, CancellationToken cancel)
    {
        var mono = state.Catalog.Status(state.Collection(collection).Name, state.Store);
        if (mono.Count != 1 || mono[0].State != Cas.Collections.CartridgeState.Fresh) throw NotMono(collection, mono.Count);
        return Task.FromResult((mono[0].Document.DocumentId, mono[0].Cartridge!.Length));
    }

    /// <summary>The refusal of a mono collection that is not one document with a fresh cartridge (in process or remote).</summary>
    internal static InvalidRequestException NotMono(string collection, int documents) =>
        new($"the mono collection '{collection}' must hold exactly one document with a fresh cartridge (it has {documents}; train it with `cas collection train {collection}`).");

    public Task<(long PeakResidentBytes, long ResidentBudget)> ResidentAsync(CancellationToken cancel)
    {
        var m = state.Budget.Metrics();
        return Task.FromResult((m.PeakResidentBytes, m.ResidentBudget));
    }
}

/// <summary>
/// The query path of a running `cas serve`, over <see cref="CasClient"/>: Score → the Score RPC, Ask → Ask / AskRag /
/// AskIcl / AskNoContext by mode, the mono cartridge → GetCollection + GetCartridge, resident figures → GetBudget (the
/// server's budget manager: what its questions made resident). Refused calls arrive as the same typed exceptions the
/// in-process engine throws, so the evaluator counts the same failures.
/// </summary>
public sealed class RemoteQueryPath(CasClient client) : IQueryPath
{
    public Task<ScoreResult> ScoreAsync(AskMode mode, AskRequest request, int[] answer, ScoreFraming framing, CancellationToken cancel) =>
        client.ScoreAsync(mode, request, answer, framing, cancel);

    public Task<AskResult> AskAsync(AskMode mode, AskRequest request, CancellationToken cancel) =>
        client.AskAsync(mode, request, null, cancel);

    public async Task<(string DocumentId, int Slots)> MonoCartridgeAsync(string collection, CancellationToken cancel)
    {
        var mono = (await client.GetCollectionAsync(collection, cancel)).Documents;
        if (mono.Count != 1 || mono[0].CartridgeState != Cas.Service.V1.CartridgeState.Fresh) throw InProcessQueryPath.NotMono(collection, mono.Count);
        var cartridge = await client.GetCartridgeAsync(mono[0].CartridgeId, cancel);
        return (mono[0].Id, cartridge.Length);
    }

    public async Task<(long PeakResidentBytes, long ResidentBudget)> ResidentAsync(CancellationToken cancel)
    {
        var b = await client.GetBudgetAsync(cancel);
        return (b.PeakResidentBytes, b.ResidentBudget);
    }
}
