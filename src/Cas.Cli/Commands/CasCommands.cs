using System.CommandLine;

namespace Cas.Cli.Commands;

/// <summary>The whole `cas` command tree (Program.cs runs it; tests walk it to check that option names are consistent).</summary>
public static class CasCommands
{
    public static RootCommand Root() => new("cas — cartridges: small trained KV caches that stand in for long documents.")
    {
        GenerateCommand.Create(),
        TokenizeCommand.Create(),
        BenchCommand.Create(),
        TrainCommand.Create(),
        SynthesizeCommand.Create(),
        DatasetCommand.Create(),
        EvalCommand.Create(),
        CollectionCommand.Create(),
        StoreCommand.Create(),
        ServeCommand.Create(),
        AskCommand.Create(),
        ChatCommand.Create(),
        DemoCommand.Create(),
    };
}
