using System.Text;
using Cas.Tests.Common;

namespace Cas.Resources.Tests;

/// <summary>A fresh temporary folder for one test, deleted afterwards.</summary>
sealed class TempDir : IDisposable
{
    public TempDir() => Root = Directory.CreateTempSubdirectory("cas-resources-test-").FullName;

    public string Root { get; }

    public string PathOf(string relative) => Path.Combine(Root, relative);

    public string Write(string relative, string text) => WriteBytes(relative, Encoding.UTF8.GetBytes(text));

    public string WriteBytes(string relative, byte[] bytes)
    {
        var path = PathOf(relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); }
        catch (IOException) { }
    }
}

static class TestFiles
{
    /// <summary>tests/Cas.Resources.Tests/Samples in the repository.</summary>
    public static string Samples => Path.Combine(TestPaths.RepoRoot, "tests", "Cas.Resources.Tests", "Samples");

    public static List<Document> ReadAll(IResource resource, ResourceReport report) => resource.Read(report).ToList();

    public static List<Document> ReadAll(IResource resource) => resource.Read(new ResourceReport()).ToList();
}
