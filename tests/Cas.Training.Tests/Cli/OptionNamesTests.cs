using System.Collections;
using System.Reflection;
using Cas.Tests.Common;

namespace Cas.Training.Tests.Cli;

/// <summary>
/// Walks the real `cas` command tree (loaded from the built cas.dll) and checks that an option name means one thing
/// everywhere: every command that takes an option of a given name describes it with the same text.
/// </summary>
public class OptionNamesTests
{
    static List<(string Command, string Option, string Description)> AllOptions()
    {
        var asm = Assembly.LoadFrom(CasCli.Dll);
        var root = asm.GetType("Cas.Cli.Commands.CasCommands", throwOnError: true)!.GetMethod("Root")!.Invoke(null, null)!;
        var found = new List<(string, string, string)>();
        void Walk(object command, string path)
        {
            var t = command.GetType();
            foreach (var o in (IEnumerable)t.GetProperty("Options")!.GetValue(command)!)
            {
                var ot = o.GetType();
                string name = (string)ot.GetProperty("Name")!.GetValue(o)!;
                if (name is "--help" or "-h" or "--version") continue;
                if (ot.Name.StartsWith("HelpOption") || ot.Name.StartsWith("VersionOption")) continue;
                found.Add((path, name, (string?)ot.GetProperty("Description")!.GetValue(o) ?? ""));
            }
            foreach (var sub in (IEnumerable)t.GetProperty("Subcommands")!.GetValue(command)!)
                Walk(sub, path + " " + (string)sub.GetType().GetProperty("Name")!.GetValue(sub)!);
        }
        Walk(root, "cas");
        return found;
    }

    [Fact]
    public void Every_option_name_has_one_meaning_across_commands()
    {
        var options = AllOptions();
        Assert.True(options.Count > 50, $"only {options.Count} options found; the walk missed the command tree");
        var conflicts = options.GroupBy(o => o.Option)
            .Where(g => g.Select(o => o.Description).Distinct().Count() > 1)
            .Select(g => g.Key + ":\n" + string.Join("\n", g.Select(o => $"  {o.Command}: {o.Description}")))
            .ToList();
        Assert.True(conflicts.Count == 0, "option names with more than one meaning:\n" + string.Join("\n", conflicts));
        foreach (var o in options) Assert.False(string.IsNullOrWhiteSpace(o.Description), $"{o.Command} {o.Option} has no description");
    }

    [Fact]
    public void The_options_the_issue_named_mean_one_thing()
    {
        var options = AllOptions();
        // --top-k is sampling only (generate); the teacher's kept entries are --teacher-top-k wherever they appear.
        Assert.Equal(["cas generate"], options.Where(o => o.Option == "--top-k").Select(o => o.Command).ToArray());
        Assert.Equal(["cas bench train", "cas synthesize"], options.Where(o => o.Option == "--teacher-top-k").Select(o => o.Command).Order().ToArray());
        // --chunk-tokens is one number (the largest chunk) in every command that has it.
        Assert.Equal(["cas eval", "cas synthesize", "cas train"], options.Where(o => o.Option == "--chunk-tokens").Select(o => o.Command).Order().ToArray());
        Assert.Equal(["cas generate", "cas synthesize"], options.Where(o => o.Option == "--chat-format").Select(o => o.Command).Order().ToArray());
    }
}
