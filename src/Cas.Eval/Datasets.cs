using System.Text.Json;
using System.Text.RegularExpressions;
using Cas.Engine;
using Cas.Resources;

namespace Cas.Eval;

/// <summary>One option of a multiple-choice question: its letter and its text (as written in the question).</summary>
public sealed record DatasetOption(char Letter, string Text);

/// <summary>
/// A question of an evaluation data set about one (original, unsplit) document.
/// </summary>
/// <param name="Id">Stable name: DOCUMENT#qINDEX (0-based index among the document's questions).</param>
/// <param name="Text">The question as the data set writes it (for L-Eval's multiple-choice files, with its options).</param>
/// <param name="Options">The options parsed from the text (A, B, C, …, in order); empty for an open question.</param>
/// <param name="GoldLetters">The correct option letters (one, or several for coursera's "ABC"); empty for an open question.</param>
/// <param name="References">The reference answers (L-Eval: the gold output; SQuALITY: the four responses).</param>
public sealed record DatasetQuestion(string Id, string Text, IReadOnlyList<DatasetOption> Options, string GoldLetters, IReadOnlyList<string> References)
{
    public bool IsMultipleChoice => Options.Count > 0;
}

/// <summary>A document of a data set (as long as the data set has it) with its questions.</summary>
public sealed record DatasetDocument(string Id, string Text, IReadOnlyList<DatasetQuestion> Questions);

/// <summary>A loaded data set file: its name (used in ids and the collection's name), format ("leval" or "squality") and documents.</summary>
public sealed record EvalDataset(string Name, string Path, string Format, IReadOnlyList<DatasetDocument> Documents)
{
    public int Questions => Documents.Sum(d => d.Questions.Count);
}

/// <summary>
/// Loads the evaluation data sets of ../shared/datasets: L-Eval files (one JSON object per line: <c>input</c>, the
/// document; <c>instructions</c>, the questions; <c>outputs</c>, the aligned gold answers) and SQuALITY (<c>document</c>,
/// <c>questions[].question_text</c>, <c>questions[].responses[].response_text</c>). Records are read by
/// <see cref="JsonResource"/>, which already recognises both shapes and keeps their questions; this adds the format
/// check, the multiple-choice options written inside L-Eval's question texts and the gold letters.
/// </summary>
public static class Datasets
{
    /// <summary>
    /// Reads <paramref name="path"/> (JSON lines), at most <paramref name="maxDocuments"/> documents (0: all).
    /// <see cref="InvalidRequestException"/> for a missing file, a format that is neither L-Eval nor SQuALITY, a
    /// multiple-choice question whose gold letter names no option, or a file without any question.
    /// </summary>
    public static EvalDataset Load(string path, int maxDocuments = 0, Action<string>? warn = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (maxDocuments < 0) throw new InvalidRequestException($"the most documents to read must be ≥ 0 (0: all), got {maxDocuments}.");
        if (!File.Exists(path)) throw new InvalidRequestException($"no data set file at {path}; give an L-Eval .jsonl (e.g. ../shared/datasets/leval/closed/quality.jsonl) or SQuALITY's train.jsonl.");
        string format = DetectFormat(path);
        string stem = System.IO.Path.GetFileNameWithoutExtension(path);
        string name = Sanitize(format == "squality" && !stem.Contains("squality", StringComparison.OrdinalIgnoreCase) ? "squality-" + stem : stem);
        var report = new ResourceReport();
        var resource = new JsonResource(path, format == "leval" ? "input" : "document", lines: true, id: name);
        var documents = new List<DatasetDocument>();
        foreach (var doc in resource.Read(report))
        {
            var questions = new List<DatasetQuestion>();
            for (int i = 0; i < doc.Questions.Count; i++)
            {
                var q = doc.Questions[i];
                string id = $"{doc.Id}#q{i}";
                if (string.IsNullOrWhiteSpace(q.Question)) { warn?.Invoke($"{id}: empty question; skipped"); continue; }
                var references = q.Answers.Where(a => !string.IsNullOrWhiteSpace(a)).Select(a => a.Trim()).ToList();
                if (references.Count == 0) { warn?.Invoke($"{id}: no reference answer; skipped"); continue; }
                var options = format == "leval" ? ParseOptions(q.Question) : [];
                string gold = "";
                if (options.Count > 0)
                {
                    gold = ParseGoldLetters(references[0]);
                    if (gold.Length == 0)
                        throw new InvalidRequestException($"{path}: question {id} has options ({string.Join(", ", options.Select(o => o.Letter))}) but its gold answer '{Short(references[0])}' names no option letter.");
                    var missing = gold.Where(l => !options.Any(o => o.Letter == l)).ToList();
                    if (missing.Count > 0)
                        throw new InvalidRequestException($"{path}: question {id}'s gold letter(s) {string.Join("", missing)} are not among its options {string.Join("", options.Select(o => o.Letter))}.");
                }
                questions.Add(new DatasetQuestion(id, q.Question.Trim(), options, gold, references));
            }
            if (questions.Count == 0) { warn?.Invoke($"{doc.Id}: no usable question; document skipped"); continue; }
            documents.Add(new DatasetDocument(doc.Id, doc.Text, questions));
            if (maxDocuments > 0 && documents.Count == maxDocuments) break;
        }
        if (report.Issues.Count > 0) warn?.Invoke($"{path}: {report.Summary().Trim()}");
        if (documents.Count == 0) throw new InvalidRequestException($"{path} holds no document with a question ({report.Summary().Trim()}).");
        return new EvalDataset(name, path, format, documents);
    }

