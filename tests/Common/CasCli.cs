using System.Diagnostics;

namespace Cas.Tests.Common;

/// <summary>Runs the real `cas` CLI as a child process (built once per test run, Release, as ./cas builds it).</summary>
public static class CasCli
{
    static readonly Lazy<string> s_dll = new(Build);

    /// <summary>Path of the built cas.dll.</summary>
    public static string Dll => s_dll.Value;

    /// <summary>Starts `dotnet cas.dll ARGS` with stdout and stderr redirected.</summary>
    public static Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }

    /// <summary>How long one `cas` run may take before the test fails (generous: a loaded 2-core machine is slow).</summary>
    public static TimeSpan RunLimit { get; } = TimeSpan.FromMinutes(5);

    /// <summary>Runs `cas ARGS` to the end: exit code, stdout, stderr. A run past <see cref="RunLimit"/> is killed and fails the test.</summary>
    public static (int Rc, string Out, string Err) Run(params string[] args)
    {
        using var p = Start(args);
        var err = p.StandardError.ReadToEndAsync();
        var o = p.StandardOutput.ReadToEndAsync();
        Finish(p, RunLimit, "cas " + string.Join(' ', args));
        return (p.ExitCode, o.Result, err.Result);
    }

    /// <summary>Waits for <paramref name="p"/>; past <paramref name="limit"/> kills its process tree and throws, so a stuck child never hangs the run.</summary>
    static void Finish(Process p, TimeSpan limit, string what)
    {
        if (p.WaitForExit(limit)) { p.WaitForExit(); return; } // the second wait drains the redirected streams
        try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { /* it ended meanwhile */ }
        throw new TimeoutException($"`{what}` did not finish within {limit.TotalSeconds:F0} s and was killed.");
    }

    static string Build()
    {
        string root = TestPaths.RepoRoot;
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(root, "cas"));
        psi.ArgumentList.Add("--help");
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var o = p.StandardOutput.ReadToEndAsync();
        Finish(p, TimeSpan.FromMinutes(15), "./cas --help (building the CLI)");
        Xunit.Assert.True(p.ExitCode == 0, "building the CLI failed: " + err.Result);
        string dll = Path.Combine(root, "src", "Cas.Cli", "bin", "Release", "net10.0", "cas.dll");
        Xunit.Assert.True(File.Exists(dll), $"{dll} was not built");
        return dll;
    }
}
