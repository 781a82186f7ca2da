using System.CommandLine;
using System.Text;
using Cas.Engine;
using Cas.Engine.Tokenizers;

namespace Cas.Cli.Commands;

/// <summary>`cas generate`: continue a prompt (or a chat turn) and print only the completion on stdout.</summary>
static class GenerateCommand
{
    public static Command Create()
    {
        var model = Options.Model();
        var tokenizer = Options.Tokenizer();
        var prompt = new Option<string>("--prompt") { Description = "Text to continue; \"\" starts from BOS.", Required = true };
        var chat = new Option<bool>("--chat") { Description = "Treat --prompt as a user message and format it with the model's chat template." };
        var chatFormat = new Option<string?>("--chat-format") { Description = "chatml | llama3 | llama2 | plain (default: detected from tokenizer_config.json, else chatml)." };
        var system = new Option<string?>("--system") { Description = "System message for --chat." };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Most tokens to generate.", DefaultValueFactory = _ => 256 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy.", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling threshold (1 = off).", DefaultValueFactory = _ => 1f };
        var topK = new Option<int>("--top-k") { Description = "Keep the k most likely tokens (0 = off).", DefaultValueFactory = _ => 0 };
        var seed = new Option<ulong>("--seed") { Description = "Sampling seed.", DefaultValueFactory = _ => 42UL };
        var cartridge = new Option<string[]>("--cartridge")
        {
            Description = "Cartridge file (.safetensors) to load in front of the prompt; repeat to compose several in the given order. " +
                          "The cartridge stands in for BOS + its document, so no BOS is added after it.",
            Arity = ArgumentArity.OneOrMore,
        };
        var cmd = new Command("generate", "Generate a completion with a model (optionally with cartridges loaded in front).")
        {
            model, tokenizer, prompt, chat, chatFormat, system, maxTokens, temperature, topP, topK, seed, cartridge,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var (m, tok, tokPath) = Cli.Load(pr.GetValue(model), pr.GetValue(tokenizer));
            var text = pr.GetValue(prompt) ?? "";
            // Cartridges first: a mismatch with the model is reported before any work.
            var cartridgePaths = pr.GetValue(cartridge) ?? [];
            KvPrefix? prefix = cartridgePaths.Length > 0 ? CartridgeFiles.LoadComposed(cartridgePaths, m) : null;
            int[] ids;
            IReadOnlyList<int> stops;
            if (pr.GetValue(chat))
            {
                var kind = ParseChatFormat(pr.GetValue(chatFormat)) ?? ChatFormat.Detect(tokPath) ?? ChatFormatKind.ChatML;
                var messages = new List<ChatMessage>();
                if (pr.GetValue(system) is { Length: > 0 } sys) messages.Add(new ChatMessage("system", sys));
                messages.Add(new ChatMessage("user", text));
                ids = Prompts.Encode(tok, ChatFormat.Render(kind, messages, addGenerationPrompt: true), addStart: false);
                // After a cartridge (whose slot 0 is already the BOS KV) a template's leading BOS (Llama 2/3) is dropped.
                if (prefix != null && ids.Length > 1 && tok.BosId is int bos && ids[0] == bos) ids = ids[1..];
                stops = ChatFormat.StopTokens(kind, tok);
            }
            else if (prefix != null)
            {
                // The cartridge's frozen slot 0 is the BOS KV and the cartridge replaces "BOS + document": the prompt
                // continues the document, so it is encoded as continuation text (no start tokens, no dummy-prefix space).
                ids = Cas.Training.DocumentProbes.EncodeContinuation(tok, text);
                if (ids.Length == 0)
                    throw new InvalidRequestException("with --cartridge the prompt must not be empty: the cartridge holds KV, not a next-token distribution. Start with some text, e.g. --prompt $'\\n' or a question.");
                stops = tok.EosId is int eos ? [eos] : [];
            }
            else
            {
                ids = Prompts.Encode(tok, text, addStart: true);
                stops = tok.EosId is int eos ? [eos] : [];
            }
            var request = new GenerationRequest(ids, prefix)
            {
                MaxTokens = pr.GetValue(maxTokens),
                StopTokens = stops,
                Sampling = new SamplingOptions
                {
                    Temperature = pr.GetValue(temperature), TopP = pr.GetValue(topP), TopK = pr.GetValue(topK), Seed = pr.GetValue(seed),
                },
            };
            var generator = new Generator(new Transformer(m));
            var stream = new CompletionStream(tok, ids, Console.Out);
            generator.Generate([request], (_, token, _) => stream.Add(token));
            stream.Finish();
            return 0;
        }));
        return cmd;
    }

    static ChatFormatKind? ParseChatFormat(string? s) => s?.ToLowerInvariant() switch
    {
        null or "" => null,
        "chatml" => ChatFormatKind.ChatML,
        "llama3" => ChatFormatKind.Llama3,
        "llama2" => ChatFormatKind.Llama2,
        "plain" => ChatFormatKind.Plain,
        _ => throw new InvalidRequestException($"unknown --chat-format '{s}'; use chatml, llama3, llama2 or plain."),
    };

    /// <summary>
    /// Prints text as tokens arrive, holding back an incomplete UTF-8 character at the end. Decodes
    /// prompt + completion and prints what follows the prompt's text, so a leading space that a
    /// SentencePiece-style decoder drops at the start of a sequence is kept.
    /// </summary>
    sealed class CompletionStream
    {
        readonly ITokenizer tok;
        readonly TextWriter output;
        readonly List<int> _ids;
        int _printed;

        public CompletionStream(ITokenizer tokenizer, int[] prompt, TextWriter writer)
        {
            tok = tokenizer; output = writer;
            _ids = new List<int>(prompt);
            _printed = tok.Decode(prompt).Length;
        }

        public void Add(int token)
        {
            _ids.Add(token);
            var text = tok.Decode(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_ids));
            int end = text.Length;
            if (end > 0 && text[end - 1] == '\uFFFD') return; // wait for the rest of a multi-byte character
            if (end > _printed) { output.Write(text.AsSpan(_printed, end - _printed)); output.Flush(); _printed = end; }
        }

        public void Finish()
        {
            var text = tok.Decode(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_ids));
            if (text.Length > _printed) output.Write(text.AsSpan(_printed));
            output.WriteLine();
            output.Flush();
        }
    }
}

/// <summary>Prompt encoding shared by commands.</summary>
static class Prompts
{
    /// <summary>
    /// Encodes text; with addStart, prepends the tokens the tokenizer puts before a sequence (BOS for
    /// llama2.c and Llama), and for an empty text with none, the BOS/EOS id so generation has a start.
    /// </summary>
    public static int[] Encode(ITokenizer tok, string text, bool addStart)
    {
        var body = tok.Encode(text);
        if (!addStart) return body;
        var start = tok.StartTokens;
        if (start.Count == 0 && body.Length == 0)
            start = tok.BosId is int b ? [b] : tok.EosId is int e ? [e] : throw new InvalidRequestException("empty prompt and the tokenizer has no BOS or EOS token to start from.");
        var ids = new int[start.Count + body.Length];
        for (int i = 0; i < start.Count; i++) ids[i] = start[i];
        body.CopyTo(ids, start.Count);
        return ids;
    }
}
