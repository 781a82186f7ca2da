using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Cas.Resources;

/// <summary>
/// kinds "jsonl" and "json": records from JSON, the document text taken from a field path
/// (<see cref="JsonFieldPath"/>). A record is one JSONL line, one element of a top-level JSON array, or
/// the whole JSON object. When the path has <c>[*]</c>, each value it matches is its own document.
///
/// Ids: <c>FILE:LINE</c> for JSONL (1-based line), <c>FILE:[I]</c> for an array element (0-based),
/// <c>FILE</c> for a single object; with an id field <c>FILE:NAME=VALUE</c>; a wildcard match adds
/// <c>:PATH</c> (e.g. <c>data.json:items[2].text</c>).
///
/// Questions are picked up automatically (<see cref="DetectQuestions"/>) for two known dataset shapes:
/// <list type="bullet">
/// <item>L-Eval: the record has arrays <c>instructions</c> (questions) and <c>outputs</c> (the aligned
/// gold answer: a string, or a list of strings); metadata "shape" = "leval".</item>
/// <item>SQuALITY: the record has <c>questions[]</c> objects with <c>question_text</c> and
/// <c>responses[].response_text</c> (the reference answers); the id comes from
/// <c>metadata.passage_id</c>; metadata "shape" = "squality".</item>
/// </list>
/// Other metadata: "kind", "field", "line" (JSONL), and the record's top-level scalar fields (and those of
/// a top-level "metadata" object) up to 256 characters, except the text field itself.
///
/// JSONL files are read line by line. A .json file is parsed whole (use JSONL for big data sets).
/// </summary>
public sealed class JsonResource : IResource
{
    const int MaxMetadataValue = 256;

    public JsonResource(string path, string field, bool lines, string? id = null)
        : this(path, JsonFieldPath.Parse(field), lines, id) { }

    public JsonResource(string path, JsonFieldPath field, bool lines, string? id = null)
    {
        Path = path;
        Field = field;
        Lines = lines;
        Id = id ?? System.IO.Path.GetFileName(path);
    }

    public string Kind => Lines ? "jsonl" : "json";
    public string Path { get; }
    /// <summary>Id prefix for the documents (the file name, or the folder-relative path).</summary>
    public string Id { get; }
    public JsonFieldPath Field { get; }
    /// <summary>True: JSON Lines, one record per line. False: one JSON value (array or object).</summary>
    public bool Lines { get; }
    /// <summary>Extract questions for the known L-Eval and SQuALITY shapes (default true).</summary>
    public bool DetectQuestions { get; init; } = true;
    /// <summary>Field whose scalar value names the record in the id (default: none, or metadata.passage_id for SQuALITY).</summary>
    public JsonFieldPath? IdField { get; init; }

    public IEnumerable<Document> Read(ResourceReport report) => Lines ? ReadLines(report) : ReadWhole(report);

