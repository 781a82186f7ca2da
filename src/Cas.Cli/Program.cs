using System.CommandLine;
using Cas.Cli.Commands;

var root = new RootCommand("cas — cartridges: small trained KV caches that stand in for long documents.")
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
};
return root.Parse(args).Invoke();
