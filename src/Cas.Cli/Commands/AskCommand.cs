using System.CommandLine;
using System.Globalization;
using Cas.Engine;
using Cas.Client;
using Cas.Service;
using Cas.Service.V1;

namespace Cas.Cli.Commands;

/// <summary>`cas ask`: a client of `cas serve`. The answer streams to stdout; retrieval and accounting go to stderr as key=value.</summary>
static class AskCommand
{
    public static Command Create()
    {
        var question = new Argument<string>("QUESTION") { Description = "The question." };
        var collection = Options.Collection();
        collection.Required = true;
        var rag = RagOption();
        var icl = IclOption();
        var server = ServerOption();
        server.DefaultValueFactory = _ => "http://127.0.0.1:50051";
        var maxTokens = Options.MaxTokens(128);
        var temperature = Options.Temperature();
        var apiKey = ServeCommand.ApiKeyOption();
        var retrieval = new Option<string>("--retrieval")
        {
            Description = "How chunks are retrieved: bm25 (full text) or dense (cosine of the model's own mean-pooled hidden states; the server embeds chunks on first use).",
            DefaultValueFactory = _ => "bm25",
        };
        retrieval.AcceptOnlyFromAmong("bm25", "dense");
        var cmd = new Command("ask", "Ask a collection a question through a running `cas serve`.") { question, collection, rag, icl, server, maxTokens, temperature, apiKey, retrieval };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var mode = Mode(pr.GetValue(rag), pr.GetValue(icl));
            using var client = new CasClient(CasClient.ParseAddress(pr.GetValue(server)), pr.GetValue(apiKey));
            var request = new AskRequest
            {
                Collection = pr.GetValue(collection)!, Question = pr.GetValue(question)!, MaxTokens = pr.GetValue(maxTokens), Temperature = pr.GetValue(temperature),
                Retrieval = pr.GetValue(retrieval)!,
            };
            var result = client.AskAsync(mode, request, text => { Console.Write(text); Console.Out.Flush(); return Task.CompletedTask; }).GetAwaiter().GetResult();
            Console.WriteLine();
            Report(result);
            return 0;
        }));
        return cmd;
    }

    // Shared with `cas chat`.
    public static Option<bool> RagOption() => new("--rag") { Description = "Answer with the retrieved chunks pasted into the prompt (the RAG baseline) instead of cartridges." };
    public static Option<bool> IclOption() => new("--icl") { Description = "Answer with the retrieved documents' whole text in the prompt, when they fit." };
    public static Option<string?> ServerOption() => new("--server") { Description = "URL of a running `cas serve`." };

    /// <summary>The mode chosen by --rag / --icl (cartridges when neither).</summary>
    public static AskMode Mode(bool rag, bool icl)
    {
        if (rag && icl) throw new InvalidRequestException("choose one of --rag and --icl.");
        return rag ? AskMode.Rag : icl ? AskMode.Icl : AskMode.Cartridges;
    }

    static string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);

    /// <summary>The documents, skipped documents and accounting of an answer, as key=value lines on stderr.</summary>
    public static void Report(AskResult r)
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