    IEnumerable<Document> ReadLines(ResourceReport report)
    {
        ByteLineReader reader;
        try
        {
            reader = new ByteLineReader(new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Add(ResourceIssueKind.UnreadableFile, Path, 0, $"cannot read: {e.Message}; check the path and its permissions");
            yield break;
        }
        report.FileOpened();
        using var _ = reader;
        var state = new RecordState();
        bool decodeReported = false;
        while (reader.TryReadLine(out var line))
        {
            int n = reader.LineNumber;
            if (n == 1 && line.Span.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) line = line[3..];
            if (IsBlank(line.Span)) continue;
            using var json = ParseLine(line, n, report, ref decodeReported);
            if (json == null) continue;
            state.Output.Clear();
            ToDocuments(json.RootElement, n, null, report, state);
            foreach (var doc in state.Output) yield return doc;
        }
    }

    JsonDocument? ParseLine(ReadOnlyMemory<byte> line, int n, ResourceReport report, ref bool decodeReported)
    {
        try
        {
            if (Utf8.IsValid(line.Span)) return JsonDocument.Parse(line);
            var text = TextDecoding.Decode(line.Span, Path, n, report, ref decodeReported);
            return JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            report.Add(ResourceIssueKind.MalformedJson, Path, n, $"malformed JSON line (byte {e.BytePositionInLine + 1}): {JsonError(e)}; line skipped");
            return null;
        }
    }

    IEnumerable<Document> ReadWhole(ResourceReport report)
    {
        var bytes = TextDecoding.ReadBytes(Path, report);
        if (bytes == null) yield break;
        using var json = ParseWhole(bytes, report);
        if (json == null) yield break;
        var state = new RecordState();
        var root = json.RootElement;
        if (root.ValueKind == JsonValueKind.Array)
        {
            int i = 0;
            foreach (var element in root.EnumerateArray())
            {
                state.Output.Clear();
                ToDocuments(element, 0, i++, report, state);
                foreach (var doc in state.Output) yield return doc;
            }
        }
        else
        {
            ToDocuments(root, 0, null, report, state);
            foreach (var doc in state.Output) yield return doc;
        }
    }

    JsonDocument? ParseWhole(byte[] bytes, ResourceReport report)
    {
        try
        {
            ReadOnlyMemory<byte> mem = bytes;
            if (mem.Span.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) mem = mem[3..];
            if (Utf8.IsValid(mem.Span)) return JsonDocument.Parse(mem);
            return JsonDocument.Parse(TextDecoding.Decode(mem.Span, Path, 1, report));
        }
        catch (JsonException e)
        {
            report.Add(ResourceIssueKind.MalformedJson, Path, (int)(e.LineNumber ?? 0) + 1,
                $"malformed JSON (byte {e.BytePositionInLine + 1} of the line): {JsonError(e)}; file skipped");
            return null;
        }
    }

    sealed class RecordState
    {
        public readonly List<Document> Output = [];
        public readonly List<(string Path, JsonElement Value)> Matches = [];
        public readonly HashSet<string> Ids = [];
    }

    /// <summary>Turns one record into documents (appended to state.Output), counting what is skipped.</summary>
    void ToDocuments(JsonElement record, int line, int? element, ResourceReport report, RecordState state)
    {
        string where = element is int el ? $"element [{el}]" : line > 0 ? "record" : "the JSON value";
        string source = line > 0 ? $"{Path}:{line}" : element is int e2 ? $"{Path}[{e2}]" : Path;

        state.Matches.Clear();
        Field.Evaluate(record, state.Matches);
        if (state.Matches.Count == 0)
        {
            report.Add(ResourceIssueKind.FieldPathUnmatched, Path, line,
                $"field path '{Field}' matched nothing in {where} ({DescribeKeys(record)}); skipped. Check the #field part of the spec");
            return;
        }

        string? shape = null;
        IReadOnlyList<DocumentQuestion> questions = Document.NoQuestions;
        if (DetectQuestions) questions = FindQuestions(record, out shape, msg => report.Add(ResourceIssueKind.QuestionsMismatched, Path, line, $"{where}: {msg}"));

        var meta = new Dictionary<string, string> { ["kind"] = Kind, ["field"] = Field.Text };
        if (line > 0) meta["line"] = line.ToString();
        if (element is int e3) meta["element"] = e3.ToString();
        if (shape != null) meta["shape"] = shape;
        AddScalarMetadata(record, meta);

        string baseId = RecordId(record, line, element, shape, state.Ids);
        foreach (var (path, value) in state.Matches)
        {
            var text = AsText(value);
            if (text == null)
            {
                report.Add(ResourceIssueKind.FieldNotText, Path, line,
                    $"field '{path}' in {where} is {value.ValueKind}, not text (expected a string, number or array of strings); skipped");
                continue;
            }
            var id = Field.HasWildcard ? $"{baseId}:{path}" : baseId;
            var doc = new Document(id, text, source, meta, questions);
            if (report.Accept(doc)) state.Output.Add(doc);
        }
    }

    string RecordId(JsonElement record, int line, int? element, string? shape, HashSet<string> seen)
    {
        var idField = IdField ?? (shape == "squality" ? SqualityId : null);
        if (idField != null)
        {
            var found = new List<(string, JsonElement)>();
            idField.Evaluate(record, found);
            if (found.Count > 0 && found[0].Item2.ValueKind is JsonValueKind.String or JsonValueKind.Number)
            {
                var value = found[0].Item2.ValueKind == JsonValueKind.String ? found[0].Item2.GetString() : found[0].Item2.GetRawText();
                var id = $"{Id}:{idField.LastName}={value}";
                if (!string.IsNullOrEmpty(value) && seen.Add(id)) return id; // a repeated value falls back to the position
            }
        }
        if (line > 0) return $"{Id}:{line}";
        if (element is int i) return $"{Id}:[{i}]";
        return Id;
    }

    static readonly JsonFieldPath SqualityId = JsonFieldPath.Parse("metadata.passage_id");

    /// <summary>Questions of the L-Eval or SQuALITY shape, or none (shape null).</summary>
    internal static IReadOnlyList<DocumentQuestion> FindQuestions(JsonElement record, out string? shape, Action<string> mismatch)
    {
        shape = null;
        if (record.ValueKind != JsonValueKind.Object) return Document.NoQuestions;

        if (record.TryGetProperty("instructions", out var instructions) && instructions.ValueKind == JsonValueKind.Array
            && record.TryGetProperty("outputs", out var outputs) && outputs.ValueKind == JsonValueKind.Array)
        {
            shape = "leval";
            int nq = instructions.GetArrayLength(), na = outputs.GetArrayLength();
            if (nq != na) mismatch($"{nq} instructions but {na} outputs; kept the first {Math.Min(nq, na)} pairs");
            var list = new List<DocumentQuestion>(Math.Min(nq, na));
            using var qa = instructions.EnumerateArray();
            using var aa = outputs.EnumerateArray();
            int i = 0;
            while (qa.MoveNext() && aa.MoveNext())
            {
                var answers = Strings(aa.Current);
                if (qa.Current.ValueKind != JsonValueKind.String || answers == null)
                    mismatch($"instruction {i} or its output is not text; that question is dropped");
                else list.Add(new DocumentQuestion(qa.Current.GetString()!, answers));
                i++;
            }
            return list;
        }

        if (record.TryGetProperty("questions", out var questions) && questions.ValueKind == JsonValueKind.Array
            && questions.GetArrayLength() > 0 && questions[0].ValueKind == JsonValueKind.Object
            && questions[0].TryGetProperty("question_text", out _))
        {
            shape = "squality";
            var list = new List<DocumentQuestion>(questions.GetArrayLength());
            int i = 0;
            foreach (var q in questions.EnumerateArray())
            {
                if (q.ValueKind != JsonValueKind.Object || !q.TryGetProperty("question_text", out var qt) || qt.ValueKind != JsonValueKind.String)
                {
                    mismatch($"questions[{i++}] has no question_text string; dropped");
                    continue;
                }
                var answers = new List<string>();
                if (q.TryGetProperty("responses", out var responses) && responses.ValueKind == JsonValueKind.Array)
                    foreach (var r in responses.EnumerateArray())
                        if (r.ValueKind == JsonValueKind.Object && r.TryGetProperty("response_text", out var rt) && rt.ValueKind == JsonValueKind.String)
                            answers.Add(rt.GetString()!);
                if (answers.Count == 0) mismatch($"questions[{i}] has no responses[].response_text; kept without answers");
                list.Add(new DocumentQuestion(qt.GetString()!, answers));
                i++;
            }
            return list;
        }
        return Document.NoQuestions;
    }

    /// <summary>A string as one answer, an array of strings as several; otherwise null.</summary>
    static IReadOnlyList<string>? Strings(JsonElement e)
    {
        if (e.ValueKind == JsonValueKind.String) return [e.GetString()!];
        if (e.ValueKind != JsonValueKind.Array) return null;
        var list = new List<string>();
        foreach (var x in e.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.String) return null;
            list.Add(x.GetString()!);
        }
        return list;
    }

