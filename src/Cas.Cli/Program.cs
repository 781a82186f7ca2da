using Cas.Cli.Commands;

return CasCommands.Root().Parse(args).Invoke();
