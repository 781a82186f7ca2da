using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Service.V1;
using Cas.Tests.Common;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Service.Tests;

/// <summary>
/// One server on 127.0.0.1 (port 0) over a fresh data folder with stories260K as its model, and a collection
/// "stories" of three short documents; "cat" and "ship" get first-k cartridges (p = 16) imported over gRPC, "moon" has
/// none. Tests that need ../shared skip when it is absent.
/// </summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public const string Collection = StoriesCollection.Name;
    public const int CartridgeTokens = StoriesCollection.CartridgeTokens;
    public static readonly (string Id, string Text)[] Docs = StoriesCollection.Docs;

    public string? ModelPath, TokenizerPath;
    public string DataDir = "";
    public CasServer? Server;
    public GrpcChannel? Channel;
    public Model? Model;
    public ITokenizer? Tokenizer;
    public readonly Dictionary<string, string> CartridgeFiles = new();

    public async ValueTask InitializeAsync()
    {
        var model = Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
        var tok = Path.Combine(TestPaths.Shared, "models", "stories260K", "tok512.bin");
        if (!File.Exists(model) || !File.Exists(tok)) return;
        ModelPath = model; TokenizerPath = tok;
        DataDir = Directory.CreateTempSubdirectory("cas-service-test-").FullName;
        Server = await CasServer.StartAsync(Options(DataDir));
        Channel = GrpcChannel.ForAddress(Server.Address);
        Model = Server.State.Model(model, tok).Model;
        Tokenizer = Server.State.Model(model, tok).Tokenizer;

        foreach (var (id, file) in await StoriesCollection.CreateAsync(Channel.CreateCallInvoker(), Model, Tokenizer, DataDir)) CartridgeFiles[id] = file;
    }

    public CasServerOptions Options(string dataDir) => new()
    {
        DataDir = dataDir, Port = 0, ModelPath = ModelPath, TokenizerPath = TokenizerPath,
        ResidentBytes = 64L << 20, HostBytes = 64L << 20, LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
        MaxMessageBytes = 1 << 20,
    };

    /// <summary>A server of its own over <paramref name="dir"/> with stories260K (skips when ../shared is absent).</summary>
    public static Task<CasServer> StartScratch(string dir, Func<CasServerOptions, CasServerOptions> tweak)
    {
        var model = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        return CasServer.StartAsync(tweak(new CasServerOptions
        {
            DataDir = dir, Port = 0, ModelPath = model, TokenizerPath = Path.Combine(Path.GetDirectoryName(model)!, "tok512.bin"),
            LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
        }));
    }

    public static void MakeCartridge(Model model, ITokenizer tokenizer, string text, string file) => StoriesCollection.MakeCartridge(model, tokenizer, text, file);

    public static Task<AddDocumentsResponse> AddDocs(CollectionService.CollectionServiceClient client, string collection, IEnumerable<(string Id, string Text)> docs) =>
        StoriesCollection.AddDocs(client, collection, docs);

    public static Task<CartridgeInfo> Import(CartridgeService.CartridgeServiceClient client, string file, string collection, string document) =>
        StoriesCollection.Import(client, file, collection, document);

    public void Require()
    {
        if (Server == null) Assert.Skip("needs ../shared/models/stories260K (stories260K.bin, tok512.bin) beside the repository; skipped.");
    }

    public QueryService.QueryServiceClient Query => new(Channel);
    public CollectionService.CollectionServiceClient Collections => new(Channel);
    public CartridgeService.CartridgeServiceClient Cartridges => new(Channel);
    public TrainingService.TrainingServiceClient Training => new(Channel);

    /// <summary>Runs a streaming ask to the end: the deltas joined, and the final result.</summary>
    public static async Task<(string Streamed, AskResult Result)> Collect(AsyncServerStreamingCall<AskResponse> call)
    {
        var text = new System.Text.StringBuilder();
        AskResult? result = null;
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            Assert.Null(result); // nothing after the result
            if (m.KindCase == AskResponse.KindOneofCase.Delta) text.Append(m.Delta.Text);
            else result = m.Result;
        }
        Assert.NotNull(result);
        return (text.ToString(), result!);
    }

    /// <summary>Waits until no cartridge is pinned and no sequence is being decoded (the work of a call has been let go).</summary>
    public async Task WaitIdle()
    {
        var host = Server!.State.Model(ModelPath!, TokenizerPath!);
        for (int i = 0; i < 200; i++)
        {
            if (Server.State.Budget.Metrics().Pinned == 0 && host.Scheduler.Active == 0) return;
            await Task.Delay(25);
        }
        Assert.Fail($"still busy after 5 s: {Server.State.Budget.Metrics()} active_sequences={host.Scheduler.Active}");
    }

    public async ValueTask DisposeAsync()
    {
        Channel?.Dispose();
        if (Server != null) await Server.DisposeAsync();
        if (DataDir.Length > 0) try { Directory.Delete(DataDir, true); } catch (IOException) { }
    }
}
