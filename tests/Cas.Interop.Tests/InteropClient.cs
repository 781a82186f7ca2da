using System.Diagnostics;
using System.Text.Json;
using Cas.Tests.Common;

namespace Cas.Interop.Tests;

/// <summary>
/// A gRPC client that nobody here wrote, run as a child process: Debian's python3-grpcio (stubs generated at start with
/// python3-grpc-tools) or npm's @grpc/grpc-js + @grpc/proto-loader. The scripts live in <c>clients/</c>; each run is one
/// scenario that prints one JSON object (its last stdout line). A run that outlives its time limit is killed (with
/// its process tree) and fails the test. When the client cannot run here the test is skipped with what is missing,
/// unless <c>CI=true</c>: then it fails, because CI must really run these.
/// </summary>
public sealed class InteropClient
{
    /// <summary>Where grpc-proto (Debian) puts the health and reflection protos the clients load.</summary>
    public const string GrpcProtos = "/usr/share/grpc-proto";
    public static readonly TimeSpan DefaultLimit = TimeSpan.FromSeconds(45);

    public static readonly InteropClient Python = new("python", PythonMissing, (script, rest) => ("/usr/bin/python3", [script, .. rest]),
        Path.Combine("clients", "python", "cas_client.py"));
    public static readonly InteropClient Node = new("node", NodeMissing, (script, rest) => ("node", [script, .. rest]),
        Path.Combine("clients", "node", "cas_client.js"));

    readonly Lazy<string?> _missing;
    readonly Func<string, string[], (string File, string[] Args)> _command;
    readonly string _script;

    InteropClient(string name, Func<string?> missing, Func<string, string[], (string, string[])> command, string script)
    {
        Name = name; _missing = new(missing); _command = command; _script = script;
    }

    public string Name { get; }

    public override string ToString() => Name;

    static string ProjectDir => Path.Combine(TestPaths.RepoRoot, "tests", "Cas.Interop.Tests");

    /// <summary>Skips (or, with CI=true, fails) when this client cannot run on this machine.</summary>
    public void Require()
    {
        if (_missing.Value is not { } missing) return;
        string message = $"the {Name} interop client cannot run: {missing}";
        if (string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase))
            Assert.Fail(message + " (CI=true: these tests must run in CI; .ci/run installs what they need).");
        Assert.Skip(message + "; skipped (.ci/run installs it).");
    }

    /// <summary>Runs one scenario against the server and returns its JSON report.</summary>
    public async Task<JsonElement> Run(InteropServer server, string scenario, object args, TimeSpan? limit = null)
    {
        var (rc, stdout, stderr, elapsed) = await Exec(server, scenario, args, limit ?? DefaultLimit);
        Assert.True(rc == 0, $"{Name} client, scenario {scenario}: exit code {rc} after {elapsed.TotalSeconds:0.0} s\nstderr:\n{stderr}\nstdout:\n{stdout}");
        var last = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault();
        Assert.True(last != null, $"{Name} client, scenario {scenario}: no output\nstderr:\n{stderr}");
        try { return JsonDocument.Parse(last!).RootElement.Clone(); }
        catch (JsonException e) { throw new Xunit.Sdk.XunitException($"{Name} client, scenario {scenario}: output is not JSON ({e.Message}): {last}\nstderr:\n{stderr}"); }
    }

    async Task<(int Rc, string Out, string Err, TimeSpan Elapsed)> Exec(InteropServer server, string scenario, object args, TimeSpan limit)
    {
        Require();
        string script = Path.Combine(ProjectDir, _script);
        var (file, argv) = _command(script, ["--target", server.Target, "--key", server.ApiKey, "--protos", Path.Combine(TestPaths.RepoRoot, "protos"),
            "--grpc-protos", GrpcProtos, "--args", JsonSerializer.Serialize(args), scenario]);
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(script)!,
        };
        foreach (var a in argv) psi.ArgumentList.Add(a);
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(limit);
        try { await p.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            await p.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            string err = stderr.IsCompleted ? stderr.Result : "(stderr not closed)";
            string o = stdout.IsCompleted ? stdout.Result : "(stdout not closed)";
            Assert.Fail($"{Name} client, scenario {scenario}: still running after {limit.TotalSeconds:0} s, killed.\nstderr:\n{err}\nstdout:\n{o}");
        }
        // The pipes close when the process exits (a grandchild holding them would be a bug in the client): bounded anyway.
        await Task.WhenAll(stdout, stderr).WaitAsync(TimeSpan.FromSeconds(10));
        return (p.ExitCode, stdout.Result, stderr.Result, clock.Elapsed);
    }

    static string? GrpcProtosMissing() =>
        File.Exists(Path.Combine(GrpcProtos, "grpc", "health", "v1", "health.proto")) && File.Exists(Path.Combine(GrpcProtos, "grpc", "reflection", "v1alpha", "reflection.proto"))
            ? null : $"{GrpcProtos}/grpc/{{health,reflection}} protos are missing (Debian package grpc-proto)";

    static string? PythonMissing()
    {
        if (!File.Exists("/usr/bin/python3")) return "/usr/bin/python3 is missing";
        var (rc, _, err) = Probe("/usr/bin/python3", "-c", "import grpc, grpc_tools.protoc");
        if (rc != 0) return "/usr/bin/python3 cannot import grpc and grpc_tools (Debian packages python3-grpcio, python3-grpc-tools): " + err.Trim().Split('\n').LastOrDefault();
        return GrpcProtosMissing();
    }

    static string? NodeMissing()
    {
        var (rc, _, _) = Probe("node", "--version");
        if (rc != 0) return "node is not on PATH";
        foreach (var pkg in new[] { "@grpc/grpc-js", "@grpc/proto-loader", "protobufjs" })
            if (!File.Exists(Path.Combine(ProjectDir, "clients", "node", "node_modules", pkg, "package.json")))
                return $"{pkg} is not installed in tests/Cas.Interop.Tests/clients/node (run: npm ci --prefix tests/Cas.Interop.Tests/clients/node)";
        return GrpcProtosMissing();
    }

    static (int Rc, string Out, string Err) Probe(string file, params string[] args)
    {
        try
        {
            var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var err = p.StandardError.ReadToEndAsync();
            var o = p.StandardOutput.ReadToEndAsync();
            if (!p.WaitForExit(30_000)) { p.Kill(true); return (-1, "", "timed out"); }
            return (p.ExitCode, o.Result, err.Result);
        }
        catch (System.ComponentModel.Win32Exception e) { return (-1, "", e.Message); }
    }
}
