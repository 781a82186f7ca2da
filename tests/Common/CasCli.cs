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

    /// <summary>Runs `cas ARGS` to the end: exit code, stdout, stderr.</summary>
    public static (int Rc, string Out, string Err) Run(params string[] args)
    {
        using var p = Start(args);
        var err = p.StandardError.ReadToEndAsync();
        string o = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o, err.Result);
    }

    static string Build()
    {
        string root = TestPaths.RepoRoot;
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(root, "cas"));
        psi.ArgumentList.Add("--help");
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Xunit.Assert.True(p.ExitCode == 0, "building the CLI failed: " + err.Result);
        string dll = Path.Combine(root, "src", "Cas.Cli", "bin", "Release", "net10.0", "cas.dll");
        Xunit.Assert.True(File.Exists(dll), $"{dll} was not built");
        return dll;
    }
}
