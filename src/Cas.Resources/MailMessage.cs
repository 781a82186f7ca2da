using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using System.Text.Unicode;

namespace Cas.Resources;

/// <summary>Header fields of a message or MIME part, unfolded, in order; values are raw (not RFC 2047 decoded).</summary>
internal sealed class MailHeaders
{
    readonly List<(string Name, string Value)> _fields = [];

    public IReadOnlyList<(string Name, string Value)> Fields => _fields;

    /// <summary>The first field with this name (case-insensitive), or null.</summary>
    public string? this[string name]
    {
        get
        {
            foreach (var (n, v) in _fields) if (n.Equals(name, StringComparison.OrdinalIgnoreCase)) return v;
            return null;
        }
    }

    /// <summary>Parses the header block at the start of <paramref name="raw"/>; bodyStart is where the body begins.</summary>
    public static MailHeaders Parse(ReadOnlySpan<byte> raw, out int bodyStart)
    {
        var h = new MailHeaders();
        bodyStart = raw.Length;
        int pos = 0;
        StringBuilder? value = null;
        string? name = null;
        while (pos < raw.Length)
        {
            int nl = raw[pos..].IndexOf((byte)'\n');
            int end = nl < 0 ? raw.Length : pos + nl;
            var line = raw[pos..end];
            if (line.Length > 0 && line[^1] == '\r') line = line[..^1];
            int next = nl < 0 ? raw.Length : end + 1;
            if (line.Length == 0) { bodyStart = next; break; }
            var text = DecodeHeaderBytes(line);
            if ((text[0] == ' ' || text[0] == '\t') && value != null)
                value.Append(text); // folded: the line break goes, the white space stays
            else
            {
                if (name != null) h._fields.Add((name, value!.ToString().Trim()));
                int colon = text.IndexOf(':');
                if (colon > 0 && !text[..colon].Contains(' '))
                {
                    name = text[..colon];
                    value = new StringBuilder(text[(colon + 1)..]);
                }
                else { name = null; value = null; } // not a header line (an mbox "From " line, junk)
            }
            pos = next;
        }
        if (name != null) h._fields.Add((name, value!.ToString().Trim()));
        return h;
    }

    /// <summary>Header bytes are ASCII, or UTF-8 (RFC 6532); anything else is read as Latin-1.</summary>
    static string DecodeHeaderBytes(ReadOnlySpan<byte> line) =>
        Utf8.IsValid(line) ? Encoding.UTF8.GetString(line) : Encoding.Latin1.GetString(line);
}

/// <summary>Where problems in a message body are reported.</summary>
internal sealed record MailContext(ResourceReport Report, string Path, int Line);

/// <summary>MIME decoding helpers and the text extraction of one message.</summary>
internal static class Mime
{
    static Mime() => Encoding.RegisterProvider(CodePagesEncodingProvider.Instance); // windows-1252, koi8-r, ...

    static readonly Regex EncodedWord = new(@"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=", RegexOptions.CultureInvariant);

    /// <summary>RFC 2047: =?charset?B?...?= and =?charset?Q?...?= words decoded; white space between two such words dropped.</summary>
    public static string DecodeEncodedWords(string s)
    {
        if (!s.Contains("=?", StringComparison.Ordinal)) return s;
        var sb = new StringBuilder(s.Length);
        int at = 0;
        bool lastWasWord = false;
        foreach (Match m in EncodedWord.Matches(s))
        {
            var between = s[at..m.Index];
            if (!(lastWasWord && between.Trim().Length == 0)) sb.Append(between);
            var decoded = DecodeWord(m.Groups[1].Value, m.Groups[2].Value, m.Groups[3].Value);
            sb.Append(decoded ?? m.Value);
            lastWasWord = decoded != null;
            at = m.Index + m.Length;
        }
        sb.Append(s, at, s.Length - at);
        return sb.ToString();
    }

    static string? DecodeWord(string charset, string encoding, string data)
    {
        int star = charset.IndexOf('*'); // RFC 2231 language suffix
        if (star >= 0) charset = charset[..star];
        byte[] bytes;
        if (encoding is "B" or "b")
        {
            var padded = data.PadRight((data.Length + 3) / 4 * 4, '=');
            try { bytes = Convert.FromBase64String(padded); }
            catch (FormatException) { return null; }
        }
        else
        {
            var list = new List<byte>(data.Length);
            for (int i = 0; i < data.Length; i++)
            {
                if (data[i] == '_') list.Add((byte)' ');
                else if (data[i] == '=' && i + 2 < data.Length && IsHex(data[i + 1]) && IsHex(data[i + 2]))
                {
                    list.Add((byte)(Hex(data[i + 1]) * 16 + Hex(data[i + 2])));
                    i += 2;
                }
                else list.Add((byte)data[i]);
            }
            bytes = list.ToArray();
        }
        var enc = GetEncoding(charset);
        if (enc == null) return null;
        return enc is UTF8Encoding ? TextDecoding.DecodeWithReplacement(bytes, out _, out _) : enc.GetString(bytes);
    }

