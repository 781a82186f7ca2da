using System.Text;
using System.Text.Json;

namespace Cas.Resources.Tests;

public class JsonResourceTests
{
    [Fact]
    public void JsonlLineIsOneDocumentWithLineIds()
    {
        using var t = new TempDir();
        var path = t.Write("notes.jsonl", """
            {"input": "First note.", "source": "wiki", "score": 3, "long": null}

            {"input": "Second\r\nnote.", "source": "mail"}
            """);
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new JsonResource(path, "input", lines: true), report);

        Assert.Equal(["notes.jsonl:1", "notes.jsonl:3"], docs.Select(d => d.Id));
        Assert.Equal(["First note.", "Second\nnote."], docs.Select(d => d.Text));
        Assert.Equal($"{path}:3", docs[1].Source);
        Assert.Equal("wiki", docs[0].Metadata["source"]);
        Assert.Equal("3", docs[0].Metadata["score"]);
        Assert.Equal("1", docs[0].Metadata["line"]);
        Assert.Equal("input", docs[0].Metadata["field"]);
        Assert.False(docs[0].Metadata.ContainsKey("input"));
        Assert.False(docs[0].Metadata.ContainsKey("shape"));
        Assert.Empty(docs[0].Questions);
        Assert.False(report.HasProblems); // the blank line 2 is not a problem
    }

    [Fact]
    public void NestedPathsIndexesAndWildcards()
    {
        using var t = new TempDir();
        var path = t.Write("book.json", """
            {"meta": {"doc": {"body": "nested text"}},
             "items": [{"text": "alpha"}, {"note": "no text here"}, {"text": "gamma"}],
             "paragraphs": ["p1", "p2"]}
            """);
        Assert.Equal("nested text", Assert.Single(TestFiles.ReadAll(new JsonResource(path, "meta.doc.body", lines: false))).Text);

        var items = TestFiles.ReadAll(new JsonResource(path, "items[*].text", lines: false));
        Assert.Equal(["book.json:items[0].text", "book.json:items[2].text"], items.Select(d => d.Id));
        Assert.Equal(["alpha", "gamma"], items.Select(d => d.Text));

        Assert.Equal("gamma", Assert.Single(TestFiles.ReadAll(new JsonResource(path, "items[2].text", lines: false))).Text);
        // an array of strings is one text, joined by blank lines
        Assert.Equal("p1\n\np2", Assert.Single(TestFiles.ReadAll(new JsonResource(path, "paragraphs", lines: false))).Text);
    }

    [Fact]
    public void TopLevelArrayElementsAreDocuments()
    {
        using var t = new TempDir();
        var path = t.Write("list.json", """[{"body": "one"}, {"body": "two"}, {"body": 42}]""");
        var docs = TestFiles.ReadAll(new JsonResource(path, "body", lines: false));
        Assert.Equal(["list.json:[0]", "list.json:[1]", "list.json:[2]"], docs.Select(d => d.Id));
        Assert.Equal(["one", "two", "42"], docs.Select(d => d.Text));
        Assert.Equal($"{path}[1]", docs[1].Source);
    }

    [Fact]
    public void MalformedLinesAreSkippedWithLineNumbers()
    {
        using var t = new TempDir();
        var path = t.Write("mixed.jsonl", "{\"text\": \"good\"}\n{\"text\": \"no end\"\n[1, 2\n{\"text\": \"also good\"}\n");
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new JsonResource(path, "text", lines: true), report);
        Assert.Equal(["mixed.jsonl:1", "mixed.jsonl:4"], docs.Select(d => d.Id));
        Assert.Equal(2, report.MalformedJsonLines);
        Assert.Equal([2, 3], report.IssuesOf(ResourceIssueKind.MalformedJson).Select(i => i.Line));
        Assert.All(report.Issues, i => Assert.Equal(path, i.Path));
        Assert.All(report.Issues, i => Assert.Contains("line skipped", i.Message));
    }

    [Fact]
    public void StrictModeNamesFileAndLineOfTheMalformedLine()
    {
        using var t = new TempDir();
        var path = t.Write("mixed.jsonl", "{\"text\": \"good\"}\n{oops}\n{\"text\": \"never reached\"}\n");
        var seen = new List<string>();
        var e = Assert.Throws<ResourceException>(() =>
        {
            foreach (var d in new JsonResource(path, "text", lines: true).Read(new ResourceReport(strict: true))) seen.Add(d.Id);
        });
        Assert.Equal(["mixed.jsonl:1"], seen); // streaming: the good first line came out before the error
        Assert.Equal(path, e.Path);
        Assert.Equal(2, e.Line);
        Assert.Equal(ResourceIssueKind.MalformedJson, e.Kind);
        Assert.StartsWith($"{path}:2: malformed JSON", e.Message);
    }

    [Fact]
    public void MalformedJsonFileIsReportedWithItsLine()
    {
        using var t = new TempDir();
        var path = t.Write("bad.json", "[\n  {\"text\": \"a\"},\n  {\"text\": }\n]");
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new JsonResource(path, "text", lines: false), report));
        var issue = Assert.Single(report.Issues);
        Assert.Equal(ResourceIssueKind.MalformedJson, issue.Kind);
        Assert.Equal(3, issue.Line);
    }

    [Fact]
    public void FieldPathThatMatchesNothingSaysWhichKeysExist()
    {
        using var t = new TempDir();
        var path = t.Write("d.jsonl", "{\"document\": \"text\", \"title\": \"t\"}\n\"just a string\"\n");
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new JsonResource(path, "documnt", lines: true), report));
        Assert.Equal(2, report.UnmatchedFieldPaths);
        var first = report.Issues[0];
        Assert.Equal(1, first.Line);
        Assert.Contains("field path 'documnt' matched nothing", first.Message);
        Assert.Contains("record keys: document, title", first.Message);
        Assert.Contains("not an object", report.Issues[1].Message);

        var e = Assert.Throws<ResourceException>(() => TestFiles.ReadAll(new JsonResource(path, "documnt", lines: true), new ResourceReport(strict: true)));
        Assert.Equal(ResourceIssueKind.FieldPathUnmatched, e.Kind);
        Assert.Equal(1, e.Line);
    }

    [Fact]
    public void FieldThatIsNotTextIsCounted()
    {
        using var t = new TempDir();
        var path = t.Write("d.jsonl", "{\"text\": {\"nested\": 1}}\n{\"text\": null}\n{\"text\": [1, 2]}\n{\"text\": \"ok\"}\n{\"text\": \"  \"}\n");
        var report = new ResourceReport();
        var doc = Assert.Single(TestFiles.ReadAll(new JsonResource(path, "text", lines: true), report));
        Assert.Equal("d.jsonl:4", doc.Id);
        Assert.Equal(3, report.Count(ResourceIssueKind.FieldNotText));
        Assert.Contains("is Object, not text", report.Issues[0].Message);
        Assert.Equal(1, report.EmptyDocumentsSkipped);
    }

    [Fact]
    public void InvalidUtf8InsideALineIsReplacedAndCountedOncePerFile()
    {
        using var t = new TempDir();
        var bytes = new List<byte>();
        bytes.AddRange(Encoding.UTF8.GetBytes("{\"text\": \"caf"));
        bytes.Add(0xE9);
        bytes.AddRange(Encoding.UTF8.GetBytes("\"}\n{\"text\": \"na"));
        bytes.Add(0xEF);
        bytes.AddRange(Encoding.UTF8.GetBytes("ve\"}\n"));
        var path = t.WriteBytes("latin.jsonl", bytes.ToArray());
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new JsonResource(path, "text", lines: true), report);
        Assert.Equal(["caf\uFFFD", "na\uFFFDve"], docs.Select(d => d.Text));
        Assert.Equal(1, report.FilesDecodedWithReplacement);
        Assert.Equal(2, report.ReplacementCharacters);
        Assert.Equal(1, report.Issues.Single().Line);
    }

    [Fact]
    public void LevalShapeQuestionsAreDetected()
    {
        using var t = new TempDir();
        var path = t.Write("exam.jsonl", """
            {"input": "A long story.", "instructions": ["Who?\n (A) me (B) you", "Where?"], "outputs": ["(A) me", ["home", "at home"]], "source": "demo", "evaluation": "exam"}
            {"input": "Another story.", "instructions": ["Q1", "Q2", "Q3"], "outputs": ["A1", "A2"], "source": "demo", "evaluation": "exam"}
            """);
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new JsonResource(path, "input", lines: true), report);

        Assert.Equal("leval", docs[0].Metadata["shape"]);
        Assert.Equal("exam", docs[0].Metadata["evaluation"]);
        Assert.Equal(2, docs[0].Questions.Count);
        Assert.Equal("Who?\n (A) me (B) you", docs[0].Questions[0].Question);
        Assert.Equal(["(A) me"], docs[0].Questions[0].Answers);
        Assert.Equal(["home", "at home"], docs[0].Questions[1].Answers);

        Assert.Equal(["Q1", "Q2"], docs[1].Questions.Select(q => q.Question)); // unaligned: extra question dropped, counted
        var issue = Assert.Single(report.Issues);
        Assert.Equal(ResourceIssueKind.QuestionsMismatched, issue.Kind);
        Assert.Equal(2, issue.Line);
        Assert.Contains("3 instructions but 2 outputs", issue.Message);

        var off = TestFiles.ReadAll(new JsonResource(path, "input", lines: true) { DetectQuestions = false });
        Assert.All(off, d => Assert.Empty(d.Questions));
    }

    [Fact]
    public void SqualityShapeQuestionsAndIdAreDetected()
    {
        using var t = new TempDir();
        var path = t.Write("train.jsonl", """
            {"metadata": {"passage_id": "123", "uid": "u1", "license": "PD"}, "document": "Story one.", "questions": [{"question_text": "What is the plot?", "question_number": 1, "responses": [{"worker_id": "w1", "response_text": "Plot A."}, {"worker_id": "w2", "response_text": "Plot B."}]}, {"question_text": "Who is Bo?", "responses": []}]}
            {"metadata": {"passage_id": "123"}, "document": "Same id again.", "questions": [{"question_text": "Q", "responses": [{"response_text": "R"}]}]}
            """);
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new JsonResource(path, "document", lines: true), report);
        Assert.Equal("train.jsonl:passage_id=123", docs[0].Id);
        Assert.Equal("train.jsonl:2", docs[1].Id); // a repeated id falls back to the line
        Assert.Equal("squality", docs[0].Metadata["shape"]);
        Assert.Equal("123", docs[0].Metadata["passage_id"]);
        Assert.Equal("PD", docs[0].Metadata["license"]);
        Assert.Equal("What is the plot?", docs[0].Questions[0].Question);
        Assert.Equal(["Plot A.", "Plot B."], docs[0].Questions[0].Answers);
        Assert.Empty(docs[0].Questions[1].Answers);
        Assert.Contains("no responses", Assert.Single(report.Issues).Message);
    }

    [Fact]
    public void IdFieldNamesTheDocuments()
    {
        using var t = new TempDir();
        var path = t.Write("d.jsonl", "{\"key\": \"alpha\", \"text\": \"a\"}\n{\"text\": \"no key\"}\n");
        var docs = TestFiles.ReadAll(new JsonResource(path, "text", lines: true) { IdField = JsonFieldPath.Parse("key") });
        Assert.Equal(["d.jsonl:key=alpha", "d.jsonl:2"], docs.Select(d => d.Id));
    }

    [Fact]
    public void FieldPathEvaluationReportsConcretePaths()
    {
        using var json = JsonDocument.Parse("""{"a": [{"b": [10, 20]}, {"b": [30]}], "c": {"d": "x"}}""");
        var results = new List<(string Path, JsonElement Value)>();
        JsonFieldPath.Parse("a[*].b[*]").Evaluate(json.RootElement, results);
        Assert.Equal(["a[0].b[0]", "a[0].b[1]", "a[1].b[0]"], results.Select(r => r.Path));
        Assert.Equal([10, 20, 30], results.Select(r => r.Value.GetInt32()));

        results.Clear();
        JsonFieldPath.Parse("a[5].b").Evaluate(json.RootElement, results);
        Assert.Empty(results);
        Assert.Equal("d", JsonFieldPath.Parse("c.d").LastName);
        Assert.False(JsonFieldPath.Parse("c.d").HasWildcard);
    }
}
