namespace Cas.Resources.Tests;

public class MarkdownResourceTests
{
    const string Sample = """
        ---
        title: "Getting started"
        author: Ada Lovelace
        tags:
          - intro
        ---
        # Welcome

        Hello <!-- a note for editors --> world.
        <!--
        A comment over
        several lines.
        -->
        Setup
        =====

        Install the *tool* first.

        ```sh
        # not a heading <!-- kept inside code -->
        ```

        ## Install ##
        Run it.
        Details
        -------
        Done.
        """;

    [Fact]
    public void FrontMatterHeadingsCommentsAndCodeFences()
    {
        var md = MarkdownResource.Convert(Sample);
        Assert.Equal("""
            Welcome

            Hello world.

            Setup

            Install the *tool* first.

            ```sh
            # not a heading <!-- kept inside code -->
            ```

            Install

            Run it.

            Details

            Done.
            """, md.Text);
        Assert.Equal("Getting started", md.Title);
        Assert.Equal("Ada Lovelace", md.FrontMatter["author"]);
        Assert.False(md.FrontMatter.ContainsKey("tags")); // lists are not simple values
        Assert.Equal("Welcome\nSetup\n  Install\n  Details", md.Outline);
    }

    [Fact]
    public void DocumentCarriesTitleOutlineAndFrontMatter()
    {
        using var t = new TempDir();
        var path = t.Write("guide.md", Sample);
        var doc = Assert.Single(TestFiles.ReadAll(new MarkdownResource(path)));
        Assert.Equal("guide.md", doc.Id);
        Assert.Equal("markdown", doc.Metadata["kind"]);
        Assert.Equal("Getting started", doc.Metadata["title"]);
        Assert.Equal("Ada Lovelace", doc.Metadata["author"]);
        Assert.Equal("Welcome\nSetup\n  Install\n  Details", doc.Metadata["outline"]);
        Assert.DoesNotContain("---", doc.Text);
        Assert.DoesNotContain("editors", doc.Text);
    }

    [Fact]
    public void TitleFallsBackToFirstLevelOneHeading()
    {
        var md = MarkdownResource.Convert("Intro text\n\n## Minor\n\n# Main Title #\n\nBody");
        Assert.Equal("Main Title", md.Title);
        Assert.Equal("  Minor\nMain Title", md.Outline); // indent is relative to the shallowest level
    }

    [Fact]
    public void UnclosedFrontMatterIsJustText()
    {
        var md = MarkdownResource.Convert("---\ntitle: x\nno closing line");
        Assert.Null(md.Title);
        Assert.Equal("---\ntitle: x\nno closing line", md.Text);
        Assert.Empty(md.FrontMatter);
    }

    [Fact]
    public void HeadingMarkersNeedASpaceAndTildeFencesWork()
    {
        var md = MarkdownResource.Convert("#hashtag is text\n~~~~\n# inside\n~~~\nstill code\n~~~~\n#### Four");
        Assert.Equal("#hashtag is text\n~~~~\n# inside\n~~~\nstill code\n~~~~\n\nFour", md.Text);
        Assert.Equal("Four", md.Outline);
    }

    [Fact]
    public void CommentOnlyFileIsAnEmptyDocument()
    {
        using var t = new TempDir();
        var path = t.Write("empty.md", "---\ntitle: Nothing\n---\n<!-- only a comment -->\n");
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new MarkdownResource(path), report));
        Assert.Equal(1, report.EmptyDocumentsSkipped);
    }
}
