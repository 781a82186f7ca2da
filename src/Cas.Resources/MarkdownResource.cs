using System.Text;

namespace Cas.Resources;

/// <summary>
/// kind "markdown": one .md file is one document. YAML front matter ("---" ... "---" at the top) is
/// removed from the text and its simple "key: value" lines become metadata (title, author...). Headings
/// stay as plain text lines ("## Setup" -> "Setup", setext underlines removed) and their outline goes to
/// metadata "outline" (one heading per line, two spaces of indent per level). HTML comments are dropped.
/// Fenced code blocks are kept verbatim. Other Markdown (emphasis, links, lists) is kept as written.
/// Metadata "title": the front matter title, else the first level-1 heading.
/// </summary>
public sealed class MarkdownResource : IResource
{
    public MarkdownResource(string path, string? id = null)
    {
        Path = path;
        Id = id ?? System.IO.Path.GetFileName(path);
    }

    public string Kind => "markdown";
    public string Path { get; }
    public string Id { get; }

    public IEnumerable<Document> Read(ResourceReport report)
    {
        var source = TextDecoding.ReadFile(Path, report);
        if (source == null) yield break;
        var md = Convert(source);
        var meta = new Dictionary<string, string> { ["kind"] = Kind };
        foreach (var (k, v) in md.FrontMatter) meta[meta.ContainsKey(k) ? "frontmatter." + k : k] = v;
        if (md.Title != null) meta["title"] = md.Title;
        if (md.Outline.Length > 0) meta["outline"] = md.Outline;
        var doc = new Document(Id, md.Text, Path, meta, Document.NoQuestions);
        if (report.Accept(doc)) yield return doc;
    }

    internal sealed record Converted(string Text, string? Title, string Outline, IReadOnlyDictionary<string, string> FrontMatter);

    /// <summary>Markdown text (with "\n" line ends) to document text, title, outline and front matter.</summary>
    internal static Converted Convert(string markdown)
    {
        var lines = markdown.Split('\n');
        var front = new Dictionary<string, string>();
        int start = ReadFrontMatter(lines, front);

        var output = new List<string>(lines.Length);
        var headings = new List<(int Level, string Title)>();
        bool inComment = false, setextCandidate = false;
        char fenceChar = '\0';
        int fenceLength = 0;

        for (int n = start; n < lines.Length; n++)
        {
            var line = lines[n];
            if (fenceChar != '\0')
            {
                output.Add(line);
                if (ClosesFence(line, fenceChar, fenceLength)) fenceChar = '\0';
                continue;
            }

            if (inComment || line.Contains("<!--"))
            {
                var kept = StripComments(line, ref inComment);
                if (kept.Trim().Length == 0) continue; // the line was all comment
                line = kept;
            }

            if (FenceRun(line, out char fc, out int fl))
            {
                fenceChar = fc;
                fenceLength = fl;
                output.Add(line);
                setextCandidate = false;
                continue;
            }

            var trimmed = line.TrimStart();
            int indent = line.Length - trimmed.Length;
            if (indent <= 3 && AtxHeading(trimmed, out int level, out var title))
            {
                if (title.Length > 0) headings.Add((level, title));
                output.Add(""); // a heading stands apart as its own paragraph (blank runs are collapsed later)
                output.Add(title);
                output.Add("");
                setextCandidate = false;
                continue;
            }
            if (indent <= 3 && setextCandidate && SetextUnderline(trimmed, out int slevel))
            {
                var heading = output[^1].Trim();
                output[^1] = "";
                output.Add(heading);
                output.Add("");
                headings.Add((slevel, heading));
                setextCandidate = false;
                continue;
            }

            output.Add(line);
            setextCandidate = trimmed.Length > 0 && indent <= 3;
        }

        string? titleOut = front.TryGetValue("title", out var t) && t.Length > 0 ? t : null;
        if (titleOut == null)
            foreach (var h in headings)
                if (h.Level == 1) { titleOut = h.Title; break; }

        return new Converted(TextDecoding.Tidy(string.Join('\n', output)), titleOut, Outline(headings), front);
    }

