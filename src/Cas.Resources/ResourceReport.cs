using System.Text;

namespace Cas.Resources;

/// <summary>What went wrong (or was deliberately left out) while reading a resource.</summary>
public enum ResourceIssueKind
{
    // Problems: each one is stored with its place, and a strict report throws on it.
    /// <summary>A file or folder could not be opened or read (missing, permission, is a folder...).</summary>
    UnreadableFile,
    /// <summary>A document whose text was empty or only whitespace; not yielded.</summary>
    EmptyDocument,
    /// <summary>A file that was not valid UTF-8 and was decoded with U+FFFD replacement characters.</summary>
    DecodedWithReplacement,
    /// <summary>A file in a folder that looks binary (has NUL bytes); not read.</summary>
    BinaryFileSkipped,
    /// <summary>A JSON line (or JSON file) that does not parse; skipped.</summary>
    MalformedJson,
    /// <summary>The text field path matched nothing in a JSON record; the record is skipped.</summary>
    FieldPathUnmatched,
    /// <summary>The text field path matched a value that is not text (object, null...); skipped.</summary>
    FieldNotText,
    /// <summary>Question/answer fields of a known dataset shape that do not line up; the extra ones are dropped.</summary>
    QuestionsMismatched,
    /// <summary>A LaTeX \input/\include whose file does not exist; left out.</summary>
    MissingInclude,
    /// <summary>A LaTeX \input/\include that would include a file already being included; left out.</summary>
    IncludeCycle,
    /// <summary>A Slack or email message (or export file) that could not be used as given.</summary>
    MalformedMessage,

    // Notes: deliberate filtering, only counted; a strict report does not throw on these.
    /// <summary>Slack join/leave notices and empty messages left out of channel documents.</summary>
    SystemMessageSkipped,
    /// <summary>Email attachments and non-text MIME parts left out.</summary>
    AttachmentSkipped,
    /// <summary>Quoted reply lines ("> ...", "On ... wrote:") trimmed from email bodies (counted in lines).</summary>
    QuotedLinesTrimmed,
}

/// <summary>One problem, with the file and 1-based line (0 when no line applies).</summary>
public sealed record ResourceIssue(ResourceIssueKind Kind, string Path, int Line, string Message)
{
    /// <summary>True for problems (stored, and fatal under Strict); false for counted notes.</summary>
    public static bool IsProblem(ResourceIssueKind kind) => kind < ResourceIssueKind.SystemMessageSkipped;

    public override string ToString() => Line > 0 ? $"{Path}:{Line}: {Message}" : $"{Path}: {Message}";
}

/// <summary>
/// Counters the caller prints after reading: nothing is dropped or altered without being counted here.
/// Problems are kept with their file and line (up to <see cref="MaxStoredPerKind"/> of each kind; the
/// counts stay exact). With <see cref="Strict"/> the first problem throws a <see cref="ResourceException"/>
/// naming the file and line instead. Not thread-safe: one report per reading loop.
/// </summary>
public sealed class ResourceReport
{
    public const int MaxStoredPerKind = 1000;

    static readonly int KindCount = Enum.GetValues<ResourceIssueKind>().Length;

    readonly long[] _counts = new long[KindCount];
    readonly int[] _stored = new int[KindCount];
    readonly List<ResourceIssue> _issues = [];

    public ResourceReport(bool strict = false) => Strict = strict;

    /// <summary>Throw a <see cref="ResourceException"/> at the first problem instead of skipping.</summary>
    public bool Strict { get; }

    /// <summary>Documents yielded to the caller.</summary>
    public int DocumentsRead { get; private set; }

    /// <summary>Files opened and read (whole or line by line).</summary>
    public int FilesRead { get; private set; }

    /// <summary>U+FFFD characters put in place of invalid UTF-8 (or undecodable) bytes, over all files.</summary>
    public long ReplacementCharacters { get; private set; }

    public int EmptyDocumentsSkipped => (int)Count(ResourceIssueKind.EmptyDocument);
    public int UnreadableFiles => (int)Count(ResourceIssueKind.UnreadableFile);
    public int FilesDecodedWithReplacement => (int)Count(ResourceIssueKind.DecodedWithReplacement);
    public int MalformedJsonLines => (int)Count(ResourceIssueKind.MalformedJson);
    public int UnmatchedFieldPaths => (int)Count(ResourceIssueKind.FieldPathUnmatched);

