namespace Cas.Resources.Tests;

public class DirectoryResourceTests
{
    [Theory]
    [InlineData("*.md", "a.md", true)]
    [InlineData("*.md", "sub/a.md", false)]
    [InlineData("**/*.md", "a.md", true)]
    [InlineData("**/*.md", "x/y/z/a.md", true)]
    [InlineData("**/*.md", "x/a.txt", false)]
    [InlineData("docs/**/intro.md", "docs/intro.md", true)]
    [InlineData("docs/**/intro.md", "docs/a/b/intro.md", true)]
    [InlineData("docs/**/intro.md", "other/intro.md", false)]
    [InlineData("ch??.tex", "ch01.tex", true)]
    [InlineData("ch??.tex", "ch1.tex", false)]
    [InlineData("*", ".hidden", false)]
    [InlineData("**/*", ".git/config", false)]
    [InlineData("**/*", "a/.cache/x", false)]
    [InlineData(".github/*.yml", ".github/ci.yml", true)]
    [InlineData("a*b*c", "aXXbYYc", true)]
    [InlineData("a*b*c", "aXXbYY", false)]
    [InlineData("**", "any/depth/file", true)]
    public void GlobMatching(string pattern, string path, bool expected) =>
        Assert.Equal(expected, new Glob(pattern).IsMatch(path));

    [Fact]
    public void GlobPrunesFoldersThatCannotMatch()
    {
        var g = new Glob("docs/*/index.md");
        Assert.True(g.CouldMatchBelow("docs"));
        Assert.True(g.CouldMatchBelow("docs/api"));
        Assert.False(g.CouldMatchBelow("src"));
        Assert.True(new Glob("**/*.md").CouldMatchBelow("any/where"));
    }

    static TempDir Project()
    {
        var t = new TempDir();
        t.Write("docs/intro.md", "---\ntitle: Intro\n---\n# Hello\nWelcome.");
        t.Write("docs/guide/setup.md", "## Setup\nSteps.");
        t.Write("docs/guide/notes.txt", "Plain notes.");
        t.Write("docs/data.jsonl", "{\"text\": \"record one\"}\n{\"text\": \"record two\"}\n");
        t.Write("docs/empty.txt", "");
        t.WriteBytes("docs/logo.png", [0x89, (byte)'P', (byte)'N', (byte)'G', 0, 0, 0, 13]);
        t.Write("docs/.hidden/secret.txt", "not read");
        t.Write("docs/paper/main.tex", "\\documentclass{article}\n\\begin{document}\n\\section{Start}\n\\input{body}\n\\end{document}\n");
        t.Write("docs/paper/body.tex", "Body text.");
        t.Write("docs/paper/appendix.tex", "\\section{Extra}\nStandalone fragment.");
        return t;
    }

    [Fact]
    public void WalkIsSortedAndReadsEachFileByItsExtension()
    {
        using var t = Project();
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new DirectoryResource(t.PathOf("docs")), report);

        Assert.Equal([
            "docs/data.jsonl", "docs/guide/notes.txt", "docs/guide/setup.md", "docs/intro.md",
            "docs/paper/main.tex", "docs/paper/appendix.tex",
        ], docs.Select(d => d.Id));
        Assert.Equal(["text", "text", "markdown", "markdown", "latex", "latex"], docs.Select(d => d.Metadata["kind"]));
        Assert.Equal("{\"text\": \"record one\"}\n{\"text\": \"record two\"}\n", docs[0].Text); // no field: JSONL read as text
        Assert.Equal("Intro", docs[3].Metadata["title"]);
        Assert.Equal("Start\n\nBody text.", docs[4].Text); // body.tex is inside main.tex, not a document of its own
        Assert.Equal("Extra\n\nStandalone fragment.", docs[5].Text);

        Assert.Equal(1, report.EmptyDocumentsSkipped);
        Assert.Equal(1, (int)report.Count(ResourceIssueKind.BinaryFileSkipped));
        Assert.EndsWith("logo.png", report.IssuesOf(ResourceIssueKind.BinaryFileSkipped).Single().Path);
        Assert.DoesNotContain(docs, d => d.Text.Contains("not read"));
    }

    [Fact]
    public void GlobSpecSelectsFilesAndFieldReadsJson()
    {
        using var t = Project();
        var md = TestFiles.ReadAll(ResourceSpec.Parse($"dir:{t.PathOf("docs")}/**/*.md"));
        Assert.Equal(["docs/guide/setup.md", "docs/intro.md"], md.Select(d => d.Id));

        var top = TestFiles.ReadAll(ResourceSpec.Parse($"dir:{t.PathOf("docs")}/*.md"));
        Assert.Equal(["docs/intro.md"], top.Select(d => d.Id));

        var json = TestFiles.ReadAll(ResourceSpec.Parse($"dir:{t.PathOf("docs")}/*.jsonl#text"));
        Assert.Equal(["docs/data.jsonl:1", "docs/data.jsonl:2"], json.Select(d => d.Id));
        Assert.Equal(["record one", "record two"], json.Select(d => d.Text));
    }

    [Fact]
    public void ReadingIsLazy()
    {
        using var t = Project();
        var report = new ResourceReport();
        using var e = new DirectoryResource(t.PathOf("docs")).Read(report).GetEnumerator();
        Assert.True(e.MoveNext());
        Assert.Equal("docs/data.jsonl", e.Current.Id);
        Assert.Equal(1, report.FilesRead); // only the first file has been opened so far
    }

    [Fact]
    public void IdsDoNotDependOnWhereTheFolderLives()
    {
        using var a = Project();
        using var b = Project();
        var ida = TestFiles.ReadAll(new DirectoryResource(a.PathOf("docs"))).Select(d => d.Id);
        var idb = TestFiles.ReadAll(new DirectoryResource(b.PathOf("docs") + "/")).Select(d => d.Id);
        Assert.Equal(ida, idb);
    }

    [Fact]
    public void MissingFolderIsReported()
    {
        using var t = new TempDir();
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new DirectoryResource(t.PathOf("none")), report));
        Assert.Equal(1, report.UnreadableFiles);
        Assert.Contains("cannot list folder", report.Issues[0].Message);
    }
}
