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
        var chatFormat = Options.ChatFormat("auto");
        var system = new Option<string?>("--system") { Description = "System message for --chat." };
        var maxTokens = Options.MaxTokens(256);
        var temperature = Options.Temperature();
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling threshold (1 = off).", DefaultValueFactory = _ => 1f };
        var topK = new Option<int>("--top-k") { Description = "Sample only among the k most likely tokens (0 = off).", DefaultValueFactory = _ => 0 };
        var seed = Options.Seed(42UL);
        var cartridge = Options.Cartridges(required: false);
        var weightStorage = Options.WeightStorage();
        var cmd = new Command("generate", "Generate a completion with a model (optionally with cartridges loaded in front; no BOS follows a cartridge, whose slot 0 is the BOS KV).")
        {
            model, tokenizer, prompt, chat, chatFormat, system, maxTokens, temperature, topP, topK, seed, cartridge, weightStorage,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var format = ChatFormat.Parse(pr.GetValue(chatFormat));
            var (m, tok, tokPath) = Cli.Load(pr.GetValue(model), pr.GetValue(tokenizer), Options.ParseWeightStorage(pr.GetValue(weightStorage)));
            // Cartridges first: a mismatch with the model is reported before any work.
            var cartridgePaths = pr.GetValue(cartridge) ?? [];
            KvPrefix? prefix = cartridgePaths.Length > 0 ? CartridgeFiles.LoadComposed(cartridgePaths, m) : null;
            var request = new CompletionRequest(pr.GetValue(prompt) ?? "")
            {
                Chat = pr.GetValue(chat), ChatFormat = format, System = pr.GetValue(system), TokenizerPath = tokPath, Prefix = prefix,
                MaxTokens = pr.GetValue(maxTokens),
                Sampling = new SamplingOptions
                {
                    Temperature = pr.GetValue(temperature), TopP = pr.GetValue(topP), TopK = pr.GetValue(topK), Seed = pr.GetValue(seed),
                },
            };
            Completion.Run(m, tok, request, text => { Console.Out.Write(text); Console.Out.Flush(); });
            Console.Out.WriteLine();
            Console.Out.Flush();
            return 0;
        }));
        return cmd;
    }
}
