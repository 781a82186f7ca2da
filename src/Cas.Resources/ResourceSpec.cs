namespace Cas.Resources;

/// <summary>
/// Parses resource specs of the form <c>KIND:PATH[#field]</c>:
/// <list type="bullet">
/// <item><c>text:notes.txt</c>, <c>markdown:README.md</c>, <c>latex:paper/main.tex</c> - one file.</item>
/// <item><c>json:data.json#items[*].text</c>, <c>jsonl:quality.jsonl#input</c> - the field path is required.</item>
/// <item><c>dir:docs</c>, <c>dir:docs/**/*.md</c> - a folder; the first path segment with '*' or '?'
/// starts the glob (or pass <c>glob</c>). <c>#field</c> makes .json/.jsonl files in it read as JSON.</item>
/// <item><c>slack:export-folder</c>, <c>email:inbox.mbox</c>, <c>email:mail-folder</c>.</item>
/// </list>
/// For the other kinds everything after "KIND:" is the path, '#' included. The kind is case-insensitive.
/// The path must exist; errors are <see cref="ResourceException"/>s that say what to write instead.
/// </summary>
public static class ResourceSpec
{
    public static IReadOnlyList<string> Kinds { get; } = ["text", "dir", "markdown", "json", "jsonl", "latex", "slack", "email"];

    /// <summary>Parses a spec into its resource.</summary>
    public static IResource Parse(string spec) => Parse(spec, glob: null);

    /// <summary>Parses a spec; <paramref name="glob"/> is the file pattern for a "dir" spec (e.g. "**/*.md").</summary>
    public static IResource Parse(string spec, string? glob)
    {
        if (string.IsNullOrWhiteSpace(spec))
            throw new ResourceException($"empty resource spec; write KIND:PATH with KIND one of {string.Join(", ", Kinds)}");
        int colon = spec.IndexOf(':');
        if (colon <= 0)
            throw new ResourceException($"resource spec '{spec}' has no kind; write KIND:PATH, e.g. text:{spec} (kinds: {string.Join(", ", Kinds)})");
        var kind = spec[..colon].Trim().ToLowerInvariant();
        var rest = spec[(colon + 1)..];
        if (!Kinds.Contains(kind))
            throw new ResourceException($"unknown resource kind '{spec[..colon]}' in '{spec}'; known kinds: {string.Join(", ", Kinds)}");

        string path = rest;
        string? field = null;
        if (kind is "json" or "jsonl" or "dir")
        {
            int hash = rest.LastIndexOf('#');
            if (hash >= 0)
            {
                path = rest[..hash];
                field = rest[(hash + 1)..].Trim();
                if (field.Length == 0) throw new ResourceException($"resource spec '{spec}' has an empty #field; write e.g. {kind}:{path}#input");
            }
        }
        if (string.IsNullOrWhiteSpace(path))
            throw new ResourceException($"resource spec '{spec}' has no path; write {kind}:PATH");
        if (glob != null && kind != "dir")
            throw new ResourceException($"a glob ('{glob}') only applies to dir resources, not '{kind}'");

        switch (kind)
        {
            case "text": return new TextResource(RequireFile(kind, path));
            case "markdown": return new MarkdownResource(RequireFile(kind, path));
            case "latex": return new LatexResource(RequireFile(kind, path));
            case "json" or "jsonl":
                if (field == null)
                    throw new ResourceException(
                        $"{kind} resource '{spec}' needs the field that holds the text: write {kind}:{path}#FIELD, e.g. #input, #document, #a.b.c or #items[*].text");
                return new JsonResource(RequireFile(kind, path), field, lines: kind == "jsonl");
            case "dir":
                var (root, pattern) = SplitGlob(path);
                if (glob != null)
                {
                    if (pattern != null) throw new ResourceException($"'{spec}' already has a glob ('{pattern}'); do not pass another ('{glob}')");
                    pattern = glob;
                }
                return new DirectoryResource(RequireFolder(kind, root), pattern, field);
            case "slack": return new SlackResource(RequireFolder(kind, path));
            default: // email
                if (!File.Exists(path) && !Directory.Exists(path))
                    throw new ResourceException($"email resource: '{path}' is neither an mbox/.eml file nor a folder (full path {Path.GetFullPath(path)})", path);
                return new EmailResource(path);
        }
    }

    /// <summary>"docs/**/*.md" -> ("docs", "**/*.md"); "docs" -> ("docs", null); "*.md" -> (".", "*.md").</summary>
    internal static (string Root, string? Glob) SplitGlob(string path)
    {
        var normalized = path.Replace('\\', '/');
        var segments = normalized.Split('/');
        for (int i = 0; i < segments.Length; i++)
        {
            if (!Glob.HasWildcard(segments[i])) continue;
            var root = string.Join('/', segments[..i]);
            if (root.Length == 0) root = normalized.StartsWith('/') ? "/" : ".";
            return (root, string.Join('/', segments[i..]));
        }
        return (path, null);
    }

    static string RequireFile(string kind, string path)
    {
        if (File.Exists(path)) return path;
        if (Directory.Exists(path))
            throw new ResourceException($"{kind} resource: '{path}' is a folder; use dir:{path} to read the files in it", path);
        throw new ResourceException($"{kind} resource: file '{path}' not found (full path {Path.GetFullPath(path)})", path);
    }

    static string RequireFolder(string kind, string path)
    {
        if (Directory.Exists(path)) return path;
        if (File.Exists(path))
            throw new ResourceException($"{kind} resource: '{path}' is a file, not a folder", path);
        throw new ResourceException($"{kind} resource: folder '{path}' not found (full path {Path.GetFullPath(path)})", path);
    }
}
