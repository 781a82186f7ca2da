using System.CommandLine;
using System.Globalization;
using Cas.Engine;
using Cas.Service.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Cli.Commands;

/// <summary>`cas ask`: a client of `cas serve`. The answer streams to stdout; retrieval and accounting go to stderr as key=value.</summary>
static class AskCommand
{
    public static Command Create()
    {
        var question = new Argument<string>("QUESTION") { Description = "The question." };
        var collection = Options.Collection();
        collection.Required = true;
        var rag = new Option<bool>("--rag") { Description = "Answer with the retrieved chunks pasted into the prompt (the RAG baseline) instead of cartridges." };
        var icl = new Option<bool>("--icl") { Description = "Answer with the retrieved documents' whole text in the prompt, when they fit." };
        var server = new Option<string>("--server") { Description = "URL of a running `cas serve`.", DefaultValueFactory = _ => "http://127.0.0.1:50051" };
        var maxTokens = Options.MaxTokens(128);
        var temperature = Options.Temperature();
        var apiKey = ServeCommand.ApiKeyOption();
        var cmd = new Command("ask", "Ask a collection a question through a running `cas serve`.") { question, collection, rag, icl, server, maxTokens, temperature, apiKey };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            if (pr.GetValue(rag) && pr.GetValue(icl)) throw new InvalidRequestException("choose one of --rag and --icl.");
            if (!Uri.TryCreate(pr.GetValue(server), UriKind.Absolute, out var url)) throw new InvalidRequestException($"--server must be a URL such as http://127.0.0.1:50051, got '{pr.GetValue(server)}'.");
            using var channel = GrpcChannel.ForAddress(url);
            var client = new QueryService.QueryServiceClient(channel);
            var request = new AskRequest
            {
                Collection = pr.GetValue(collection)!, Question = pr.GetValue(question)!, MaxTokens = pr.GetValue(maxTokens), Temperature = pr.GetValue(temperature),
            };
            var headers = pr.GetValue(apiKey) is { } key ? new Metadata { { "x-api-key", key } } : null;
            using var call = pr.GetValue(rag) ? client.AskRag(request, headers) : pr.GetValue(icl) ? client.AskIcl(request, headers) : client.Ask(request, headers);
            try
            {
                AskResult? result = null;
                var stream = call.ResponseStream;
                while (stream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                {
                    if (stream.Current.KindCase == AskResponse.KindOneofCase.Delta) { Console.Write(stream.Current.Delta.Text); Console.Out.Flush(); }
                    else result = stream.Current.Result;
                }
                Console.WriteLine();
                if (result != null) Report(result);
                return 0;
            }
            catch (RpcException e)
            {
                Console.Error.WriteLine($"error: {e.StatusCode}: {e.Status.Detail}");
                return 2;
            }
        }));
        return cmd;
    }

    static string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);

    static void Report(AskResult r)
    {
        foreach (var d in r.Documents)
            Console.Error.WriteLine($"document={d.DocumentId} score={d.Score.ToString("F3", CultureInfo.InvariantCulture)}" +
                (d.CartridgeId.Length > 0 ? $" cartridge={d.CartridgeId} version={d.CartridgeVersion} slots={d.CartridgeSlots}" : ""));
        foreach (var s in r.Skipped) Console.Error.WriteLine($"skipped={StoreCommand.Quote(s)}");
        var t = r.Tokens; var l = r.Latency;
        Console.Error.WriteLine($"finish={r.FinishReason.ToString().ToLowerInvariant()} prompt_tokens={t.PromptTokens} cartridge_slots={t.CartridgeSlots} " +
            $"completion_tokens={t.CompletionTokens} kv_bytes_attended={t.KvBytesAttended} retrieve_ms={F(l.RetrieveMs)} load_ms={F(l.LoadMs)} " +
            $"queued_ms={F(l.QueuedMs)} prefill_ms={F(l.PrefillMs)} decode_ms={F(l.DecodeMs)} total_ms={F(l.TotalMs)}");
    }
}
