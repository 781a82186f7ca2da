namespace Cas.Resources.Tests;

public class ResourceSpecTests
{
    [Fact]
    public void EachKindParsesToItsResource()
    {
        using var t = new TempDir();
        var file = t.Write("a.txt", "x");
        t.Write("d/b.md", "# b");

        Assert.IsType<TextResource>(ResourceSpec.Parse($"text:{file}"));
        Assert.IsType<MarkdownResource>(ResourceSpec.Parse($"markdown:{file}"));
        Assert.IsType<LatexResource>(ResourceSpec.Parse($"latex:{file}"));
        Assert.IsType<SlackResource>(ResourceSpec.Parse($"slack:{t.Root}"));
        Assert.IsType<EmailResource>(ResourceSpec.Parse($"email:{file}"));
        Assert.IsType<EmailResource>(ResourceSpec.Parse($"email:{t.Root}"));
        Assert.IsType<DirectoryResource>(ResourceSpec.Parse($"DIR:{t.Root}")); // kind is case-insensitive

        var jsonl = Assert.IsType<JsonResource>(ResourceSpec.Parse($"jsonl:{file}#a.b[*].c"));
        Assert.True(jsonl.Lines);
        Assert.Equal("a.b[*].c", jsonl.Field.Text);
        Assert.True(jsonl.Field.HasWildcard);
        var json = Assert.IsType<JsonResource>(ResourceSpec.Parse($"json:{file}#input"));
        Assert.False(json.Lines);
        Assert.Equal("json", json.Kind);
    }

    [Fact]
    public void DirSpecSplitsTheGlobAtTheFirstWildcardSegment()
    {
        using var t = new TempDir();
        Directory.CreateDirectory(t.PathOf("docs"));
        var dir = Assert.IsType<DirectoryResource>(ResourceSpec.Parse($"dir:{t.PathOf("docs")}/**/*.md"));
        Assert.Equal(t.PathOf("docs"), dir.Root);
        Assert.Equal("**/*.md", dir.Glob.Pattern);
        Assert.Equal("docs", dir.IdPrefix);
        Assert.Null(dir.JsonField);

        var withField = Assert.IsType<DirectoryResource>(ResourceSpec.Parse($"dir:{t.PathOf("docs")}/*.jsonl#input"));
        Assert.Equal("*.jsonl", withField.Glob.Pattern);
        Assert.Equal("input", withField.JsonField!.Text);

        var withOption = Assert.IsType<DirectoryResource>(ResourceSpec.Parse($"dir:{t.PathOf("docs")}", glob: "**/*.tex"));
        Assert.Equal("**/*.tex", withOption.Glob.Pattern);
        Assert.Equal(Glob.All.Pattern, Assert.IsType<DirectoryResource>(ResourceSpec.Parse($"dir:{t.PathOf("docs")}")).Glob.Pattern);

        Assert.Equal((".", "*.md"), ResourceSpec.SplitGlob("*.md"));
        Assert.Equal(("a/b", "c?/*.txt"), ResourceSpec.SplitGlob("a/b/c?/*.txt"));
        Assert.Equal(("a/b", (string?)null), ResourceSpec.SplitGlob("a/b"));
    }

    [Fact]
    public void HashIsPartOfThePathForKindsWithoutAField()
    {
        using var t = new TempDir();
        var file = t.Write("notes#1.txt", "x");
        var text = Assert.IsType<TextResource>(ResourceSpec.Parse($"text:{file}"));
        Assert.Equal(file, text.Path);
    }

    [Theory]
    [InlineData("", "empty resource spec")]
    [InlineData("notes.txt", "has no kind")]
    [InlineData("pdf:paper.pdf", "unknown resource kind 'pdf'")]
    [InlineData("text:", "has no path")]
    [InlineData("jsonl:#input", "has no path")]
    [InlineData("jsonl:data.jsonl#", "empty #field")]
    public void BadSpecsSayWhatIsWrong(string spec, string expected)
    {
        var e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse(spec));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void UnknownKindListsTheKnownOnes()
    {
        var e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse("pdf:x"));
        foreach (var kind in ResourceSpec.Kinds) Assert.Contains(kind, e.Message);
    }

    [Fact]
    public void JsonWithoutFieldAsksForOne()
    {
        using var t = new TempDir();
        var file = t.Write("data.jsonl", "{}");
        var e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"jsonl:{file}"));
        Assert.Contains("needs the field", e.Message);
        Assert.Contains($"jsonl:{file}#FIELD", e.Message);
        e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"json:{file}"));
        Assert.Contains("needs the field", e.Message);
    }

    [Fact]
    public void MissingPathsAndWrongPathTypesAreErrors()
    {
        using var t = new TempDir();
        var missing = t.PathOf("nope.txt");
        var e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"text:{missing}"));
        Assert.Contains("not found", e.Message);
        Assert.Equal(missing, e.Path);

        e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"markdown:{t.Root}"));
        Assert.Contains($"use dir:{t.Root}", e.Message);

        var file = t.Write("a.txt", "x");
        e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"slack:{file}"));
        Assert.Contains("is a file, not a folder", e.Message);
        Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"dir:{t.PathOf("nodir")}/*.md"));
        Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"email:{missing}"));
        e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"text:{file}", glob: "*.md"));
        Assert.Contains("only applies to dir", e.Message);
    }

    [Theory]
    [InlineData("a..b", "empty name")]
    [InlineData("items[x]", "is not an index")]
    [InlineData("items[*", "no closing")]
    [InlineData("a.", "ends with '.'")]
    public void BadFieldPathsAreErrors(string field, string expected)
    {
        using var t = new TempDir();
        var file = t.Write("d.jsonl", "{}");
        var e = Assert.Throws<ResourceException>(() => ResourceSpec.Parse($"jsonl:{file}#{field}"));
        Assert.Contains(expected, e.Message);
        Assert.Contains(field, e.Message);
    }
}
