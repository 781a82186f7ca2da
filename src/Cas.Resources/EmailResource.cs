using System.Globalization;
using System.Text;

namespace Cas.Resources;

/// <summary>
/// kind "email": an mbox file, a single .eml file, or a folder (searched recursively) of .eml and .mbox
/// files. Messages are grouped into threads and each thread is one document, id
/// <c>email:thread:&lt;message-id of its first message&gt;</c>.
/// <list type="bullet">
/// <item>Headers: folded lines unfolded, RFC 2047 encoded words decoded (From, To, Cc, Subject).</item>
/// <item>Bodies: MIME multipart walked; text/plain parts decoded (quoted-printable, base64, charset);
/// multipart/alternative prefers text/plain, an HTML-only part is converted to text; attachments and
/// other parts are counted (AttachmentSkipped); forwarded message/rfc822 parts are kept.</item>
/// <item>Quoted replies are trimmed (<see cref="TrimQuotes"/>): "&gt;" lines, the "On ... wrote:" line
/// before them, and everything after "-----Original Message-----"; counted as QuotedLinesTrimmed.</item>
/// <item>Threads: messages linked by In-Reply-To and References (also through a missing parent); a
/// message with neither whose subject has a reply prefix ("Re:", "Fwd:", "AW:"...) joins the first
/// message with the same normalized subject. Within a thread messages are ordered by Date (by file
/// order when a date is missing); threads come in the order of their first message in the files.</item>
/// </list>
/// Text: "Subject: ..." then, per message, From/To/Date lines, a blank line and the body.
/// Reading is in two passes: headers only (to build threads), then one thread's messages at a time.
/// mbox files: "From " lines after a blank line (or at the start) begin messages; "&gt;From " lines in
/// bodies are unescaped (mboxrd). A repeated Message-ID is read once (counted as MalformedMessage).
/// </summary>
public sealed class EmailResource : IResource
{
    public EmailResource(string path) => Path = path;

    public string Kind => "email";
    public string Path { get; }
    /// <summary>Remove quoted earlier messages from replies (default true).</summary>
    public bool TrimQuotes { get; init; } = true;

    sealed class Info
    {
        public required string File;
        public long Offset;          // byte offset of the message (after the mbox "From " line)
        public long Length;          // -1: the whole file (.eml)
        public int Line;             // 1-based line of the message start in the file (0 for .eml)
        public int Order;
        public string? MessageId;
        public required List<string> Parents;
        public required string Subject;
        public required string NormalizedSubject;
        public bool IsReply;
        public DateTimeOffset? Date;
        public string Key => MessageId ?? $"{File}:{Line}";
        public string Source => Length < 0 ? File : $"{File}:{Line}";
    }

    public IEnumerable<Document> Read(ResourceReport report)
    {
        var messages = new List<Info>();
        var seenIds = new Dictionary<string, Info>();
        foreach (var file in Files(report))
            foreach (var info in Scan(file, report))
            {
                if (info.MessageId != null && seenIds.TryGetValue(info.MessageId, out var first))
                {
                    report.Add(ResourceIssueKind.MalformedMessage, info.File, info.Line,
                        $"Message-ID {info.MessageId} seen before at {first.Source}; this copy is skipped");
                    continue;
                }
                if (info.MessageId != null) seenIds[info.MessageId] = info;
                info.Order = messages.Count;
                messages.Add(info);
            }

        foreach (var thread in Threads(messages))
        {
            var doc = ThreadDocument(thread, report);
            if (report.Accept(doc)) yield return doc;
        }
    }

