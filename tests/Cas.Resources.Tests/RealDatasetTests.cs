using Cas.Tests.Common;

namespace Cas.Resources.Tests;

/// <summary>The shared long-document datasets load with the numbers in ../shared/datasets/README.md.</summary>
public class RealDatasetTests
{
    [Theory]
    [InlineData("leval/closed/quality.jsonl", 15, 202, 2052, 4705, 4978)]
    [InlineData("leval/closed/tpo.jsonl", 15, 269, 2804, 3014, 3168)]
    [InlineData("leval/closed/coursera.jsonl", 15, 172, 3998, 6116, 13235)]
    [InlineData("leval/open/scientific_qa.jsonl", 23, 184, 1859, 3299, 4477)]
    [InlineData("leval/open/multidoc_qa.jsonl", 23, 158, 2201, 2507, 5722)]
    public void LevalFilesLoadWithTheirQuestions(string file, int docs, int questions, int minWords, int medianWords, int maxWords)
    {
        var path = TestPaths.RequireShared("datasets/" + file);
        var report = new ResourceReport(strict: true);
        var list = TestFiles.ReadAll(ResourceSpec.Parse($"jsonl:{path}#input"), report);

        Assert.Equal(docs, list.Count);
        Assert.Equal(questions, list.Sum(d => d.Questions.Count));
        var name = Path.GetFileName(file);
        Assert.Equal(Enumerable.Range(1, docs).Select(i => $"{name}:{i}"), list.Select(d => d.Id));
        Assert.All(list, d => Assert.Equal("leval", d.Metadata["shape"]));
        Assert.All(list, d => Assert.All(d.Questions, q => Assert.Single(q.Answers)));
        Assert.All(list, d => Assert.All(d.Questions, q => Assert.False(string.IsNullOrWhiteSpace(q.Question))));

        var words = list.Select(d => WordCount(d.Text)).Order().ToList();
        Assert.Equal(minWords, words[0]);
        Assert.Equal(medianWords, words[words.Count / 2]); // odd counts: the middle one
        Assert.Equal(maxWords, words[^1]);
        Assert.Equal(docs, report.DocumentsRead);
        Assert.False(report.HasProblems);
    }

    [Fact]
    public void QualityAnswersAreLetteredOptions()
    {
        var path = TestPaths.RequireShared("datasets/leval/closed/quality.jsonl");
        var docs = TestFiles.ReadAll(ResourceSpec.Parse($"jsonl:{path}#input"));
        Assert.All(docs.SelectMany(d => d.Questions), q => Assert.Matches(@"^\([A-D]\) ", q.Answers[0]));
        Assert.Equal("quality_raw", docs[0].Metadata["source"]);
    }

    [Fact]
    public void SqualityLoadsFiftyStoriesWithFiveQuestionsAndFourAnswers()
    {
        var path = TestPaths.RequireShared("datasets/squality/train.jsonl");
        var report = new ResourceReport(strict: true);
        var docs = TestFiles.ReadAll(ResourceSpec.Parse($"jsonl:{path}#document"), report);

        Assert.Equal(50, docs.Count);
        Assert.All(docs, d => Assert.Equal(5, d.Questions.Count));
        Assert.All(docs, d => Assert.All(d.Questions, q => Assert.Equal(4, q.Answers.Count)));
        Assert.All(docs, d => Assert.Equal("What is the plot of the story?", d.Questions[0].Question));
        Assert.All(docs, d => Assert.Equal("squality", d.Metadata["shape"]));
        Assert.All(docs, d => Assert.Equal($"train.jsonl:passage_id={d.Metadata["passage_id"]}", d.Id));
        Assert.Equal(50, docs.Select(d => d.Id).Distinct().Count());
        Assert.Equal("train.jsonl:passage_id=61263", docs[0].Id);

        var words = docs.Select(d => WordCount(d.Text)).ToList();
        Assert.InRange(words.Min(), 3300, 3400); // README: 3.3k-6.5k words each
        Assert.InRange(words.Max(), 6500, 6600);
        Assert.False(report.HasProblems);
    }

    [Fact]
    public void LevalFolderLoadsThroughADirSpec()
    {
        var root = TestPaths.RequireShared("datasets/leval");
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(ResourceSpec.Parse($"dir:{root}/**/*.jsonl#input"), report);
        Assert.Equal(15 + 15 + 15 + 23 + 23, docs.Count);
        Assert.Equal(202 + 269 + 172 + 184 + 158, docs.Sum(d => d.Questions.Count));
        Assert.Equal("leval/closed/coursera.jsonl:1", docs[0].Id); // ordinal walk: closed/ before open/, coursera first
        Assert.Equal("leval/open/scientific_qa.jsonl:23", docs[^1].Id);
        Assert.Equal(5, report.FilesRead);
    }

    /// <summary>Words as Python's str.split() counts them (runs of white space separate).</summary>
    static int WordCount(string s)
    {
        int n = 0;
        bool inWord = false;
        foreach (var c in s)
        {
            bool ws = char.IsWhiteSpace(c) || c is '\u001c' or '\u001d' or '\u001e' or '\u001f';
            if (!ws && !inWord) n++;
            inWord = !ws;
        }
        return n;
    }
}
