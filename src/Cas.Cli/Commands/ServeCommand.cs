using System.CommandLine;
using Cas.Service;

namespace Cas.Cli.Commands;

/// <summary>`cas serve`: the gRPC service (protos/cas/v1) over the data folder, until Ctrl+C or SIGTERM.</summary>
static class ServeCommand
{
    public static Command Create()
    {
        var dataDir = StoreCommand.DataDirOption();
        var host = new Option<string>("--host") { Description = "Address to listen on (an IP; 0.0.0.0 for every interface).", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port to listen on (0: any free port, printed on stdout).", DefaultValueFactory = _ => 50051 };
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var apiKey = ApiKeyOption();
        var tlsCert = new Option<string?>("--tls-cert") { Description = "PKCS#12 certificate file: serve HTTP/2 over TLS instead of cleartext." };
        var residentMb = Options.ResidentMb(2048);
        var weightStorage = Options.WeightStorage();
        var sequenceKvMb = new Option<long>("--sequence-kv-mb")
        {
            Description = "MiB the decoding sequences' own KV caches may hold together (cartridges count once, in --resident-mb); questions wait for room.",
            DefaultValueFactory = _ => 2048,
        };
        var cmd = new Command("serve", "Serve collections, cartridges and questions over gRPC (cas.v1; health and reflection included).")
            { dataDir, host, port, model, tokenizer, apiKey, tlsCert, residentMb, weightStorage, sequenceKvMb };
        // System.CommandLine turns Ctrl+C / SIGTERM into the action's cancellation token; the server stops on it.
        cmd.SetAction((pr, stop) => Task.FromResult(Cli.Run(() =>
        {
            string modelPath = Cli.ResolveModelPath(pr.GetValue(model));
            var options = new CasServerOptions
            {
                DataDir = pr.GetValue(dataDir)!, Host = pr.GetValue(host)!, Port = pr.GetValue(port),
                ModelPath = Path.GetFullPath(modelPath), TokenizerPath = Path.GetFullPath(Cli.ResolveTokenizerPath(modelPath, pr.GetValue(tokenizer))),
                ApiKey = pr.GetValue(apiKey), TlsCertificatePath = pr.GetValue(tlsCert),
                ResidentBytes = pr.GetValue(residentMb) << 20, WeightStorage = Options.ParseWeightStorage(pr.GetValue(weightStorage)),
                SequenceKvBytes = Math.Max(1, pr.GetValue(sequenceKvMb)) << 20,
            };
            var server = CasServer.StartAsync(options).GetAwaiter().GetResult();
            try
            {
                Console.WriteLine($"listening={server.Address}");
                server.WaitForShutdownAsync(stop).GetAwaiter().GetResult();
            }
            finally { server.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
            return 0;
        })));
        return cmd;
    }

    public static Option<string?> ApiKeyOption() => new("--api-key")
    {
        Description = "API key: serve only calls that send it (x-api-key header); as a client, the key to send.",
    };
}