    /// <summary>The encoding for a MIME charset name (us-ascii read as UTF-8), or null when unknown.</summary>
    public static Encoding? GetEncoding(string? charset)
    {
        if (string.IsNullOrWhiteSpace(charset)) return new UTF8Encoding(false);
        var name = charset.Trim().Trim('"').ToLowerInvariant();
        if (name is "us-ascii" or "ascii" or "utf-8" or "utf8" or "unicode-1-1-utf-8") return new UTF8Encoding(false);
        try { return Encoding.GetEncoding(name); }
        catch (ArgumentException) { return null; }
    }

    /// <summary>"type/subtype; a=b; c=\"d\"" -> lower-case type and parameters (names lower-case).</summary>
    public static (string Type, Dictionary<string, string> Params) ContentType(string? value, string fallback)
    {
        var ps = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        if (string.IsNullOrWhiteSpace(value)) return (fallback, ps);
        var parts = SplitParams(value);
        var type = parts[0].Trim().ToLowerInvariant();
        for (int i = 1; i < parts.Count; i++)
        {
            int eq = parts[i].IndexOf('=');
            if (eq <= 0) continue;
            var v = parts[i][(eq + 1)..].Trim();
            if (v.Length >= 2 && v[0] == '"' && v[^1] == '"') v = v[1..^1].Replace("\\\"", "\"");
            ps[parts[i][..eq].Trim()] = v;
        }
        if (!type.Contains('/')) type = fallback;
        return (type, ps);
    }

    static List<string> SplitParams(string value)
    {
        var parts = new List<string>();
        var sb = new StringBuilder();
        bool quoted = false;
        foreach (var c in value)
        {
            if (c == '"') quoted = !quoted;
            if (c == ';' && !quoted) { parts.Add(sb.ToString()); sb.Clear(); }
            else sb.Append(c);
        }
        parts.Add(sb.ToString());
        return parts;
    }

    /// <summary>Undoes a Content-Transfer-Encoding (base64, quoted-printable; others pass through).</summary>
    public static byte[] DecodeTransfer(ReadOnlySpan<byte> body, string? encoding, MailContext ctx)
    {
        var cte = encoding?.Trim().ToLowerInvariant();
        if (cte == "base64")
        {
            var chars = new char[body.Length + 3]; // room for missing '=' padding
            int n = 0;
            foreach (var b in body)
                if (char.IsAsciiLetterOrDigit((char)b) || b == '+' || b == '/') chars[n++] = (char)b;
            int usable = n / 4 * 4;
            var extra = n - usable;
            if (extra >= 2) { for (int k = extra; k < 4; k++) chars[n++] = '='; usable = n; }
            try { return Convert.FromBase64CharArray(chars, 0, usable); }
            catch (FormatException)
            {
                ctx.Report.Add(ResourceIssueKind.MalformedMessage, ctx.Path, ctx.Line, "invalid base64 body; kept as raw bytes");
                return body.ToArray();
            }
        }
        if (cte == "quoted-printable")
        {
            var output = new byte[body.Length];
            int n = 0;
            for (int i = 0; i < body.Length; i++)
            {
                byte b = body[i];
                if (b != '=') { output[n++] = b; continue; }
                if (i + 1 < body.Length && body[i + 1] == '\n') { i += 1; continue; } // soft line break
                if (i + 2 < body.Length && body[i + 1] == '\r' && body[i + 2] == '\n') { i += 2; continue; }
                if (i + 2 < body.Length && IsHex((char)body[i + 1]) && IsHex((char)body[i + 2]))
                {
                    output[n++] = (byte)(Hex((char)body[i + 1]) * 16 + Hex((char)body[i + 2]));
                    i += 2;
                    continue;
                }
                if (i + 1 == body.Length) continue; // '=' at the very end: a soft break
                output[n++] = b;
            }
            return output[..n];
        }
        return body.ToArray();
    }

    /// <summary>Bytes in the part's charset to text with "\n" line ends; unknown charsets and bad UTF-8 are reported.</summary>
    public static string DecodeCharset(byte[] bytes, string? charset, MailContext ctx)
    {
        var enc = GetEncoding(charset);
        if (enc == null)
            ctx.Report.Add(ResourceIssueKind.MalformedMessage, ctx.Path, ctx.Line, $"unknown charset '{charset}'; decoded as UTF-8");
        string text = enc == null || enc is UTF8Encoding
            ? TextDecoding.Decode(bytes, ctx.Path, ctx.Line, ctx.Report)
            : enc.GetString(bytes);
        return TextDecoding.NormalizeNewlines(text);
    }