    /// <summary>Text of a matched value: a string, a number or boolean as written, or strings of an array joined by blank lines.</summary>
    internal static string? AsText(JsonElement v)
    {
        switch (v.ValueKind)
        {
            case JsonValueKind.String: return TextDecoding.NormalizeNewlines(v.GetString()!);
            case JsonValueKind.Number: return v.GetRawText();
            case JsonValueKind.True: return "true";
            case JsonValueKind.False: return "false";
            case JsonValueKind.Array:
                var parts = Strings(v);
                return parts == null ? null : TextDecoding.NormalizeNewlines(string.Join("\n\n", parts));
            default: return null;
        }
    }

    void AddScalarMetadata(JsonElement record, Dictionary<string, string> meta)
    {
        if (record.ValueKind != JsonValueKind.Object) return;
        var textField = Field.FirstName;
        foreach (var p in record.EnumerateObject())
        {
            if (p.Name == textField) continue;
            if (p.Name == "metadata" && p.Value.ValueKind == JsonValueKind.Object)
            {
                foreach (var q in p.Value.EnumerateObject()) AddScalar(meta, q.Name, q.Value);
                continue;
            }
            AddScalar(meta, p.Name, p.Value);
        }
    }

    static void AddScalar(Dictionary<string, string> meta, string name, JsonElement value)
    {
        string? s = value.ValueKind switch
        {
            JsonValueKind.String => value.GetString(),
            JsonValueKind.Number => value.GetRawText(),
            JsonValueKind.True => "true",
            JsonValueKind.False => "false",
            _ => null,
        };
        if (s == null || s.Length > MaxMetadataValue) return;
        meta.TryAdd(meta.ContainsKey(name) ? "record." + name : name, s);
    }

    static string DescribeKeys(JsonElement record)
    {
        if (record.ValueKind != JsonValueKind.Object) return $"the record is a JSON {record.ValueKind.ToString().ToLowerInvariant()}, not an object";
        var sb = new StringBuilder("record keys: ");
        int n = 0;
        foreach (var p in record.EnumerateObject())
        {
            if (n == 20) { sb.Append(", ..."); break; }
            if (n++ > 0) sb.Append(", ");
            sb.Append(p.Name);
        }
        if (n == 0) sb.Append("(none)");
        return sb.ToString();
    }

    static string JsonError(JsonException e)
    {
        var m = e.Message;
        int cut = m.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return (cut > 0 ? m[..cut] : m).TrimEnd('.', ' ');
    }

    static bool IsBlank(ReadOnlySpan<byte> s)
    {
        foreach (var b in s) if (b != ' ' && b != '\t' && b != '\r') return false;
        return true;
    }
}
