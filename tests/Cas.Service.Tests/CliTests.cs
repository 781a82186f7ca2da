using System.Diagnostics;
using Cas.Service.V1;
using Cas.Tests.Common;
using Grpc.Net.Client;

namespace Cas.Service.Tests;

/// <summary>`cas serve` and `cas ask` as processes: the server prints its address, the client streams an answer.</summary>
public sealed class CliTests
{
    [Fact]
    public async Task Serve_then_ask_with_cartridges_and_with_rag()
    {
        var model = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        var dir = Directory.CreateTempSubdirectory("cas-serve-cli-").FullName;
        using var serve = CasCli.Start("serve", "--data-dir", dir, "--port", "0");
        var serverLog = serve.StandardError.ReadToEndAsync(); // drained, so the server never blocks on a full pipe
        try
        {
            var line = await serve.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
            Assert.StartsWith("listening=http://127.0.0.1:", line);
            string url = line!["listening=".Length..];

            using (var channel = GrpcChannel.ForAddress(url))
            {
                var collections = new CollectionService.CollectionServiceClient(channel);
                await collections.CreateCollectionAsync(new CreateCollectionRequest { Name = "cli" });
                await ServerFixture.AddDocs(collections, "cli", ServerFixture.Docs);
                // A first-k cartridge of "cat", made here with the same model, imported over gRPC.
                var tokenizer = Cas.Engine.Tokenizers.TokenizerLoader.Load(Path.Combine(Path.GetDirectoryName(model)!, "tok512.bin"));
                var m = Cas.Engine.Models.ModelLoader.Load(model);
                var file = Path.Combine(dir, "cat.safetensors");
                ServerFixture.MakeCartridge(m, tokenizer, ServerFixture.Docs[0].Text, file);
                await ServerFixture.Import(new CartridgeService.CartridgeServiceClient(channel), file, "cli", "cat");
            }

            var (rc, stdout, stderr) = CasCli.Run("ask", "the cat and the red ball", "--collection", "cli", "--server", url, "--max-tokens", "12");
            Assert.True(rc == 0, stderr);
            Assert.False(string.IsNullOrWhiteSpace(stdout));
            Assert.Contains("cartridge=cli/cat version=1 slots=16", stderr);
            Assert.Contains("completion_tokens=", stderr);

            (rc, _, stderr) = CasCli.Run("ask", "the moon", "--collection", "cli", "--server", url, "--rag", "--max-tokens", "4");
            Assert.True(rc == 0, stderr);
            Assert.Contains("document=moon", stderr);
            Assert.Contains("cartridge_slots=0", stderr);

            // Dense retrieval: a verbatim sentence of "moon" retrieves it first.
            (rc, _, stderr) = CasCli.Run("ask", "The moon was round and bright.", "--collection", "cli", "--server", url, "--rag", "--retrieval", "dense", "--max-tokens", "2");
            Assert.True(rc == 0, stderr);
            Assert.StartsWith("document=moon ", stderr.Split('\n').First(l => l.StartsWith("document=")));
            (rc, _, stderr) = CasCli.Run("ask", "the moon", "--collection", "cli", "--server", url, "--retrieval", "nonsense");
            Assert.NotEqual(0, rc);
            Assert.Contains("nonsense", stderr);

            (rc, _, stderr) = CasCli.Run("ask", "moon rocket", "--collection", "cli", "--server", url); // only "moon" matches: no cartridge
            Assert.Equal(2, rc);
            Assert.Contains("error: FailedPrecondition:", stderr);
        }
        finally
        {
            if (!serve.HasExited) serve.Kill();
            await serve.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            Directory.Delete(dir, true);
        }
    }
}