    IEnumerable<string> Files(ResourceReport report)
    {
        if (File.Exists(Path)) return [Path];
        if (!Directory.Exists(Path))
        {
            report.Add(ResourceIssueKind.UnreadableFile, Path, 0, "no such mbox file, .eml file or folder");
            return [];
        }
        try
        {
            var files = Directory.EnumerateFiles(Path, "*", SearchOption.AllDirectories)
                .Where(f => f.EndsWith(".eml", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".mbox", StringComparison.OrdinalIgnoreCase))
                .ToList();
            files.Sort(StringComparer.Ordinal);
            return files;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Add(ResourceIssueKind.UnreadableFile, Path, 0, $"cannot list folder: {e.Message}");
            return [];
        }
    }

    /// <summary>Pass 1: the headers of every message in one file.</summary>
    static List<Info> Scan(string file, ResourceReport report)
    {
        var found = new List<Info>();
        ByteLineReader reader;
        try { reader = new ByteLineReader(new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Add(ResourceIssueKind.UnreadableFile, file, 0, $"cannot read: {e.Message}; check the path and its permissions");
            return found;
        }
        report.FileOpened();
        using (reader)
        {
            var header = new MemoryStream();
            bool isMbox = false, first = true, prevBlank = true, inHeaders = true;
            Info? current = null;
            long start = 0;
            int startLine = 1;
            while (reader.TryReadLine(out var mem))
            {
                var line = mem.Span;
                if (first)
                {
                    if (line.Length == 0) continue; // blank lines before the first "From " line
                    first = false;
                    isMbox = line.StartsWith("From "u8);
                    if (!isMbox) { start = 0; startLine = 0; }
                }
                if (isMbox && prevBlank && line.StartsWith("From "u8))
                {
                    if (current != null || header.Length > 0) Finish(file, start, reader.LineOffset - start, startLine, header, ref current, found);
                    start = reader.NextOffset;
                    startLine = reader.LineNumber + 1;
                    inHeaders = true;
                    prevBlank = false;
                    continue;
                }
                prevBlank = line.Length == 0;
                if (!inHeaders) continue;
                if (line.Length == 0) { inHeaders = false; current = Headers(file, header); continue; }
                header.Write(line);
                header.WriteByte((byte)'\n');
            }
            if (current != null || header.Length > 0)
                Finish(file, start, isMbox ? reader.NextOffset - start : -1, startLine, header, ref current, found);
        }
        return found;
    }

    static void Finish(string file, long start, long length, int line, MemoryStream header, ref Info? current, List<Info> found)
    {
        current ??= Headers(file, header);
        current.Offset = start;
        current.Length = length;
        current.Line = line;
        found.Add(current);
        current = null;
        header.SetLength(0);
    }

    static Info Headers(string file, MemoryStream header)
    {
        var h = MailHeaders.Parse(header.GetBuffer().AsSpan(0, (int)header.Length), out _);
        var parents = Mime.MessageIds(h["References"]);
        foreach (var id in Mime.MessageIds(h["In-Reply-To"])) if (!parents.Contains(id)) parents.Add(id);
        var ids = Mime.MessageIds(h["Message-ID"]);
        var subject = CollapseSpaces(Mime.DecodeEncodedWords(h["Subject"] ?? ""));
        return new Info
        {
            File = file,
            MessageId = ids.Count > 0 ? ids[0] : null,
            Parents = parents,
            Subject = subject,
            NormalizedSubject = Mime.NormalizeSubject(subject, out bool reply),
            IsReply = reply,
            Date = Mime.ParseDate(h["Date"]),
        };
    }

    /// <summary>Groups messages into threads (union of reference links, then reply subjects).</summary>
    static List<List<Info>> Threads(List<Info> messages)
    {
        var parent = new Dictionary<string, string>();
        string Find(string x)
        {
            if (!parent.TryGetValue(x, out var p)) { parent[x] = x; return x; }
            while (p != x) { var g = parent[p]; parent[x] = g; x = p; p = g; }
            return x;
        }
        void Union(string a, string b)
        {
            var ra = Find(a);
            var rb = Find(b);
            if (ra != rb) parent[rb] = ra;
        }

        foreach (var m in messages)
        {
            Find(m.Key);
            foreach (var p in m.Parents) Union(m.Key, p);
        }
        var firstWithSubject = new Dictionary<string, Info>();
        foreach (var m in messages)
            if (m.NormalizedSubject.Length > 0) firstWithSubject.TryAdd(m.NormalizedSubject, m);
        foreach (var m in messages)
            if (m.Parents.Count == 0 && m.IsReply && firstWithSubject.TryGetValue(m.NormalizedSubject, out var f) && f != m)
                Union(f.Key, m.Key);

        var groups = new Dictionary<string, List<Info>>();
        var order = new List<List<Info>>();
        foreach (var m in messages)
        {
            var root = Find(m.Key);
            if (!groups.TryGetValue(root, out var g)) { groups[root] = g = []; order.Add(g); }
            g.Add(m);
        }
        foreach (var g in order)
        {
            bool allDated = g.TrueForAll(m => m.Date != null);
            g.Sort((a, b) => allDated && a.Date != b.Date ? a.Date!.Value.CompareTo(b.Date!.Value) : a.Order.CompareTo(b.Order));
        }
        return order;
    }

    /// <summary>Pass 2: reads one thread's messages and writes its document.</summary>
    Document ThreadDocument(List<Info> thread, ResourceReport report)
    {
        var root = thread[0];
        var id = root.MessageId != null ? $"email:thread:{root.MessageId}" : $"email:thread:{System.IO.Path.GetFileName(root.File)}:{root.Line}";
        var sb = new StringBuilder();
        sb.Append("Subject: ").Append(root.Subject).Append('\n');
        var participants = new List<string>();
        var ids = new List<string>();
        foreach (var m in thread)
        {
            var raw = Load(m, report);
            if (raw == null) continue;
            var h = MailHeaders.Parse(raw, out _);
            var from = CollapseSpaces(Mime.DecodeEncodedWords(h["From"] ?? ""));
            var name = DisplayName(from);
            if (name.Length > 0 && !participants.Contains(name)) participants.Add(name);
            if (m.MessageId != null) ids.Add(m.MessageId);

            sb.Append('\n');
            if (from.Length > 0) sb.Append("From: ").Append(from).Append('\n');
            foreach (var field in new[] { "To", "Cc" })
                if (h[field] is string v) sb.Append(field).Append(": ").Append(CollapseSpaces(Mime.DecodeEncodedWords(v))).Append('\n');
            if (h["Date"] is string date) sb.Append("Date: ").Append(CollapseSpaces(date)).Append('\n');
            if (Mime.NormalizeSubject(m.Subject, out _) != root.NormalizedSubject) sb.Append("Subject: ").Append(m.Subject).Append('\n');

            var body = new StringBuilder();
            Mime.ExtractText(raw, body, new MailContext(report, m.File, m.Line));
            var text = body.ToString();
            if (TrimQuotes)
            {
                text = TrimQuoted(text, out int trimmed);
                if (trimmed > 0) report.Add(ResourceIssueKind.QuotedLinesTrimmed, m.File, m.Line, "quoted lines", trimmed);
            }
            text = TextDecoding.Tidy(text);
            if (text.Length > 0) sb.Append('\n').Append(text).Append('\n');
        }

        var meta = new Dictionary<string, string>
        {
            ["kind"] = Kind, ["subject"] = root.Subject, ["messages"] = thread.Count.ToString(),
            ["participants"] = string.Join(", ", participants), ["message_ids"] = string.Join(' ', ids),
        };
        var dates = thread.Where(m => m.Date != null).Select(m => m.Date!.Value).ToList();
        if (dates.Count > 0)
        {
            meta["first_date"] = dates.Min().ToString("yyyy-MM-ddTHH:mm:sszzz", CultureInfo.InvariantCulture);
            meta["last_date"] = dates.Max().ToString("yyyy-MM-ddTHH:mm:sszzz", CultureInfo.InvariantCulture);
        }
        return new Document(id, sb.ToString().TrimEnd('\n'), root.Source, meta, Document.NoQuestions);
    }

    /// <summary>The raw bytes of one message (mboxrd "&gt;From " unescaped), or null when unreadable.</summary>
    static byte[]? Load(Info m, ResourceReport report)
    {
        try
        {
            if (m.Length < 0)
            {
                var whole = File.ReadAllBytes(m.File);
                int skip = 0;
                while (skip < whole.Length && (whole[skip] == '\n' || whole[skip] == '\r')) skip++; // as in the scan
                return skip == 0 ? whole : whole[skip..];
            }
            using var fs = new FileStream(m.File, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
            fs.Seek(m.Offset, SeekOrigin.Begin);
            var bytes = new byte[m.Length];
            fs.ReadExactly(bytes);
            return UnescapeFromLines(bytes);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Add(ResourceIssueKind.UnreadableFile, m.File, m.Line, $"cannot read the message: {e.Message}");
            return null;
        }
    }

    static byte[] UnescapeFromLines(byte[] bytes)
    {
        var output = new MemoryStream(bytes.Length);
        int pos = 0;
        while (pos < bytes.Length)
        {
            int nl = Array.IndexOf(bytes, (byte)'\n', pos);
            int end = nl < 0 ? bytes.Length : nl + 1;
            int q = pos;
            while (q < end && bytes[q] == '>') q++;
            bool escaped = q > pos && bytes.AsSpan(q, end - q).StartsWith("From "u8);
            output.Write(bytes, escaped ? pos + 1 : pos, end - (escaped ? pos + 1 : pos));
            pos = end;
        }
        return output.ToArray();
    }

    /// <summary>Removes quoted lines, "On ... wrote:" attributions before them, and forwarded-original blocks.</summary>
    internal static string TrimQuoted(string body, out int trimmed)
    {
        var lines = body.Split('\n');
        var kept = new List<string>(lines.Length);
        trimmed = 0;
        for (int i = 0; i < lines.Length; i++)
        {
            var t = lines[i].Trim();
            if (t.StartsWith('>')) { trimmed++; continue; }
            if (t.StartsWith("-----Original Message-----", StringComparison.OrdinalIgnoreCase))
            {
                for (int k = i; k < lines.Length; k++) if (lines[k].Trim().Length > 0) trimmed++;
                break;
            }
            int span = Attribution(lines, i);
            if (span > 0)
            {
                trimmed += span;
                i += span - 1;
                continue;
            }
            kept.Add(lines[i]);
        }
        return string.Join('\n', kept);
    }

    /// <summary>Lines (1 or 2) of an "On DATE, NAME wrote:" line followed by quoted lines; 0 if none here.</summary>
    static int Attribution(string[] lines, int i)
    {
        var t = lines[i].Trim();
        int span;
        if (t.EndsWith("wrote:", StringComparison.OrdinalIgnoreCase)) span = 1;
        else if (t.StartsWith("On ", StringComparison.Ordinal) && i + 1 < lines.Length
                 && lines[i + 1].Trim().EndsWith("wrote:", StringComparison.OrdinalIgnoreCase)) span = 2;
        else return 0;
        for (int k = i + span; k < lines.Length; k++)
        {
            var next = lines[k].Trim();
            if (next.Length == 0) continue;
            return next.StartsWith('>') ? span : 0;
        }
        return span; // nothing after it: a dangling attribution
    }

    static string DisplayName(string from)
    {
        int lt = from.IndexOf('<');
        var name = lt > 0 ? from[..lt].Trim().Trim('"').Trim() : from.Trim('<', '>', ' ');
        return name.Length > 0 ? name : from.Trim();
    }

    static string CollapseSpaces(string s) => System.Text.RegularExpressions.Regex.Replace(s, @"\s+", " ").Trim();
}