    /// <summary>
    /// The readable text of an entity: text/plain parts (multipart/alternative prefers text/plain, else
    /// text/html converted), nested messages (forwards) with their From/Subject; attachments and
    /// non-text parts are counted as AttachmentSkipped.
    /// </summary>
    public static void ExtractText(ReadOnlyMemory<byte> entity, StringBuilder sb, MailContext ctx, string defaultType = "text/plain", int depth = 0)
    {
        var headers = MailHeaders.Parse(entity.Span, out int bodyStart);
        var body = entity[bodyStart..];
        var (type, ps) = ContentType(headers["Content-Type"], defaultType);
        bool attachment = headers["Content-Disposition"]?.TrimStart().StartsWith("attachment", StringComparison.OrdinalIgnoreCase) == true;

        if (type.StartsWith("multipart/", StringComparison.Ordinal) && depth < 20)
        {
            if (!ps.TryGetValue("boundary", out var boundary) || boundary.Length == 0)
            {
                ctx.Report.Add(ResourceIssueKind.MalformedMessage, ctx.Path, ctx.Line, $"{type} without a boundary; body read as plain text");
                Append(sb, DecodeCharset(body.ToArray(), null, ctx));
                return;
            }
            var parts = SplitMultipart(body, boundary);
            var childDefault = type == "multipart/digest" ? "message/rfc822" : "text/plain";
            if (type == "multipart/alternative" && parts.Count > 0)
            {
                ExtractText(ChooseAlternative(parts), sb, ctx, childDefault, depth + 1); // the others say the same
                return;
            }
            foreach (var part in parts) ExtractText(part, sb, ctx, childDefault, depth + 1);
            return;
        }
        if (type == "message/rfc822" && !attachment && depth < 20)
        {
            var inner = MailHeaders.Parse(body.Span, out _);
            var fwd = new StringBuilder("---------- Forwarded message ----------\n");
            foreach (var field in new[] { "From", "Date", "Subject" })
                if (inner[field] is string v) fwd.Append(field).Append(": ").Append(DecodeEncodedWords(v)).Append('\n');
            fwd.Append('\n');
            ExtractText(body, fwd, ctx, "text/plain", depth + 1);
            Append(sb, fwd.ToString());
            return;
        }
        if ((type == "text/plain" || type == "text/html") && !attachment)
        {
            var bytes = DecodeTransfer(body.Span, headers["Content-Transfer-Encoding"], ctx);
            ps.TryGetValue("charset", out var charset);
            var text = DecodeCharset(bytes, charset, ctx);
            Append(sb, type == "text/html" ? HtmlText.ToText(text) : text);
            return;
        }
        ctx.Report.Add(ResourceIssueKind.AttachmentSkipped, ctx.Path, ctx.Line, type);
    }

    static ReadOnlyMemory<byte> ChooseAlternative(List<ReadOnlyMemory<byte>> parts)
    {
        ReadOnlyMemory<byte>? multipart = null, html = null;
        foreach (var part in parts)
        {
            var h = MailHeaders.Parse(part.Span, out _);
            var (type, _) = ContentType(h["Content-Type"], "text/plain");
            if (type == "text/plain") return part;
            if (type.StartsWith("multipart/", StringComparison.Ordinal)) multipart ??= part;
            else if (type == "text/html") html ??= part;
        }
        return multipart ?? html ?? parts[0];
    }

    static void Append(StringBuilder sb, string text)
    {
        text = text.Trim('\n');
        if (text.Length == 0) return;
        if (sb.Length > 0 && sb[^1] != '\n') sb.Append('\n');
        if (sb.Length > 0) sb.Append('\n');
        sb.Append(text).Append('\n');
    }

    /// <summary>The parts between "--boundary" lines (the line break before a delimiter belongs to it).</summary>
    public static List<ReadOnlyMemory<byte>> SplitMultipart(ReadOnlyMemory<byte> body, string boundary)
    {
        var parts = new List<ReadOnlyMemory<byte>>();
        var delimiter = Encoding.ASCII.GetBytes("--" + boundary);
        var span = body.Span;
        int pos = 0, partStart = -1;
        while (pos < span.Length)
        {
            int nl = span[pos..].IndexOf((byte)'\n');
            int end = nl < 0 ? span.Length : pos + nl;
            var line = span[pos..end];
            if (line.StartsWith(delimiter))
            {
                if (partStart >= 0)
                {
                    int stop = pos;
                    if (stop > partStart && span[stop - 1] == '\n') stop--;
                    if (stop > partStart && span[stop - 1] == '\r') stop--;
                    parts.Add(body[partStart..stop]);
                }
                if (line[delimiter.Length..].StartsWith("--"u8)) return parts;
                partStart = nl < 0 ? span.Length : end + 1;
            }
            pos = nl < 0 ? span.Length : end + 1;
        }
        if (partStart >= 0 && partStart < span.Length) parts.Add(body[partStart..]); // no closing delimiter
        return parts;
    }

