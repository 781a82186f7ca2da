using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Cas.Resources;

/// <summary>
/// kind "slack": a Slack export folder (users.json, channels.json, and one folder per channel holding
/// YYYY-MM-DD.json message lists; groups.json, mpims.json and dms.json are read too when present).
/// One document per channel, id <c>slack:#NAME</c> (<c>slack:dm:ID</c> for direct messages).
/// Messages are ordered by timestamp, one per line as "Name: text", with a "[YYYY-MM-DD]" line where the
/// (UTC) day changes. Thread replies (thread_ts different from ts) are placed under their parent, indented
/// by two spaces, whatever day file they are stored in; a reply whose parent is not in the export is shown
/// at its own time. Names: the user's real name, else display name, else user name (users.json, then the
/// message's own user_profile, then bot/user name fields). Mentions &lt;@U1&gt; become @Name, &lt;#C1|x&gt;
/// becomes #x, links &lt;url|label&gt; become "label (url)", and &amp;amp; &amp;lt; &amp;gt; are decoded.
/// Join/leave notices and messages without text or files are counted as SystemMessageSkipped.
/// One channel's messages are in memory at a time.
/// </summary>
public sealed class SlackResource : IResource
{
    public SlackResource(string folder) => Folder = folder;

    public string Kind => "slack";
    public string Folder { get; }

    static readonly HashSet<string> NoticeSubtypes = ["channel_join", "channel_leave", "group_join", "group_leave"];

    sealed record Channel(string Id, string Name, string FolderName, bool Direct, string? Purpose);

    sealed record Message(decimal Ts, decimal? ThreadTs, string Name, string Text, int Order);

    public IEnumerable<Document> Read(ResourceReport report)
    {
        if (!Directory.Exists(Folder))
        {
            report.Add(ResourceIssueKind.UnreadableFile, Folder, 0, "Slack export folder not found; give the unzipped export folder");
            yield break;
        }
        var users = LoadUsers(report);
        var channels = LoadChannels(report);
        var channelNames = new Dictionary<string, string>();
        foreach (var c in channels) channelNames[c.Id] = c.Name;

        foreach (var channel in channels)
        {
            var doc = ReadChannel(channel, users, channelNames, report);
            if (doc != null && report.Accept(doc)) yield return doc;
        }
    }

    Dictionary<string, string> LoadUsers(ResourceReport report)
    {
        var users = new Dictionary<string, string>();
        var path = Path.Combine(Folder, "users.json");
        if (!File.Exists(path))
        {
            report.Add(ResourceIssueKind.MalformedMessage, path, 0, "users.json is missing; names come from the messages' own profiles, else user ids");
            return users;
        }
        using var json = ParseFile(path, report);
        if (json == null || json.RootElement.ValueKind != JsonValueKind.Array) return users;
        foreach (var u in json.RootElement.EnumerateArray())
        {
            var id = Str(u, "id");
            if (id == null) continue;
            var name = PersonName(u.TryGetProperty("profile", out var p) ? p : default, u);
            if (name != null) users[id] = name;
        }
        return users;
    }

    /// <summary>Real name, else display name, else user name, from a profile object and/or a user object.</summary>
    static string? PersonName(JsonElement profile, JsonElement user)
    {
        foreach (var (e, key) in new[] { (profile, "real_name"), (user, "real_name"), (profile, "display_name"), (user, "name") })
        {
            var v = e.ValueKind == JsonValueKind.Object ? Str(e, key) : null;
            if (!string.IsNullOrWhiteSpace(v)) return v.Trim();
        }
        return null;
    }

