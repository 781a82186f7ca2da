using System.Text;

namespace Cas.Resources.Tests;

public class TextResourceTests
{
    [Fact]
    public void OneFileIsOneDocumentWithNormalizedLineEnds()
    {
        using var t = new TempDir();
        var path = t.WriteBytes("notes.txt", [0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes("Caf\u00e9 notes\r\nline two\r\n")]);
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new TextResource(path), report);

        var doc = Assert.Single(docs);
        Assert.Equal("notes.txt", doc.Id);
        Assert.Equal(path, doc.Source);
        Assert.Equal("Caf\u00e9 notes\nline two\n", doc.Text); // BOM dropped, CRLF -> LF
        Assert.Equal("text", doc.Metadata["kind"]);
        Assert.Empty(doc.Questions);
        Assert.Equal(1, report.DocumentsRead);
        Assert.Equal(1, report.FilesRead);
        Assert.False(report.HasProblems);
    }

    [Fact]
    public void Utf16WithBomIsDecoded()
    {
        using var t = new TempDir();
        var path = t.WriteBytes("u16.txt", [0xFF, 0xFE, .. Encoding.Unicode.GetBytes("h\u00e9llo")]);
        Assert.Equal("h\u00e9llo", Assert.Single(TestFiles.ReadAll(new TextResource(path))).Text);
    }

    [Fact]
    public void NonUtf8IsDecodedWithCountedReplacements()
    {
        using var t = new TempDir();
        // Latin-1 "café" on line 2 and "naïve" on line 3, plus a truncated UTF-8 sequence at the end.
        var bytes = new byte[] { (byte)'o', (byte)'k', (byte)'\n', (byte)'c', (byte)'a', (byte)'f', 0xE9, (byte)'\n',
            (byte)'n', (byte)'a', 0xEF, (byte)'v', (byte)'e', (byte)'\n', 0xE2, 0x82 };
        var path = t.WriteBytes("latin1.txt", bytes);
        var report = new ResourceReport();
        var doc = Assert.Single(TestFiles.ReadAll(new TextResource(path), report));

        Assert.Equal("ok\ncaf\uFFFD\nna\uFFFDve\n\uFFFD", doc.Text);
        Assert.Equal(1, report.FilesDecodedWithReplacement);
        Assert.Equal(3, report.ReplacementCharacters);
        var issue = Assert.Single(report.Issues);
        Assert.Equal(ResourceIssueKind.DecodedWithReplacement, issue.Kind);
        Assert.Equal(path, issue.Path);
        Assert.Equal(2, issue.Line); // the first bad byte is on line 2
        Assert.Contains("0xE9", issue.Message);
        Assert.Contains("3 U+FFFD", issue.Message);
        Assert.True(report.HasProblems);
    }

    [Fact]
    public void StrictReportRefusesNonUtf8WithFileAndLine()
    {
        using var t = new TempDir();
        var path = t.WriteBytes("latin1.txt", [(byte)'a', (byte)'\n', (byte)'b', 0xE9]);
        var e = Assert.Throws<ResourceException>(() => TestFiles.ReadAll(new TextResource(path), new ResourceReport(strict: true)));
        Assert.Equal(path, e.Path);
        Assert.Equal(2, e.Line);
        Assert.Equal(ResourceIssueKind.DecodedWithReplacement, e.Kind);
        Assert.StartsWith($"{path}:2: not valid UTF-8", e.Message);
    }

    [Fact]
    public void EmptyAndWhitespaceFilesAreSkippedAndCounted()
    {
        using var t = new TempDir();
        var empty = t.Write("empty.txt", "");
        var blank = t.Write("blank.txt", " \n\t\n");
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new TextResource(empty), report));
        Assert.Empty(TestFiles.ReadAll(new TextResource(blank), report));
        Assert.Equal(2, report.EmptyDocumentsSkipped);
        Assert.Equal(0, report.DocumentsRead);
        Assert.Equal([empty, blank], report.IssuesOf(ResourceIssueKind.EmptyDocument).Select(i => i.Path));

        var e = Assert.Throws<ResourceException>(() => TestFiles.ReadAll(new TextResource(empty), new ResourceReport(strict: true)));
        Assert.Equal(ResourceIssueKind.EmptyDocument, e.Kind);
        Assert.Contains("empty", e.Message);
    }

    [Fact]
    public void MissingFileIsCountedAsUnreadable()
    {
        using var t = new TempDir();
        var path = t.Write("gone.txt", "soon deleted");
        var resource = ResourceSpec.Parse($"text:{path}"); // exists when parsed...
        File.Delete(path);                                 // ...gone when read
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(resource, report));
        Assert.Equal(1, report.UnreadableFiles);
        var issue = Assert.Single(report.Issues);
        Assert.Equal(path, issue.Path);
        Assert.Contains("cannot read", issue.Message);
        Assert.Equal(0, report.FilesRead);
    }

    [Fact]
    public void FolderGivenAsFileIsCountedAsUnreadable()
    {
        using var t = new TempDir();
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new TextResource(t.Root), report));
        Assert.Equal(1, report.UnreadableFiles);
    }

    [Fact]
    public void FileWithoutReadPermissionIsCountedAsUnreadable()
    {
        if (OperatingSystem.IsWindows()) { Assert.Skip("Unix permissions only"); return; }
        using var t = new TempDir();
        var path = t.Write("secret.txt", "classified");
        File.SetUnixFileMode(path, UnixFileMode.None);
        try
        {
            try { File.ReadAllBytes(path); Assert.Skip("running as root: permissions do not stop reads here"); }
            catch (UnauthorizedAccessException) { }
            var report = new ResourceReport();
            Assert.Empty(TestFiles.ReadAll(new TextResource(path), report));
            Assert.Equal(1, report.UnreadableFiles);
            Assert.Contains("permissions", report.Issues[0].Message);
        }
        finally { File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite); }
    }
}
