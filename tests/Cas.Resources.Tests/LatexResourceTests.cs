namespace Cas.Resources.Tests;

public class LatexResourceTests
{
    static string MainTex => Path.Combine(TestFiles.Samples, "latex", "main.tex");

    [Fact]
    public void SampleProjectBecomesPlainTextWithIncludesInlined()
    {
        var report = new ResourceReport();
        var doc = Assert.Single(TestFiles.ReadAll(new LatexResource(MainTex), report));
        Assert.Equal("main.tex", doc.Id);
        Assert.Equal("""
            Cartridges for Long Documents

            Abstract

            We train a small KV cache per corpus.

            Introduction

            Long documents are costly to keep in context.
            Loop text.

            Method

            We use 50% of the budget, see [eyuboglu2025] and Section [sec:intro].

            - Fast training
            - Small memory (About 1 GB.)

            The loss is $L = -\sum_i \log p(x_i)$ and
            \begin{equation}
              \mathcal{L} = \mathrm{KL}(p \| q)
            \end{equation}

            Details

            Naïve café résumé, with a link and https://example.com/x_y.
            """, doc.Text);
        Assert.Equal("Cartridges for Long Documents", doc.Metadata["title"]);
        Assert.Equal("Ada Lovelace, Alan Turing", doc.Metadata["author"]);
        Assert.Equal("March 2024", doc.Metadata["date"]);
        Assert.Equal("Introduction\nMethod\n  Details", doc.Metadata["outline"]);
        Assert.Equal("4", doc.Metadata["files"]); // main, intro, loop, details
    }

    [Fact]
    public void MissingIncludesAndCyclesAreReportedNotFatal()
    {
        var report = new ResourceReport();
        TestFiles.ReadAll(new LatexResource(MainTex), report);

        var missing = report.IssuesOf(ResourceIssueKind.MissingInclude).Single();
        Assert.Equal(MainTex, missing.Path);
        Assert.Equal(26, missing.Line);
        Assert.Contains(@"\input{sections/missing}", missing.Message);
        Assert.Contains("missing.tex", missing.Message);

        var cycle = report.IssuesOf(ResourceIssueKind.IncludeCycle).Single();
        Assert.EndsWith("loop.tex", cycle.Path);
        Assert.Equal(2, cycle.Line);
        Assert.Contains("main.tex -> intro.tex -> loop.tex -> intro.tex", cycle.Message);

        var e = Assert.Throws<ResourceException>(() => TestFiles.ReadAll(new LatexResource(MainTex), new ResourceReport(strict: true)));
        Assert.Equal(ResourceIssueKind.IncludeCycle, e.Kind); // the cycle comes first in reading order
    }

    [Theory]
    [InlineData("50\\% done % trailing comment", "50\\% done ")]
    [InlineData("a \\\\% after a line break", "a \\\\")]
    [InlineData("no comment", "no comment")]
    [InlineData("% whole line", "")]
    public void CommentsStopAtUnescapedPercent(string line, string expected) =>
        Assert.Equal(expected, LatexResource.StripComment(line, out _));

    [Fact]
    public void CommentAtLineEndJoinsLikeTeX()
    {
        using var t = new TempDir();
        var path = t.Write("a.tex", "super%\ncalifragilistic\n%only comment\nnext line\n");
        Assert.Equal("supercalifragilistic\nnext line", Assert.Single(TestFiles.ReadAll(new LatexResource(path))).Text);
    }

    [Fact]
    public void MathAndVerbatimAreKeptAsWritten()
    {
        var text = LatexResource.Convert("""
            Inline \(a_b\) and display \[ \frac{1}{2} \] and $$x^2$$ and \$5.
            \begin{align*}
              y &= \textbf{not touched} \\
            \end{align*}
            \begin{verbatim}
            \section{literal} 100%
            \end{verbatim}
            """).Text;
        Assert.Equal("""
            Inline \(a_b\) and display \[ \frac{1}{2} \] and $$x^2$$ and $5.
            \begin{align*}
              y &= \textbf{not touched} \\
            \end{align*}

            \section{literal} 100%
            """, text);
    }

    [Fact]
    public void FormattingMacrosKeepTheirTextAndLayoutMacrosGo()
    {
        var tex = LatexResource.Convert("""
            \begin{document}
            \section[Short]{A \emph{Long} Title}\label{s}
            {\bf Bold} and \textsc{Small Caps}\footnote{note \textit{here}} ``quoted'' text~here.
            \begin{figure}[htbp]
            \centering
            \includegraphics[width=\linewidth]{fig.png}
            \caption{A figure.}
            \end{figure}
            \begin{enumerate}
            \item[(a)] first
            \item second
            \end{enumerate}
            \unknownmacro{kept words}
            \end{document}
            """);
        Assert.Equal("""
            A Long Title

            Bold and Small Caps (note here) "quoted" text here.

            A figure.

            - (a) first
            - second

            kept words
            """, tex.Text);
        Assert.Equal("A Long Title", tex.Outline);
        Assert.Null(tex.Title);
    }

    [Fact]
    public void UnreadableMainFileIsReported()
    {
        using var t = new TempDir();
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new LatexResource(t.PathOf("absent.tex")), report));
        Assert.Equal(1, report.UnreadableFiles);
    }
}