    List<Channel> LoadChannels(ResourceReport report)
    {
        var list = new List<Channel>();
        var seen = new HashSet<string>();
        foreach (var (file, direct) in new[] { ("channels.json", false), ("groups.json", false), ("mpims.json", true), ("dms.json", true) })
        {
            var path = Path.Combine(Folder, file);
            if (!File.Exists(path)) continue;
            using var json = ParseFile(path, report);
            if (json == null || json.RootElement.ValueKind != JsonValueKind.Array) continue;
            foreach (var c in json.RootElement.EnumerateArray())
            {
                var id = Str(c, "id");
                var name = Str(c, "name");
                var folder = name ?? id;
                if (folder == null || !seen.Add(folder)) continue;
                if (folder is "." or ".." || folder.IndexOfAny(['/', '\\']) >= 0)
                {
                    report.Add(ResourceIssueKind.MalformedMessage, path, 0, $"channel name '{folder}' is not a folder name; skipped");
                    continue;
                }
                string? purpose = c.TryGetProperty("purpose", out var pu) && pu.ValueKind == JsonValueKind.Object ? Str(pu, "value") : null;
                list.Add(new Channel(id ?? folder, name ?? folder, folder, direct || name == null, string.IsNullOrWhiteSpace(purpose) ? null : purpose));
            }
        }
        if (list.Count == 0)
        {
            report.Add(ResourceIssueKind.MalformedMessage, Path.Combine(Folder, "channels.json"), 0,
                "no channels.json (or it lists nothing); every sub-folder is read as a channel");
            try
            {
                var dirs = Directory.GetDirectories(Folder);
                Array.Sort(dirs, StringComparer.Ordinal);
                foreach (var d in dirs)
                {
                    var name = Path.GetFileName(d);
                    list.Add(new Channel(name, name, name, false, null));
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                report.Add(ResourceIssueKind.UnreadableFile, Folder, 0, $"cannot list folder: {e.Message}");
            }
        }
        return list;
    }

    Document? ReadChannel(Channel channel, Dictionary<string, string> users, Dictionary<string, string> channelNames, ResourceReport report)
    {
        var dir = Path.Combine(Folder, channel.FolderName);
        string[] days;
        try
        {
            days = Directory.Exists(dir) ? Directory.GetFiles(dir, "*.json") : []; // no folder: no messages
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Add(ResourceIssueKind.UnreadableFile, dir, 0, $"channel '{channel.Name}' has no readable folder: {e.Message}");
            return null;
        }
        Array.Sort(days, StringComparer.Ordinal);

        var messages = new List<Message>();
        foreach (var day in days)
        {
            using var json = ParseFile(day, report);
            if (json == null) continue;
            if (json.RootElement.ValueKind != JsonValueKind.Array)
            {
                report.Add(ResourceIssueKind.MalformedMessage, day, 0, "expected a JSON array of messages; file skipped");
                continue;
            }
            int index = 0;
            foreach (var m in json.RootElement.EnumerateArray())
            {
                var msg = ToMessage(m, day, index++, messages.Count, users, channelNames, report);
                if (msg != null) messages.Add(msg);
            }
        }

        var id = channel.Direct ? $"slack:dm:{channel.Name}" : $"slack:#{channel.Name}";
        var meta = new Dictionary<string, string>
        {
            ["kind"] = Kind, ["channel"] = channel.Name, ["channel_id"] = channel.Id, ["messages"] = messages.Count.ToString(),
        };
        if (channel.Purpose != null) meta["purpose"] = channel.Purpose;
        if (messages.Count == 0) return new Document(id, "", dir, meta, Document.NoQuestions);

        messages.Sort((a, b) => a.Ts != b.Ts ? a.Ts.CompareTo(b.Ts) : a.Order.CompareTo(b.Order));
        var byTs = new HashSet<decimal>();
        foreach (var m in messages) byTs.Add(m.Ts);
        var replies = new Dictionary<decimal, List<Message>>();
        foreach (var m in messages)
            if (m.ThreadTs is decimal parent && parent != m.Ts && byTs.Contains(parent))
            {
                if (!replies.TryGetValue(parent, out var list)) replies[parent] = list = [];
                list.Add(m);
            }

        var sb = new StringBuilder();
        string? day0 = null;
        foreach (var m in messages)
        {
            if (m.ThreadTs is decimal parent && parent != m.Ts && byTs.Contains(parent)) continue; // printed under its parent
            var day = Day(m.Ts);
            if (day != day0)
            {
                if (sb.Length > 0) sb.Append('\n');
                sb.Append('[').Append(day).Append("]\n");
                day0 = day;
            }
            AppendMessage(sb, m, "");
            if (replies.TryGetValue(m.Ts, out var thread))
                foreach (var r in thread) AppendMessage(sb, r, "  ");
        }
        meta["first_date"] = Day(messages[0].Ts);
        meta["last_date"] = Day(messages[^1].Ts);
        return new Document(id, sb.ToString().TrimEnd('\n'), dir, meta, Document.NoQuestions);
    }

    static void AppendMessage(StringBuilder sb, Message m, string indent)
    {
        var lines = m.Text.Split('\n');
        sb.Append(indent).Append(m.Name).Append(": ").Append(lines[0]).Append('\n');
        for (int i = 1; i < lines.Length; i++) sb.Append(indent).Append("  ").Append(lines[i]).Append('\n');
    }

    Message? ToMessage(JsonElement m, string file, int index, int order, Dictionary<string, string> users,
        Dictionary<string, string> channelNames, ResourceReport report)
    {
        if (m.ValueKind != JsonValueKind.Object || !decimal.TryParse(Str(m, "ts"), NumberStyles.Float, CultureInfo.InvariantCulture, out var ts))
        {
            report.Add(ResourceIssueKind.MalformedMessage, file, 0, $"message [{index}] has no valid \"ts\" timestamp; skipped");
            return null;
        }
        var subtype = Str(m, "subtype");
        if (subtype != null && NoticeSubtypes.Contains(subtype))
        {
            report.Add(ResourceIssueKind.SystemMessageSkipped, file, 0, subtype);
            return null;
        }
        var text = ResolveText(Str(m, "text") ?? "", users, channelNames).Trim();
        if (m.TryGetProperty("files", out var files) && files.ValueKind == JsonValueKind.Array)
            foreach (var f in files.EnumerateArray())
            {
                var title = Str(f, "title") ?? Str(f, "name");
                if (title != null) text += (text.Length > 0 ? " " : "") + $"[file: {title}]";
            }
        if (text.Length == 0)
        {
            report.Add(ResourceIssueKind.SystemMessageSkipped, file, 0, "empty message");
            return null;
        }
        decimal? threadTs = decimal.TryParse(Str(m, "thread_ts"), NumberStyles.Float, CultureInfo.InvariantCulture, out var t) ? t : null;
        return new Message(ts, threadTs, SenderName(m, users), TextDecoding.NormalizeNewlines(text), order);
    }

    static string SenderName(JsonElement m, Dictionary<string, string> users)
    {
        var user = Str(m, "user");
        if (user != null && users.TryGetValue(user, out var known)) return known;
        if (m.TryGetProperty("user_profile", out var profile) && PersonName(profile, default) is string fromProfile) return fromProfile;
        var username = Str(m, "username");
        if (!string.IsNullOrWhiteSpace(username)) return username;
        if (m.TryGetProperty("bot_profile", out var bot) && bot.ValueKind == JsonValueKind.Object && Str(bot, "name") is string botName) return botName;
        return user ?? Str(m, "bot_id") ?? "unknown";
    }

    /// <summary>Slack markup to text: &lt;@U1&gt; mentions, &lt;#C1|name&gt; channels, &lt;url|label&gt; links, &lt;!here&gt;, entities.</summary>
    internal static string ResolveText(string text, IReadOnlyDictionary<string, string> users, IReadOnlyDictionary<string, string> channels)
    {
        if (text.IndexOf('<') < 0) return Entities(text);
        var sb = new StringBuilder(text.Length);
        int i = 0;
        while (i < text.Length)
        {
            int open = text.IndexOf('<', i);
            int close = open < 0 ? -1 : text.IndexOf('>', open + 1);
            if (open < 0 || close < 0) { sb.Append(Entities(text[i..])); break; }
            sb.Append(Entities(text[i..open]));
            var inner = text[(open + 1)..close];
            int bar = inner.IndexOf('|');
            var target = bar >= 0 ? inner[..bar] : inner;
            var label = bar >= 0 ? Entities(inner[(bar + 1)..]) : null;
            if (target.StartsWith('@'))
            {
                var uid = target[1..];
                sb.Append('@').Append(users.TryGetValue(uid, out var n) ? n : label ?? uid);
            }
            else if (target.StartsWith('#'))
            {
                var cid = target[1..];
                sb.Append('#').Append(label ?? (channels.TryGetValue(cid, out var cn) ? cn : cid));
            }
            else if (target.StartsWith('!'))
            {
                var special = target[1..];
                if (label != null) sb.Append(label.StartsWith('@') ? label : "@" + label);
                else sb.Append('@').Append(special.Split('^')[0]);
            }
            else
            {
                var url = Entities(target);
                if (url.StartsWith("mailto:", StringComparison.Ordinal)) url = url[7..];
                sb.Append(label == null || label == url ? url : $"{label} ({url})");
            }
            i = close + 1;
        }
        return sb.ToString();
    }

    static string Entities(string s) => s.IndexOf('&') < 0 ? s : WebUtility.HtmlDecode(s);

    static string Day(decimal ts) =>
        DateTimeOffset.FromUnixTimeSeconds((long)Math.Floor(ts)).UtcDateTime.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);

    static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    static JsonDocument? ParseFile(string path, ResourceReport report)
    {
        var text = TextDecoding.ReadFile(path, report);
        if (text == null) return null;
        try
        {
            return JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            report.Add(ResourceIssueKind.MalformedJson, path, (int)(e.LineNumber ?? 0) + 1, $"malformed JSON: {e.Message}; file skipped");
            return null;
        }
    }
}
