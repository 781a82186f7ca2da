namespace Cas.Resources.Tests;

public class ResourceReportTests
{
    [Fact]
    public void SummaryListsNonZeroCountsAndIssues()
    {
        using var t = new TempDir();
        var jsonl = t.Write("d.jsonl", "{\"text\":\"one\"}\n{broken\n{\"text\":\"\"}\n{\"other\":1}\n");
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new JsonResource(jsonl, "text", lines: true), report);
        Assert.Single(docs);

        var summary = report.Summary();
        Assert.Contains("documents read: 1 (from 1 files)", summary);
        Assert.Contains("empty documents skipped: 1", summary);
        Assert.Contains("malformed JSON lines skipped: 1", summary);
        Assert.Contains("records where the field path matched nothing: 1", summary);
        Assert.Contains($"{jsonl}:2: malformed JSON line", summary);
        Assert.DoesNotContain("files unreadable", summary);
        Assert.Equal(3, report.Issues.Count);
    }

    [Fact]
    public void SummaryCutsLongIssueListsButKeepsExactCounts()
    {
        using var t = new TempDir();
        var lines = string.Concat(Enumerable.Range(0, 30).Select(i => "not json\n"));
        var path = t.Write("bad.jsonl", lines);
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new JsonResource(path, "text", lines: true), report));
        Assert.Equal(30, report.MalformedJsonLines);
        var summary = report.Summary(maxIssues: 5);
        Assert.Contains("malformed JSON lines skipped: 30", summary);
        Assert.Contains("... and 25 more", summary);
    }

    [Fact]
    public void NotesAreCountedButNotProblems()
    {
        var samples = Path.Combine(TestFiles.Samples, "slack");
        // #general (read first) has a join notice: a note, so strict mode goes on; the empty #quiet channel
        // (read last) is a skipped document, so strict mode stops there.
        var e = Assert.Throws<ResourceException>(() => TestFiles.ReadAll(new SlackResource(samples), new ResourceReport(strict: true)));
        Assert.Equal(ResourceIssueKind.EmptyDocument, e.Kind);
        Assert.Contains("slack:#quiet", e.Message);
        var lenient = new ResourceReport();
        TestFiles.ReadAll(new SlackResource(samples), lenient);
        Assert.Equal(2, lenient.Count(ResourceIssueKind.SystemMessageSkipped));
        Assert.DoesNotContain(lenient.Issues, i => i.Kind == ResourceIssueKind.SystemMessageSkipped);
        Assert.False(ResourceIssue.IsProblem(ResourceIssueKind.QuotedLinesTrimmed));
        Assert.True(ResourceIssue.IsProblem(ResourceIssueKind.MalformedJson));
    }
}