    static readonly Regex MessageIdToken = new(@"<[^<>\s]+>", RegexOptions.CultureInvariant);

    /// <summary>The &lt;id&gt; tokens of Message-ID / In-Reply-To / References (a bare id is wrapped in brackets).</summary>
    public static List<string> MessageIds(string? value)
    {
        var ids = new List<string>();
        if (string.IsNullOrWhiteSpace(value)) return ids;
        foreach (Match m in MessageIdToken.Matches(value)) ids.Add(m.Value);
        if (ids.Count == 0)
        {
            var bare = value.Trim();
            if (bare.Contains('@') && !bare.Contains(' ')) ids.Add("<" + bare + ">");
        }
        return ids;
    }

    static readonly string[] Months = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

    static readonly Dictionary<string, int> Zones = new(StringComparer.OrdinalIgnoreCase)
    {
        ["UT"] = 0, ["UTC"] = 0, ["GMT"] = 0, ["Z"] = 0, ["EST"] = -5, ["EDT"] = -4, ["CST"] = -6, ["CDT"] = -5,
        ["MST"] = -7, ["MDT"] = -6, ["PST"] = -8, ["PDT"] = -7,
    };

    /// <summary>RFC 5322 date ("Tue, 5 Mar 2024 10:00:00 +0100 (CET)"), or null when it cannot be read.</summary>
    public static DateTimeOffset? ParseDate(string? value)
    {
        if (string.IsNullOrWhiteSpace(value)) return null;
        var s = Regex.Replace(value, @"\([^)]*\)", " ").Replace(',', ' ');
        var t = s.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
        int i = 0;
        if (i < t.Length && t[i].All(char.IsAsciiLetter) && Array.IndexOf(Months, t[i].ToLowerInvariant()[..Math.Min(3, t[i].Length)]) < 0) i++; // weekday
        if (i + 3 >= t.Length) return null;
        if (!int.TryParse(t[i], NumberStyles.None, CultureInfo.InvariantCulture, out int day)) return null;
        int month = t[i + 1].Length >= 3 ? Array.IndexOf(Months, t[i + 1][..3].ToLowerInvariant()) + 1 : 0;
        if (month == 0 || !int.TryParse(t[i + 2], NumberStyles.None, CultureInfo.InvariantCulture, out int year)) return null;
        if (t[i + 2].Length <= 2) year += year < 50 ? 2000 : 1900;
        else if (t[i + 2].Length == 3) year += 1900;
        var hms = t[i + 3].Split(':');
        if (hms.Length < 2 || !int.TryParse(hms[0], out int hh) || !int.TryParse(hms[1], out int mm)) return null;
        int ss = hms.Length > 2 && int.TryParse(hms[2], out int sec) ? sec : 0;
        var offset = TimeSpan.Zero;
        if (i + 4 < t.Length)
        {
            var z = t[i + 4];
            if ((z[0] == '+' || z[0] == '-') && z.Length == 5 && int.TryParse(z[1..], NumberStyles.None, CultureInfo.InvariantCulture, out int hhmm))
                offset = TimeSpan.FromMinutes((z[0] == '-' ? -1 : 1) * (hhmm / 100 * 60 + hhmm % 100));
            else if (Zones.TryGetValue(z, out int hours)) offset = TimeSpan.FromHours(hours);
        }
        try { return new DateTimeOffset(year, month, day, hh, mm, Math.Min(ss, 59), offset); }
        catch (ArgumentOutOfRangeException) { return null; }
    }

    static readonly Regex ReplyPrefix = new(@"^\s*(re|fw|fwd|aw|sv|wg|antw|vs|ref)\s*(\[\d+\]|\(\d+\))?\s*:\s*", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
    static readonly Regex ListTag = new(@"^\s*\[[^\]]*\]\s*", RegexOptions.CultureInvariant);

    /// <summary>Subject without "Re:"/"Fwd:"/"[list]" prefixes, white space collapsed, lower-case; isReply when a prefix was removed.</summary>
    public static string NormalizeSubject(string subject, out bool isReply)
    {
        isReply = false;
        var s = subject;
        while (true)
        {
            var m = ReplyPrefix.Match(s);
            if (m.Success) { s = s[m.Length..]; isReply = true; continue; }
            m = ListTag.Match(s);
            if (m.Success && m.Length < s.Length) { s = s[m.Length..]; continue; }
            break;
        }
        return Regex.Replace(s, @"\s+", " ").Trim().ToLowerInvariant();
    }

    static bool IsHex(char c) => char.IsAsciiHexDigit(c);
    static int Hex(char c) => c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}
