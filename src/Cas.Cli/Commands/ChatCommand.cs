using System.CommandLine;
using System.Text;
using Cas.Client;
using Cas.Engine;
using Cas.Service;
using Microsoft.Extensions.AI;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas chat`: a multi-turn conversation on stdin/stdout through <see cref="CasChatClient"/>: over a collection, in this
/// process (its data folder) or through a server, or over cartridge files. Each line read is a user message; the
/// answer streams to stdout (one line per answer), its documents and accounting go to stderr as key=value lines.
/// `/reset` forgets the conversation, `/exit` or end of input ends it.
/// </summary>
static class ChatCommand
{
    public static Command Create()
    {
        var collection = Options.Collection();
        var cartridge = Options.Cartridges(required: false);
        var server = AskCommand.ServerOption();
        var rag = AskCommand.RagOption();
        var icl = AskCommand.IclOption();
        var dataDir = Options.DataDir();
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var maxTokens = Options.MaxTokens(128);
        var temperature = Options.Temperature();
        var apiKey = ServeCommand.ApiKeyOption();
        var cmd = new Command("chat", "Chat with a collection (in this process, or through --server) or with cartridge files; history is kept, answers stream. /reset forgets, /exit ends.")
        {
            collection, cartridge, server, rag, icl, dataDir, model, tokenizer, maxTokens, temperature, apiKey,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var mode = AskCommand.Mode(pr.GetValue(rag), pr.GetValue(icl));
            string? name = pr.GetValue(collection);
            var files = pr.GetValue(cartridge) ?? [];
            string? url = pr.GetValue(server);
            if ((name == null) == (files.Length == 0)) throw new InvalidRequestException("give either --collection NAME or --cartridge FILE (repeatable), not both.");
            if (files.Length > 0 && url != null) throw new InvalidRequestException("--cartridge chats with files loaded here; --server takes --collection.");
            if (files.Length > 0 && mode != AskMode.Cartridges) throw new InvalidRequestException("--rag and --icl need a collection to retrieve from.");
            var options = new CasChatOptions { Mode = mode, MaxTokens = pr.GetValue(maxTokens), Temperature = pr.GetValue(temperature) };

            CasClient? remote = null;
            ServiceState? state = null;
            try
            {
                CasChatClient chat;
                if (files.Length > 0)
                {
                    var (m, tok, tokPath) = Cli.Load(pr.GetValue(model), pr.GetValue(tokenizer));
                    var parts = CartridgeFiles.Load(files, m);
                    chat = new CasChatClient(new CartridgeAsker(m, tok, tokPath, files.Select((f, i) => (Path.GetFileName(f), parts[i])).ToList()), "", options);
                }
                else if (url != null)
                {
                    remote = new CasClient(CasClient.ParseAddress(url), pr.GetValue(apiKey));
                    try { remote.Collections.GetCollection(new Service.V1.GetCollectionRequest { Name = name }, remote.Headers); } // fail now, not at the first question
                    catch (Grpc.Core.RpcException e) { throw CasClient.ToException(e); }
                    chat = CasChatClient.Remote(remote, name!, options);
                }
                else
                {
                    state = new ServiceState(new CasServerOptions { DataDir = pr.GetValue(dataDir)!, LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning });
                    state.ModelOf(state.Collection(name!));
                    chat = CasChatClient.InProcess(new QueryEngine(state), name!, options);
                }
                return Loop(chat);
            }
            finally
            {
                remote?.Dispose();
                state?.Dispose();
            }
        }));
        return cmd;
    }

    /// <summary>Reads user lines until /exit or end of input; 0 when every question was answered, else 2.</summary>
    static int Loop(CasChatClient chat)
    {
        bool interactive = !Console.IsInputRedirected;
        var history = new List<AiChatMessage>();
        int failed = 0;
        if (interactive) Console.Error.WriteLine("chat: one message per line; /reset forgets the conversation, /exit (or Ctrl+D) ends it.");
        while (true)
        {
            if (interactive) Console.Error.Write("> ");
            var line = Console.In.ReadLine();
            if (line == null) break;
            line = line.Trim();
            if (line.Length == 0) continue;
            if (line == "/exit") break;
            if (line == "/reset") { history.Clear(); Console.Error.WriteLine("history cleared."); continue; }
            history.Add(new AiChatMessage(ChatRole.User, line));
            var answer = new StringBuilder();
            try
            {
                ChatResponseUpdate? last = null;
                foreach (var update in chat.GetStreamingResponseAsync(history).ToBlockingEnumerable())
                {
                    var text = update.Text;
                    if (text.Length > 0) { answer.Append(text); Console.Out.Write(text); Console.Out.Flush(); }
                    last = update;
                }
                Console.Out.WriteLine();
                Console.Out.Flush();
                history.Add(new AiChatMessage(ChatRole.Assistant, answer.ToString()));
                if (last?.AdditionalProperties?.TryGetValue(CasChatClient.ResultKey, out var r) == true && r is Service.V1.AskResult result)
                    AskCommand.Report(result);
            }
            catch (CasException e)
            {
                // The question stays unanswered and leaves the history; the conversation goes on.
                if (answer.Length > 0) Console.Out.WriteLine();
                history.RemoveAt(history.Count - 1);
                Console.Error.WriteLine($"error: {e.Message}");
                failed++;
            }
        }
        return failed == 0 ? 0 : 2;
    }
}
