using JobState = Cas.Collections.JobState;
using Cas.Service;
using Cas.Service.V1;
using Cas.Tests.Common;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;

namespace Cas.Interop.Tests;

/// <summary>
/// One in-process server for the outside clients: stories260K on 127.0.0.1 (port 0), an API key, a 1 MiB message limit,
/// the <see cref="StoriesCollection"/> ("cat" and "ship" with cartridges, "moon" without), a collection "untrained"
/// with no cartridge at all, and two training-job rows in the catalog (one done, one running) for the read RPCs.
/// Start-up and teardown are bounded: a server that does not stop within <see cref="StopLimit"/> fails the run with a
/// message instead of hanging it. Skips (through <see cref="Require"/>) when ../shared is absent.
/// </summary>
public sealed class InteropServer : IAsyncLifetime
{
    public const string Untrained = "untrained";
    public static readonly TimeSpan StopLimit = TimeSpan.FromSeconds(30);

    public readonly string ApiKey = "interop-" + Guid.NewGuid().ToString("N");
    public const int MaxMessageBytes = 1 << 20;
    public string DataDir = "";
    public CasServer? Server;
    public string ModelPath = "", TokenizerPath = "";
    public long DoneJob, RunningJob;
    GrpcChannel? _channel;
    CallInvoker? _invoker;

    /// <summary>host:port for the clients.</summary>
    public string Target => $"{Server!.Address.Host}:{Server.Address.Port}";

    /// <summary>Calls from .NET carry the API key.</summary>
    public CallInvoker Invoker => _invoker!;

    public async ValueTask InitializeAsync()
    {
        // Bounded like the teardown: a set-up that stalls fails the class's tests instead of hanging the run.
        await SetUp().WaitAsync(TimeSpan.FromSeconds(120));
    }

    async Task SetUp()
    {
        ModelPath = Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
        TokenizerPath = Path.Combine(TestPaths.Shared, "models", "stories260K", "tok512.bin");
        if (!File.Exists(ModelPath) || !File.Exists(TokenizerPath)) return;
        DataDir = Directory.CreateTempSubdirectory("cas-interop-test-").FullName;
        Server = await CasServer.StartAsync(new CasServerOptions
        {
            DataDir = DataDir, Port = 0, ModelPath = ModelPath, TokenizerPath = TokenizerPath, ApiKey = ApiKey,
            MaxMessageBytes = MaxMessageBytes, ResidentBytes = 64L << 20, HostBytes = 64L << 20,
            LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
        });
        _channel = GrpcChannel.ForAddress(Server.Address);
        _invoker = _channel.CreateCallInvoker().Intercept(m => { m.Add(ExceptionInterceptor.ApiKeyHeader, ApiKey); return m; });
        var host = Server.State.Model(ModelPath, TokenizerPath);
        await StoriesCollection.CreateAsync(_invoker, host.Model, host.Tokenizer, DataDir);

        var collections = new CollectionService.CollectionServiceClient(_invoker);
        await collections.CreateCollectionAsync(new CreateCollectionRequest { Name = Untrained, ChunkTokens = 16 });
        await StoriesCollection.AddDocs(collections, Untrained,
            [("dog", "Max the dog ran in the park. He found a stick and brought it to his friend Tim.")]);

        var catalog = Server.State.Catalog;
        DoneJob = catalog.CreateJob(StoriesCollection.Name, "cas", "{}", ["cat"], 10);
        catalog.UpdateJobDocument(DoneJob, "cat", JobState.Done, 10, loss: 0.5, cartridgeVersion: 1);
        catalog.FinishJob(DoneJob, JobState.Done);
        RunningJob = catalog.CreateJob(StoriesCollection.Name, "cas", "{}", ["ship"], 10);
        catalog.UpdateJobDocument(RunningJob, "ship", JobState.Running, 3, loss: 1.25);
    }

    public void Require()
    {
        if (Server == null) Assert.Skip("needs ../shared/models/stories260K (stories260K.bin, tok512.bin) beside the repository; skipped.");
    }

    public QueryService.QueryServiceClient Query => new(Invoker);

    /// <summary>The cartridge id of a document of the stories collection.</summary>
    public string CartridgeId(string document) =>
        Server!.State.Catalog.Documents(StoriesCollection.Name).First(d => d.DocumentId == document).CartridgeId;

    /// <summary>Waits (at most 10 s) until no cartridge is pinned and no sequence is being decoded.</summary>
    public async Task WaitIdle()
    {
        var host = Server!.State.Model(ModelPath, TokenizerPath);
        var until = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < until)
        {
            if (Server.State.Budget.Metrics().Pinned == 0 && host.Scheduler.Active == 0) return;
            await Task.Delay(25);
        }
        Assert.Fail($"still busy 10 s after the client went: {Server.State.Budget.Metrics()} active_sequences={host.Scheduler.Active}");
    }

    /// <summary>A question through Grpc.Net.Client, to the end: the deltas joined and the result.</summary>
    public async Task<(string Streamed, AskResult Result)> Ask(Func<AskRequest, CallOptions, AsyncServerStreamingCall<AskResponse>> method, AskRequest request)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        using var call = method(request, new CallOptions(deadline: DateTime.UtcNow.AddSeconds(30), cancellationToken: cts.Token));
        var text = new System.Text.StringBuilder();
        AskResult? result = null;
        await foreach (var m in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            if (m.KindCase == AskResponse.KindOneofCase.Delta) text.Append(m.Delta.Text);
            else result = m.Result;
        }
        Assert.NotNull(result);
        return (text.ToString(), result!);
    }

    public async ValueTask DisposeAsync()
    {
        _channel?.Dispose();
        if (Server != null)
        {
            // CasServer gives in-flight calls 5 s and then cancels them; if stopping still does not end (a decode thread
            // that does not leave, Kestrel waiting on a stream), fail loudly instead of hanging the test run.
            var stop = Server.DisposeAsync().AsTask();
            if (await Task.WhenAny(stop, Task.Delay(StopLimit)) != stop)
                throw new TimeoutException($"the interop test server did not stop within {StopLimit.TotalSeconds:0} s (left running; data in {DataDir}).");
            await stop;
        }
        if (DataDir.Length > 0) try { Directory.Delete(DataDir, true); } catch (IOException) { }
    }
}
