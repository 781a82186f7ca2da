using System.CommandLine;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.SelfStudy;

namespace Cas.Cli.Commands;

/// <summary>`cas dataset show|stats FILE`: look inside a self-study dataset.</summary>
static class DatasetCommand
{
    public static Command Create()
    {
        var dataset = new Command("dataset", "Inspect self-study dataset files (.casds).");
        dataset.Subcommands.Add(Show());
        dataset.Subcommands.Add(Stats());
        return dataset;
    }

    static Argument<string> FileArgument() => new("FILE") { Description = "Dataset file." };

    static Command Show()
    {
        var file = FileArgument();
        var n = new Option<int>("--n") { Description = "Conversations to show.", DefaultValueFactory = _ => 3 };
        var skip = new Option<int>("--skip") { Description = "Conversations to skip first.", DefaultValueFactory = _ => 0 };
        var tokenizer = Options.Tokenizer(); // decodes the token ids when given
        var topK = new Option<int>("--entries") { Description = "Teacher entries listed per position.", DefaultValueFactory = _ => 5 };
        var positions = new Option<int>("--positions") { Description = "Target positions listed per message (0: all).", DefaultValueFactory = _ => 32 };
        var chunk = new Option<bool>("--chunk") { Description = "Also print each conversation's chunk text." };
        var cmd = new Command("show", "Print conversations with their teacher top-k targets.") { file, n, skip, tokenizer, topK, positions, chunk };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            int count = pr.GetValue(n), skipped = pr.GetValue(skip);
            if (count < 0 || skipped < 0) throw new InvalidRequestException("--n and --skip must be >= 0.");
            var options = new DatasetShowOptions
            {
                Count = count, Skip = skipped, TopKShown = pr.GetValue(topK), MaxPositions = pr.GetValue(positions), ShowChunk = pr.GetValue(chunk),
                Tokenizer = pr.GetValue(tokenizer) is { Length: > 0 } t ? TokenizerLoader.Load(t) : null,
            };
            Console.Out.Write(DatasetShow.Format(RequireFile(pr.GetValue(file)!), options));
            return 0;
        }));
        return cmd;
    }

    static Command Stats()
    {
        var file = FileArgument();
        var documents = new Option<int>("--documents") { Description = "Most documents listed.", DefaultValueFactory = _ => 20 };
        var cmd = new Command("stats", "Counts of a dataset: conversations, tokens, top-k sizes, seed kinds, documents.") { file, documents };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            Console.Out.Write(DatasetStats.Compute(RequireFile(pr.GetValue(file)!)).Format(pr.GetValue(documents)));
            return 0;
        }));
        return cmd;
    }

    static string RequireFile(string path) => File.Exists(path) ? path
        : throw new InvalidRequestException($"dataset file not found: {Path.GetFullPath(path)}.");
}
