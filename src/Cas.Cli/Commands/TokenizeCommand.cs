using System.CommandLine;
using Cas.Engine.Tokenizers;

namespace Cas.Cli.Commands;

/// <summary>`cas tokenize`: print token ids as a JSON array (no special tokens added).</summary>
static class TokenizeCommand
{
    public static Command Create()
    {
        var tokenizer = Options.Tokenizer();
        tokenizer.Required = true;
        var text = new Option<string>("--text") { Description = "Text to encode; special tokens written in it are recognised.", Required = true };
        var cmd = new Command("tokenize", "Encode text to token ids.") { tokenizer, text };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            var tok = TokenizerLoader.Load(pr.GetValue(tokenizer)!);
            var ids = tok.Encode(pr.GetValue(text) ?? "");
            Console.Out.WriteLine("[" + string.Join(",", ids) + "]");
            return 0;
        }));
        return cmd;
    }
}
