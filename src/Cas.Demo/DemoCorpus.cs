using System.Text;
using System.Text.RegularExpressions;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Resources;

namespace Cas.Demo;

/// <summary>A document of the demo collection and the questions asked about it (in the order they are asked).</summary>
public sealed record DemoDocument(Document Document, IReadOnlyList<string> Questions);

/// <summary>The demo's documents: where they came from ("squality" or "sample") and the documents themselves.</summary>
public sealed record DemoCorpus(string Source, string Path, IReadOnlyList<DemoDocument> Documents)
{
    /// <summary>
    /// SQuALITY's train set under <paramref name="datasetsDir"/> when it is there, else the sample shipped in the repository
    /// (<paramref name="samplePath"/>, L-Eval-shaped JSON lines). Each document is cut to an opening passage of at most
    /// <paramref name="maxTokens"/> tokens at a sentence end (stories260K's context is 512 tokens; SQuALITY's stories are
    /// ten times that), so a long story becomes its opening. Questions: the document's own, ordered so that those naming
    /// words the passage contains come first (a SQuALITY question is about the whole story; the passage may not hold its answer).
    /// </summary>
    public static DemoCorpus Load(string? datasetsDir, string samplePath, ITokenizer tokenizer, int documents, int maxTokens)
    {
        if (documents < 1) throw new InvalidRequestException($"the demo needs at least one document, got {documents}.");
        if (maxTokens < 16) throw new InvalidRequestException($"demo documents must allow at least 16 tokens, got {maxTokens}.");
        string? squality = datasetsDir == null ? null : System.IO.Path.Combine(datasetsDir, "squality", "train.jsonl");
        bool fromDatasets = squality != null && File.Exists(squality);
        string path = fromDatasets ? squality! : samplePath;
        if (!File.Exists(path))
            throw new InvalidRequestException($"the demo's sample documents are not at {path} (eval/demo/stories.jsonl in the repository), and no ../shared/datasets/squality/train.jsonl was found.");
        var resource = new JsonResource(path, fromDatasets ? "document" : "input", lines: true, id: fromDatasets ? "squality" : "sample");
        var report = new ResourceReport();
        var list = new List<DemoDocument>();
        foreach (var doc in resource.Read(report))
        {
            string passage = Passage(StripFrontMatter(doc.Text), tokenizer, maxTokens);
            if (passage.Length == 0) continue;
            var questions = doc.Questions.Select(q => q.Question).Where(q => q.Trim().Length > 0).ToList();
            list.Add(new DemoDocument(doc with { Text = passage }, OrderByOverlap(questions, passage)));
            if (list.Count == documents) break;
        }
        if (list.Count == 0)
            throw new InvalidRequestException($"no document could be read from {path}: {report.Summary()}");
        return new DemoCorpus(fromDatasets ? "squality" : "sample", path, list);
    }

    /// <summary>
    /// Up to <paramref name="count"/> (question, gold document) pairs, one per document in turn (the first question of
    /// each document, then the second of each, …), so that questions spread over the collection; a question text already
    /// taken (SQuALITY asks "What is the plot of the story?" of every story) is skipped.
    /// </summary>
    public IReadOnlyList<(string Question, string GoldDocumentId)> Questions(int count)
    {
        var result = new List<(string, string)>();
        var taken = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        for (int round = 0; result.Count < count; round++)
        {
            bool any = false;
            foreach (var d in Documents)
            {
                if (round >= d.Questions.Count) continue;
                any = true;
                if (!taken.Add(d.Questions[round].Trim())) continue;
                result.Add((d.Questions[round], d.Document.Id));
                if (result.Count == count) break;
            }
            if (!any) break;
        }
        return result;
    }

    static readonly Regex Space = new(@"\s+", RegexOptions.Compiled);
    static readonly Regex Word = new(@"\p{L}[\p{L}'’-]{3,}", RegexOptions.Compiled);

    /// <summary>Project Gutenberg texts open with a producer line and a transcriber's note; the story starts after them.</summary>
    public static string StripFrontMatter(string text)
    {
        int note = text.IndexOf("[Transcriber", StringComparison.OrdinalIgnoreCase);
        if (note >= 0 && note < 2000)
        {
            int end = text.IndexOf(']', note);
            if (end > 0) text = text[(end + 1)..];
        }
        return Space.Replace(text, " ").Trim();
    }

    /// <summary>The longest run of whole sentences from the start that encodes to at most <paramref name="maxTokens"/> tokens (words when one sentence is too long).</summary>
    public static string Passage(string text, ITokenizer tokenizer, int maxTokens) => Split(text, tokenizer, maxTokens).FirstOrDefault() ?? "";

    /// <summary>The whole text as consecutive passages of whole sentences that fit <paramref name="maxTokens"/> tokens (<see cref="Passages.Split"/>).</summary>
    public static IEnumerable<string> Split(string text, ITokenizer tokenizer, int maxTokens) =>
        Passages.Split(text, s => tokenizer.Encode(s).Length, maxTokens);

    static readonly HashSet<string> Common = new(StringComparer.OrdinalIgnoreCase)
    {
        "what", "which", "where", "when", "does", "have", "with", "story", "about", "their", "there", "this", "that", "from",
        "describe", "significance", "relationship", "happens", "happen", "into", "they", "them", "were", "would", "could", "important",
    };

    /// <summary>
    /// Questions sharing more (uncommon, 4+ letter) words with the passage first; ties keep the dataset's order, except that
    /// questions about the whole story ("the plot", "the story") go last: a passage is only the story's opening.
    /// </summary>
    static bool WholeStory(string q) => q.Contains("plot", StringComparison.OrdinalIgnoreCase) || q.Contains("the story?", StringComparison.OrdinalIgnoreCase);

    static List<string> OrderByOverlap(List<string> questions, string passage)
    {
        var words = new HashSet<string>(Word.Matches(passage).Select(m => m.Value), StringComparer.OrdinalIgnoreCase);
        int Overlap(string q) => Word.Matches(q).Select(m => m.Value).Where(w => !Common.Contains(w)).Distinct(StringComparer.OrdinalIgnoreCase).Count(words.Contains);
        return questions.Select((q, i) => (q, i, o: Overlap(q))).OrderByDescending(x => x.o).ThenBy(x => WholeStory(x.q)).ThenBy(x => x.i).Select(x => x.q).ToList();
    }
}
