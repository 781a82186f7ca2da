namespace Cas.Tests.Common;

/// <summary>Locates the repository root and the read-only <c>../shared</c> folder beside it.</summary>
public static class TestPaths
{
    /// <summary>The folder holding CasService.sln, found by walking up from the test binary.</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary><c>../shared</c> relative to the repository root (may not exist).</summary>
    public static string Shared => Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));

    /// <summary>A path under ../shared; calls Assert.Skip with a clear message when it is absent.</summary>
    public static string RequireShared(string relative)
    {
        var p = Path.Combine(Shared, relative);
        if (!File.Exists(p) && !Directory.Exists(p))
            Xunit.Assert.Skip($"needs ../shared/{relative} beside the repository (not found at {p}); skipped.");
        return p;
    }

    static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "CasService.sln"))) return d.FullName;
        throw new InvalidOperationException("CasService.sln not found above " + AppContext.BaseDirectory);
    }
}
