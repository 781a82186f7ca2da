using System.Text.Json;
using System.Text.RegularExpressions;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Eval;
using Cas.Service;
using Cas.Service.V1;
using Cas.Tests.Common;

namespace Cas.Eval.Tests;

/// <summary>
/// The data set side of `cas eval collection --dataset`: loaders on hand-made JSON lines, splitting, the gold and ICL
/// rules, ROUGE-L on hand-computed cases, and the option choice rule.
/// </summary>
public sealed class DatasetTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("cas-dataset-test-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    string Write(string name, params object[] records)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllLines(p, records.Select(r => JsonSerializer.Serialize(r)));
        return p;
    }

    static readonly object QualityRecord = new
    {
        instructions = new[]
        {
            "What colour was the ship?\n\n (A) Red as blood. \n (B) Blue,  like the sea. \n (C) Green \n (D) It had no\ncolour at all. ",
            "Who built it?\n\n (A) Ann \n (B) Ben ",
        },
        outputs = new[] { "(B) Blue, like the sea.", "(A) Ann" },
        input = "The ship was blue. Ann built it.",
        source = "quality", evaluation = "exam",
    };

    [Fact]
    public void LEvalMultipleChoiceLoadsOptionsAndGoldLetters()
    {
        var ds = Datasets.Load(Write("quality.jsonl", QualityRecord,
            new { instructions = new[] { "Second doc?\n\n (A) x \n (B) y " }, outputs = new[] { "(B) y" }, input = "Another document.", source = "q", evaluation = "exam" }));
        Assert.Equal(("quality", "leval", 2, 3), (ds.Name, ds.Format, ds.Documents.Count, ds.Questions));
        var d = ds.Documents[0];
        Assert.Equal(("quality:1", "The ship was blue. Ann built it."), (d.Id, d.Text));
        var q = d.Questions[0];
        Assert.Equal("quality:1#q0", q.Id);
        Assert.True(q.IsMultipleChoice);
        Assert.Equal([new DatasetOption('A', "Red as blood."), new DatasetOption('B', "Blue, like the sea."), new DatasetOption('C', "Green"), new DatasetOption('D', "It had no colour at all.")], q.Options);
        Assert.Equal("B", q.GoldLetters);
        Assert.Equal(["(B) Blue, like the sea."], q.References);
        Assert.StartsWith("What colour was the ship?", q.Text);
        Assert.Equal([new DatasetOption('A', "Ann"), new DatasetOption('B', "Ben")], d.Questions[1].Options);
        Assert.Equal("A", d.Questions[1].GoldLetters);
        Assert.Equal("quality:2", ds.Documents[1].Id);
        Assert.Single(Datasets.Load(Write("q2.jsonl", QualityRecord, QualityRecord), maxDocuments: 1).Documents);
    }

    [Fact]
    public void LEvalLetterAnswersOpenQuestionsAndMultiLetterGold()
    {
        var ds = Datasets.Load(Write("coursera.jsonl", new
        {
            instructions = new[] { "Question 1. Which are even?\nA. 2\nB. 3\nC. 4\nD. 5", "why did she go\nA. to paint\nB. to sell" },
            outputs = new[] { "CA", "B" }, input = "Numbers.", source = "coursera", evaluation = "exam",
        }));
        var q = ds.Documents[0].Questions;
        Assert.Equal([new DatasetOption('A', "2"), new DatasetOption('B', "3"), new DatasetOption('C', "4"), new DatasetOption('D', "5")], q[0].Options);
        Assert.Equal("AC", q[0].GoldLetters); // letters sorted
        Assert.Equal("B", q[1].GoldLetters);

        var open = Datasets.Load(Write("scientific_qa.jsonl", new
        {
            instructions = new[] { "How did they obtain the dataset?", "What is A. B. Smith's role?" },
            outputs = new[] { "public resources", "author" }, input = "A paper.", source = "qasper", evaluation = "f1",
        }));
        Assert.All(open.Documents[0].Questions, x => Assert.False(x.IsMultipleChoice));
        Assert.Equal(["public resources"], open.Documents[0].Questions[0].References);
        Assert.Equal(["author"], open.Documents[0].Questions[1].References);
    }

    [Fact]
    public void SqualityLoadsFourReferences()
    {
        var ds = Datasets.Load(Write("train.jsonl", new
        {
            metadata = new { passage_id = "20001", uid = "u", license = "l" },
            document = "A long story.",
            questions = new object[]
            {
                new { question_text = "What is the plot of the story?", question_number = 1, responses = new[] { R("one"), R("two"), R("three"), R("four") } },
                new { question_text = "Who is Hank?", question_number = 2, responses = new[] { R("a farmer"), R("b"), R("c"), R("d") } },
            },
        }));
        Assert.Equal(("squality-train", "squality"), (ds.Name, ds.Format));
        var d = Assert.Single(ds.Documents);
        Assert.Equal("squality-train:passage_id=20001", d.Id);
        Assert.Equal(["What is the plot of the story?", "Who is Hank?"], d.Questions.Select(q => q.Text));
        Assert.Equal(["one", "two", "three", "four"], d.Questions[0].References);
        Assert.Equal(["a farmer", "b", "c", "d"], d.Questions[1].References);
        Assert.All(d.Questions, q => Assert.Empty(q.Options));

        static object R(string text) => new { worker_id = "w", uid = "u", response_text = text };
    }

    [Fact]
    public void ClearErrorsForBadFiles()
    {
        Assert.Contains("unknown data set format", Assert.Throws<InvalidRequestException>(() => Datasets.Load(Write("x.jsonl", new { text = "hi" }))).Message);
        Assert.Contains("no data set file", Assert.Throws<InvalidRequestException>(() => Datasets.Load(Path.Combine(_dir, "absent.jsonl"))).Message);
        File.WriteAllText(Path.Combine(_dir, "empty.jsonl"), "\n");
        Assert.Contains("is empty", Assert.Throws<InvalidRequestException>(() => Datasets.Load(Path.Combine(_dir, "empty.jsonl"))).Message);
        Assert.Contains("no document with a question", Assert.Throws<InvalidRequestException>(() =>
            Datasets.Load(Write("none.jsonl", new { instructions = Array.Empty<string>(), outputs = Array.Empty<string>(), input = "doc" }))).Message);
        Assert.Contains("not among its options", Assert.Throws<InvalidRequestException>(() =>
            Datasets.Load(Write("bad.jsonl", new { instructions = new[] { "Q?\nA. x\nB. y" }, outputs = new[] { "C" }, input = "doc" }))).Message);
        Assert.Contains("names no option letter", Assert.Throws<InvalidRequestException>(() =>
            Datasets.Load(Write("bad2.jsonl", new { instructions = new[] { "Q?\nA. x\nB. y" }, outputs = new[] { "no idea" }, input = "doc" }))).Message);
    }

    static ITokenizer Tok() => TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin"));

    static readonly string LongText = string.Join("\n", Enumerable.Range(0, 40).Select(i => $"Sentence number {i} tells of the ship and its   crew! Then they sailed on.")) +
        " " + string.Join(" ", Enumerable.Repeat("endless", 120));

    [Fact]
    public void SplitKeepsEveryWordAndEveryPartFits()
    {
        var tok = Tok();
        var doc = new DatasetDocument("d", LongText, []);
        foreach (int max in new[] { 16, 50, 200 })
        {
            var parts = DatasetCollection.Split(doc, tok, max);
            Assert.True(parts.Count > 1);
            Assert.All(parts, p => Assert.InRange(tok.Encode(p.Text).Length, 1, max));
            Assert.Equal(parts.Select((_, i) => $"d/p{i:D3}"), parts.Select(p => p.Id));
            Assert.All(parts, p => Assert.Equal("d", p.SourceDocument));
            // Every word kept, in order: the parts joined by spaces are the whitespace-collapsed text.
            Assert.Equal(Regex.Replace(LongText, @"\s+", " ").Trim(), string.Join(" ", parts.Select(p => p.Text)));
        }
        Assert.Single(DatasetCollection.Split(new DatasetDocument("s", "Short.", []), tok, 50));
        Assert.Contains("empty", Assert.Throws<InvalidRequestException>(() => DatasetCollection.Split(new DatasetDocument("e", "  \n", []), tok, 50)).Message);
        Assert.Throws<InvalidRequestException>(() => DatasetCollection.Split(doc, tok, 8));
    }

    static readonly ModelConfig Config = new()
    {
        Architecture = Architecture.Llama, Dim = 8, HiddenDim = 8, Layers = 1, Heads = 1, KvHeads = 1, HeadDim = 8, VocabSize = 512, MaxSeqLen = 512,
    };

    [Fact]
    public void GoldDocumentsAreAllPartsOfTheOriginal()
    {
        var tok = Tok();
        var ds = new EvalDataset("t", "t.jsonl", "leval", [
            new DatasetDocument("a", LongText, [
                new DatasetQuestion("a#q0", "Which ship?\nA. red\nB. blue", [new('A', "red"), new('B', "blue")], "B", ["B"]),
                new DatasetQuestion("a#q1", "What happened?", [], "", ["They sailed on and on.", "second"]),
                new DatasetQuestion("a#q2", string.Join(" ", Enumerable.Repeat("very long question", 200)), [], "", ["x"]),
            ]),
            new DatasetDocument("b", "A short one. It fits.", [new DatasetQuestion("b#q0", "Short?", [], "", ["yes"])]),
        ]);
        var set = DatasetCollection.Build([ds], tok, Config, partTokens: 100, maxTokens: 8);
        var aParts = set.Parts.Where(p => p.SourceDocument == "a").Select(p => p.Id).ToList();
        Assert.True(aParts.Count > 2);
        Assert.Equal(["b/p000"], set.Parts.Where(p => p.SourceDocument == "b").Select(p => p.Id));
        Assert.Equal(1, set.SkippedTooLong); // the 600-word question does not fit beside a part
        Assert.Equal(["a#q0", "a#q1", "b#q0"], set.Items.Select(i => i.Question.Id));
        Assert.Equal(aParts, set.Items[0].Question.GoldDocuments);
        Assert.Equal(aParts, set.Items[1].Question.GoldDocuments);
        Assert.Equal(["b/p000"], set.Items[2].Question.GoldDocuments);
        // Multiple choice: the scored reference is the gold option's text; options encoded the same way.
        Assert.Equal(Prompting.EncodeContinuation(tok, " blue"), set.Items[0].Question.Answer);
        Assert.Equal([Prompting.EncodeContinuation(tok, " red"), Prompting.EncodeContinuation(tok, " blue")], set.Items[0].OptionAnswers);
        // Open: the first reference, cut to the answer room (8 tokens).
        Assert.Equal(Prompting.EncodeContinuation(tok, " They sailed on and on.")[..8], set.Items[1].Question.Answer);
        Assert.True(set.Items[1].AnswerTruncated);
        Assert.All(set.Items, i => Assert.Equal(ScoreFraming.Question, i.Question.Framing));
        Assert.Equal(["a#q0", "a#q1"], DatasetCollection.Build([ds], tok, Config, 100, 8, maxQuestions: 2).Items.Select(i => i.Question.Id));
    }

    [Fact]
    public void DefaultPartSizeLeavesRoomForNineQuestionsInTen()
    {
        var tok = Tok();
        EvalDataset Of(params string[] questions) => new("t", "t.jsonl", "squality",
            [new DatasetDocument("d", "Text.", questions.Select((q, i) => new DatasetQuestion($"d#q{i}", q, [], "", ["r"])).ToList())]);
        // Short questions: half the context (512 − 64 − 8 − a few tokens is more than 256).
        Assert.Equal(256, DatasetCollection.DefaultPartTokens([Of("Who?", "What is the plot of the story?")], tok, Config, 64));
        // Very long questions: a quarter of the context at least.
        string huge = string.Join(" ", Enumerable.Repeat("a long question", 150));
        Assert.Equal(128, DatasetCollection.DefaultPartTokens([Of(huge)], tok, Config, 64));
        // In between: exactly what the 90th percentile (nearest rank) leaves; 10 questions, the longest one ignored.
        var mid = Enumerable.Range(0, 9).Select(i => string.Join(" ", Enumerable.Repeat("word", 75 + i))).Append(huge).ToArray();
        int p90 = DatasetCollection.PromptTokens(tok, mid[8]);
        Assert.InRange(512 - 64 - DatasetCollection.FramingMargin - p90, 129, 255);
        Assert.Equal(512 - 64 - DatasetCollection.FramingMargin - p90, DatasetCollection.DefaultPartTokens([Of(mid)], tok, Config, 64));
    }

    /// <summary>A query path that answers RAG requests with chunks of the given documents, in order, and nothing else.</summary>
    sealed class FixedRetrieval(params string[] documents) : IQueryPath
    {
        public int Asked;
        public Task<AskResult> AskAsync(AskMode mode, AskRequest request, CancellationToken cancel)
        {
            Asked++;
            Assert.Equal(AskMode.Rag, mode);
            var r = new AskResult();
            foreach (var d in documents) r.Chunks.Add(new RetrievedChunk { DocumentId = d });
            return Task.FromResult(r);
        }
        public Task<ScoreResult> ScoreAsync(AskMode mode, AskRequest request, int[] answer, ScoreFraming framing, CancellationToken cancel) => throw new NotSupportedException();
        public Task<(string DocumentId, int Slots)> MonoCartridgeAsync(string collection, CancellationToken cancel) => throw new NotSupportedException();
        public Task<(long PeakResidentBytes, long ResidentBudget)> ResidentAsync(CancellationToken cancel) => throw new NotSupportedException();
    }

    [Fact]
    public async Task IclUsesTheGoldPartTheRetrieverRanksFirst()
    {
        static DatasetItem Item(string id, params string[] gold) =>
            new(new EvalQuestion(id, "q", [1], gold, ScoreFraming.Question), new DatasetQuestion(id, "q", [], "", ["r"]), "t", [], false);
        var items = new[] { Item("x", "a/p000", "a/p001", "a/p002"), Item("y", "b/p000", "b/p001"), Item("z", "c/p000") };
        var path = new FixedRetrieval("other/p000", "a/p002", "a/p001");
        var (chosen, retrieved) = await DatasetCollection.ChooseIclPartsAsync(path, "c", items, 32, TestContext.Current.CancellationToken);
        Assert.Equal(["a/p002", "a/p000", "a/p001"], chosen[0].Question.GoldDocuments); // ranked first, the rest kept
        Assert.Equal(["b/p000", "b/p001"], chosen[1].Question.GoldDocuments);           // no part retrieved: the first stays first
        Assert.Equal(["c/p000"], chosen[2].Question.GoldDocuments);                       // one part: nothing to ask
        Assert.Equal(1, retrieved);
        Assert.Equal(2, path.Asked);
    }

    [Fact]
    public void RougeLOnHandComputedCases()
    {
        Assert.Equal(["the", "cat", "s", "3", "mats"], RougeL.Tokens("The CAT's 3 mats!"));
        Assert.Equal(4, RougeL.Lcs(RougeL.Tokens("a b c b d a b"), RougeL.Tokens("b d c a b a")));
        // LCS 5 ("the cat on the mat"), P = 5/6, R = 5/5: F = 2·(5/6)·1 / (5/6 + 1) = 10/11.
        Assert.Equal(10.0 / 11, RougeL.F("the cat sat on the mat", "the cat on the mat"), 12);
        Assert.Equal(1.0, RougeL.F("The cat.", "the CAT"), 12);
        // Ties: several LCS of length 2 ("a c", "a d", "b c", "b d"): P = R = 2/4, F = 0.5.
        Assert.Equal(0.5, RougeL.F("a b c d", "b a d c"), 12);
        // LCS 1 of 1 candidate and 3 reference tokens: P = 1, R = 1/3, F = 2·(1/3) / (4/3) = 0.5.
        Assert.Equal(0.5, RougeL.F("cat", "a cat sat"), 12);
        Assert.Equal(0.0, RougeL.F("", "the cat"));
        Assert.Equal(0.0, RougeL.F("the cat", ""));
        Assert.Equal(0.0, RougeL.F("", ""));
        Assert.Equal(0.0, RougeL.F("!!", "..."));
        Assert.Equal(0.0, RougeL.F("dog", "cat"));
        // The best over references; none: 0.
        Assert.Equal(1.0, RougeL.Best("the cat", ["a dog", "the cat", "cat"]), 12);
        Assert.Equal(2.0 / 3, RougeL.Best("the cat", ["a dog", "cat"]), 12);
        Assert.Equal(0.0, RougeL.Best("the cat", []));
    }

    [Fact]
    public void ChoiceIsTheLowestNllPerToken()
    {
        // Per token 2, 3, 3: option 0, although option 1 has the lowest total NLL.
        Assert.Equal(0, DatasetEvaluator.Choose([10, 6, 9], [5, 2, 3]));
        Assert.Equal(1, DatasetEvaluator.Choose([4, 2, 2], [1, 1, 1]));  // a tie between 1 and 2: the first
        Assert.Throws<ArgumentException>(() => DatasetEvaluator.Choose([1], [0]));
    }
}