    /// <summary>"leval" or "squality" from the first record's fields; <see cref="InvalidRequestException"/> otherwise.</summary>
    public static string DetectFormat(string path)
    {
        string? first = File.ReadLines(path).FirstOrDefault(l => l.Trim().Length > 0);
        if (first == null) throw new InvalidRequestException($"{path} is empty; a data set is one JSON object per line.");
        JsonElement root;
        try { root = JsonDocument.Parse(first.TrimStart('\uFEFF')).RootElement; }
        catch (JsonException e) { throw new InvalidRequestException($"{path}: the first line is not JSON ({e.Message}); a data set is one JSON object per line (L-Eval or SQuALITY)."); }
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidRequestException($"{path}: the first line is a JSON {root.ValueKind.ToString().ToLowerInvariant()}, not an object.");
        bool Has(string name, JsonValueKind kind) => root.TryGetProperty(name, out var v) && v.ValueKind == kind;
        if (Has("input", JsonValueKind.String) && Has("instructions", JsonValueKind.Array) && Has("outputs", JsonValueKind.Array)) return "leval";
        if (Has("document", JsonValueKind.String) && Has("questions", JsonValueKind.Array)) return "squality";
        throw new InvalidRequestException($"{path}: unknown data set format (first record's fields: {string.Join(", ", root.EnumerateObject().Select(p => p.Name))}); " +
            "expected L-Eval (input, instructions, outputs) or SQuALITY (document, questions[].question_text, questions[].responses[].response_text).");
    }

    // An option line: "(A) text" (QuALITY) or "A. text" (TPO, Coursera), at the start of a line.
    static readonly Regex OptionLine = new(@"^\s*(?:\((?<l>[A-Z])\)|(?<l>[A-Z])\.)\s+(?<t>.*)$", RegexOptions.Compiled);
    static readonly Regex LetterAnswer = new(@"^\s*\(?(?<l>[A-Z])\)", RegexOptions.Compiled);
    static readonly Regex Letters = new(@"^\s*(?<l>[A-Z]+)\s*\.?\s*$", RegexOptions.Compiled);

    /// <summary>
    /// The options written inside a question: lines starting "(A) " or "A. ", the letters consecutive from A (a line
    /// that does not start the next letter continues the option before it). Fewer than two options: none (an open
    /// question).
    /// </summary>
    public static List<DatasetOption> ParseOptions(string question)
    {
        var options = new List<(char Letter, List<string> Lines)>();
        foreach (var line in question.Replace("\r\n", "\n").Split('\n'))
        {
            var m = OptionLine.Match(line);
            char expected = (char)('A' + options.Count);
            if (m.Success && m.Groups["l"].Value[0] == expected) { options.Add((expected, [m.Groups["t"].Value])); continue; }
            if (options.Count > 0 && line.Trim().Length > 0) options[^1].Lines.Add(line);
        }
        if (options.Count < 2) return [];
        return options.Select(o => new DatasetOption(o.Letter, Collapse(string.Join(" ", o.Lines)))).ToList();
    }

    /// <summary>The gold letters of an answer: "(B) text" → "B", "B" → "B", "ACD" → "ACD"; "" when it names none.</summary>
    public static string ParseGoldLetters(string answer)
    {
        var m = Letters.Match(answer);
        if (m.Success) return new string(m.Groups["l"].Value.Distinct().Order().ToArray());
        m = LetterAnswer.Match(answer);
        return m.Success ? m.Groups["l"].Value : "";
    }

    static string Collapse(string s) => Regex.Replace(s, @"\s+", " ").Trim();
    static string Short(string s) => s.Length <= 60 ? s : s[..60] + "…";
    static string Sanitize(string s)
    {
        var chars = s.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '-').ToArray();
        var name = new string(chars).Trim('.', '-');
        return name.Length == 0 ? "dataset" : name;
    }
}