    /// <summary>Headings as lines, indented two spaces per level below the shallowest one present.</summary>
    internal static string Outline(List<(int Level, string Title)> headings)
    {
        if (headings.Count == 0) return "";
        int min = int.MaxValue;
        foreach (var h in headings) min = Math.Min(min, h.Level);
        var sb = new StringBuilder();
        foreach (var h in headings)
        {
            if (sb.Length > 0) sb.Append('\n');
            sb.Append(' ', 2 * (h.Level - min)).Append(h.Title);
        }
        return sb.ToString();
    }

    /// <summary>Parses "---" front matter; returns the index of the first line after it (0 if none).</summary>
    static int ReadFrontMatter(string[] lines, Dictionary<string, string> front)
    {
        if (lines.Length == 0 || lines[0].TrimEnd() != "---") return 0;
        int end = -1;
        for (int i = 1; i < lines.Length; i++)
        {
            var l = lines[i].TrimEnd();
            if (l == "---" || l == "...") { end = i; break; }
        }
        if (end < 0) return 0; // no closing line: a horizontal rule, not front matter
        for (int i = 1; i < end; i++)
        {
            var l = lines[i];
            if (l.Length == 0 || char.IsWhiteSpace(l[0]) || l[0] == '#' || l[0] == '-') continue; // nested, comment, list item
            int colon = l.IndexOf(':');
            if (colon <= 0) continue;
            var key = l[..colon].Trim();
            var value = l[(colon + 1)..].Trim();
            if (value.Length >= 2 && (value[0] == '"' || value[0] == '\'') && value[^1] == value[0]) value = value[1..^1];
            if (value.Length > 0) front[key] = value;
        }
        return end + 1;
    }

    static string StripComments(string line, ref bool inComment)
    {
        var sb = new StringBuilder(line.Length);
        int i = 0;
        while (i < line.Length)
        {
            if (inComment)
            {
                int close = line.IndexOf("-->", i, StringComparison.Ordinal);
                if (close < 0) return sb.ToString();
                i = close + 3;
                inComment = false;
            }
            else
            {
                int open = line.IndexOf("<!--", i, StringComparison.Ordinal);
                if (open < 0) { sb.Append(line, i, line.Length - i); break; }
                sb.Append(line, i, open - i);
                i = open + 4;
                // "a <!-- x --> b" becomes "a b", not "a  b"
                if (sb.Length > 0 && sb[^1] == ' ')
                {
                    int close = line.IndexOf("-->", i, StringComparison.Ordinal);
                    if (close >= 0 && close + 3 < line.Length && line[close + 3] == ' ') sb.Length--;
                }
                inComment = true;
            }
        }
        return sb.ToString();
    }

    /// <summary>A line opening/closing a code fence: up to 3 spaces then 3+ backticks or tildes.</summary>
    static bool FenceRun(string line, out char c, out int length)
    {
        c = '\0';
        length = 0;
        var t = line.TrimStart();
        if (line.Length - t.Length > 3 || t.Length < 3 || (t[0] != '`' && t[0] != '~')) return false;
        c = t[0];
        while (length < t.Length && t[length] == c) length++;
        if (length < 3) return false;
        if (c == '`' && t.IndexOf('`', length) >= 0) return false; // inline code, not a fence
        return true;
    }

    static bool ClosesFence(string line, char c, int minLength)
    {
        var t = line.TrimStart();
        if (line.Length - t.Length > 3) return false;
        int n = 0;
        while (n < t.Length && t[n] == c) n++;
        return n >= minLength && t[n..].Trim().Length == 0;
    }

    static bool AtxHeading(string t, out int level, out string title)
    {
        level = 0;
        title = "";
        while (level < t.Length && t[level] == '#') level++;
        if (level == 0 || level > 6 || (level < t.Length && t[level] != ' ' && t[level] != '\t')) return false;
        var rest = t[level..].Trim();
        // an optional closing sequence of #s preceded by a space
        int end = rest.Length;
        while (end > 0 && rest[end - 1] == '#') end--;
        if (end == 0) rest = "";
        else if (end < rest.Length && rest[end - 1] == ' ') rest = rest[..end].TrimEnd();
        title = rest;
        return true;
    }

    static bool SetextUnderline(string t, out int level)
    {
        level = 0;
        var s = t.TrimEnd();
        if (s.Length == 0 || (s[0] != '=' && s[0] != '-')) return false;
        foreach (var ch in s) if (ch != s[0]) return false;
        level = s[0] == '=' ? 1 : 2;
        return true;
    }
}