    /// <summary>How many times an issue of this kind happened (for QuotedLinesTrimmed: lines).</summary>
    public long Count(ResourceIssueKind kind) => _counts[(int)kind];

    /// <summary>Stored problems in the order met.</summary>
    public IReadOnlyList<ResourceIssue> Issues => _issues;

    public IEnumerable<ResourceIssue> IssuesOf(ResourceIssueKind kind) => _issues.Where(i => i.Kind == kind);

    /// <summary>True when any problem (not a note) was counted.</summary>
    public bool HasProblems
    {
        get
        {
            for (int k = 0; k < KindCount; k++)
                if (ResourceIssue.IsProblem((ResourceIssueKind)k) && _counts[k] > 0) return true;
            return false;
        }
    }

    /// <summary>Records an issue. Under <see cref="Strict"/> a problem throws instead.</summary>
    internal void Add(ResourceIssueKind kind, string path, int line, string message, long amount = 1)
    {
        bool problem = ResourceIssue.IsProblem(kind);
        if (problem && Strict)
        {
            var where = line > 0 ? $"{path}:{line}" : path;
            throw new ResourceException($"{where}: {message} (strict mode stops at the first skipped or altered input)",
                path, line, kind);
        }
        _counts[(int)kind] += amount;
        if (problem && _stored[(int)kind] < MaxStoredPerKind)
        {
            _stored[(int)kind]++;
            _issues.Add(new ResourceIssue(kind, path, line, message));
        }
    }

    internal void AddReplacements(long count) => ReplacementCharacters += count;

    internal void FileOpened() => FilesRead++;

    /// <summary>Counts the document as read, or as an empty document skipped (false).</summary>
    internal bool Accept(Document doc)
    {
        if (string.IsNullOrWhiteSpace(doc.Text))
        {
            Add(ResourceIssueKind.EmptyDocument, doc.Source, 0, $"document '{doc.Id}' is empty after extraction; skipped");
            return false;
        }
        DocumentsRead++;
        return true;
    }

    /// <summary>A few lines for the console: counts that are not zero, then the stored problems.</summary>
    public string Summary(int maxIssues = 20)
    {
        var sb = new StringBuilder();
        sb.Append($"documents read: {DocumentsRead} (from {FilesRead} files)\n");
        for (int k = 0; k < KindCount; k++)
        {
            if (_counts[k] == 0) continue;
            var kind = (ResourceIssueKind)k;
            sb.Append($"{Describe(kind)}: {_counts[k]}");
            if (kind == ResourceIssueKind.DecodedWithReplacement)
                sb.Append($" ({ReplacementCharacters} replacement characters)");
            sb.Append('\n');
        }
        int shown = Math.Min(maxIssues, _issues.Count);
        for (int i = 0; i < shown; i++) sb.Append("  ").Append(_issues[i]).Append('\n');
        long problems = 0;
        for (int k = 0; k < KindCount; k++)
            if (ResourceIssue.IsProblem((ResourceIssueKind)k)) problems += _counts[k];
        if (problems > shown) sb.Append($"  ... and {problems - shown} more\n");
        return sb.ToString();
    }

    static string Describe(ResourceIssueKind kind) => kind switch
    {
        ResourceIssueKind.UnreadableFile => "files unreadable",
        ResourceIssueKind.EmptyDocument => "empty documents skipped",
        ResourceIssueKind.DecodedWithReplacement => "files not valid UTF-8 (decoded with replacement)",
        ResourceIssueKind.BinaryFileSkipped => "binary files skipped",
        ResourceIssueKind.MalformedJson => "malformed JSON lines skipped",
        ResourceIssueKind.FieldPathUnmatched => "records where the field path matched nothing",
        ResourceIssueKind.FieldNotText => "records where the field is not text",
        ResourceIssueKind.QuestionsMismatched => "records with unaligned questions/answers",
        ResourceIssueKind.MissingInclude => "LaTeX includes not found",
        ResourceIssueKind.IncludeCycle => "LaTeX include cycles cut",
        ResourceIssueKind.MalformedMessage => "malformed messages or export files",
        ResourceIssueKind.SystemMessageSkipped => "system/empty chat messages skipped",
        ResourceIssueKind.AttachmentSkipped => "attachments and non-text parts skipped",
        ResourceIssueKind.QuotedLinesTrimmed => "quoted reply lines trimmed",
        _ => kind.ToString(),
    };
}
