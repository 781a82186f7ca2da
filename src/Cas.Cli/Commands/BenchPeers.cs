using System.CommandLine;
using System.Diagnostics;

namespace Cas.Cli.Commands;

/// <summary>
/// `cas bench peers`: our engine against libtorch (TorchSharp-cpu) and llama.cpp (LLamaSharp) on the same shapes and
/// weights. The peers live in a separate project (eval/peers/Cas.Bench.Peers, not in the solution, so CI and the product
/// never restore their 1.4 GB of native libraries); this command builds it (restoring on first use) and runs it,
/// passing its arguments through and its key=value lines to stdout.
/// </summary>
static class BenchPeers
{
    static string Project => Path.Combine(Cli.RepoRoot, "eval", "peers", "Cas.Bench.Peers", "Cas.Bench.Peers.csproj");

    public static Command Create()
    {
        var cmd = new Command("peers",
            "Prefill, decode and distillation speed against libtorch and llama.cpp on the same random weights; ratios above 1 mean we are faster. " +
            "Options (passed through): --rounds N, --prefill-tokens N, --context N, --decode-steps N, --prefill-reps N, --distill-prefix N, " +
            "--distill-sequences N, --distill-length N, --top-k N, --distill-steps N, --skip-distill, --threads N, --config PATH, --tokenizer PATH, --work DIR.")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        cmd.SetAction(pr => Cli.Run(() =>
        {
            if (!File.Exists(Project)) throw new IOException($"{Project} not found: `cas bench peers` runs from a checkout of the repository.");
            var args = pr.UnmatchedTokens.ToList();
            if (!args.Contains("--config"))
                args.InsertRange(0, ["--config", Path.Combine(Cli.RepoRoot, "..", "shared", "models", "smollm2-135m-instruct-tokenizer")]);

            string dll = Path.Combine(Path.GetDirectoryName(Project)!, "bin", "Release", "net10.0", "linux-x64", "Cas.Bench.Peers.dll");
            if (Stale(dll))
            {
                Console.Error.WriteLine("peers: building eval/peers/Cas.Bench.Peers (the first build restores TorchSharp-cpu and LLamaSharp, about 1.4 GB)");
                int rc = Exec(["build", Project, "-c", "Release", "-v", "q", "--nologo"], stdoutToStderr: true);
                if (rc != 0) throw new IOException($"building {Project} failed (exit code {rc}); the messages are above.");
                File.SetLastWriteTimeUtc(dll, DateTime.UtcNow);
            }
            return Exec([dll, .. args], stdoutToStderr: false);
        }));
        return cmd;
    }

    /// <summary>True when the built benchmark is missing or older than a source it is built from (its own, src/, the props).</summary>
    static bool Stale(string dll)
    {
        if (!File.Exists(dll)) return true;
        var built = File.GetLastWriteTimeUtc(dll);
        var sources = new[] { Path.GetDirectoryName(Project)!, Path.Combine(Cli.RepoRoot, "src") }
            .SelectMany(d => Directory.EnumerateFiles(d, "*", SearchOption.AllDirectories))
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}"))
            .Where(f => f.EndsWith(".cs", StringComparison.Ordinal) || f.EndsWith(".csproj", StringComparison.Ordinal))
            .Append(Path.Combine(Cli.RepoRoot, "Directory.Build.props"));
        return sources.Any(f => File.Exists(f) && File.GetLastWriteTimeUtc(f) > built);
    }

    /// <summary>Runs `dotnet ARGS`, stdin and stderr inherited; stdout inherited or copied to stderr (stdout carries only results).</summary>
    static int Exec(IReadOnlyList<string> args, bool stdoutToStderr)
    {
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = stdoutToStderr };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new IOException("could not start dotnet.");
        if (stdoutToStderr)
        {
            p.OutputDataReceived += (_, e) => { if (e.Data != null) Console.Error.WriteLine(e.Data); };
            p.BeginOutputReadLine();
        }
        p.WaitForExit();
        return p.ExitCode;
    }
}
