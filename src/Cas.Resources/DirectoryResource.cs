using System.Text;

namespace Cas.Resources;

/// <summary>
/// kind "dir": every file under a folder that matches a <see cref="Glob"/> (default <c>**/*</c>), read by
/// its extension: .md/.markdown as markdown, .tex as latex, .json/.jsonl as JSON when a field path is set
/// (else as text), anything else as text. Files with NUL bytes in their first 8 KiB are counted as binary
/// and skipped. The walk is depth-first with names in ordinal order, so the order is the same on every run;
/// symbolic links to folders are not followed. Folder contents are never loaded at once: one file at a time.
/// LaTeX: files with \begin{document} are read first (after the other files), with their \input/\include
/// files inlined; .tex files that such a main file already included are not read again on their own.
/// Ids: the folder's name, '/', the path below it (e.g. <c>docs/guide/intro.md</c>).
/// </summary>
public sealed class DirectoryResource : IResource
{
    public DirectoryResource(string root, string? glob = null, string? jsonField = null)
    {
        Root = root;
        Glob = glob == null ? Glob.All : new Glob(glob);
        JsonField = jsonField == null ? null : JsonFieldPath.Parse(jsonField);
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        IdPrefix = Path.GetFileName(full);
        if (IdPrefix.Length == 0) IdPrefix = full; // the file system root
    }

    public string Kind => "dir";
    public string Root { get; }
    public Glob Glob { get; }
    /// <summary>Text field for .json/.jsonl files; null reads them as plain text.</summary>
    public JsonFieldPath? JsonField { get; }
    /// <summary>First part of every id: the folder's own name.</summary>
    public string IdPrefix { get; }

    public IEnumerable<Document> Read(ResourceReport report)
    {
        var texFiles = new List<(string Full, string Id)>();
        foreach (var (full, rel) in Walk(Root, "", report))
        {
            var id = IdPrefix + "/" + rel;
            var ext = Path.GetExtension(full).ToLowerInvariant();
            if (ext == ".tex") { texFiles.Add((full, id)); continue; }
            if (IsBinary(full, report)) continue;
            foreach (var doc in ReaderFor(full, ext, id).Read(report)) yield return doc;
        }

        // LaTeX projects: main files first, then fragments that no main file included.
        var included = new HashSet<string>(StringComparer.Ordinal);
        var fragments = new List<(string Full, string Id)>();
        foreach (var (full, id) in texFiles)
        {
            if (!IsLatexMain(full)) { fragments.Add((full, id)); continue; }
            var latex = new LatexResource(full, id);
            foreach (var doc in latex.Read(report)) yield return doc;
            included.UnionWith(latex.IncludedFiles);
        }
        foreach (var (full, id) in fragments)
        {
            if (included.Contains(Path.GetFullPath(full))) continue; // already inside a main document
            foreach (var doc in new LatexResource(full, id).Read(report)) yield return doc;
        }
    }

    IResource ReaderFor(string path, string ext, string id) => ext switch
    {
        ".md" or ".markdown" => new MarkdownResource(path, id),
        ".json" when JsonField != null => new JsonResource(path, JsonField, lines: false, id),
        ".jsonl" when JsonField != null => new JsonResource(path, JsonField, lines: true, id),
        _ => new TextResource(path, id),
    };

    IEnumerable<(string Full, string Rel)> Walk(string dir, string rel, ResourceReport report)
    {
        var entries = new List<(string Name, bool IsDir)>();
        try
        {
            foreach (var f in Directory.EnumerateFiles(dir)) entries.Add((Path.GetFileName(f), false));
            foreach (var d in Directory.EnumerateDirectories(dir))
                if (new DirectoryInfo(d).LinkTarget == null) entries.Add((Path.GetFileName(d), true));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            report.Add(ResourceIssueKind.UnreadableFile, dir, 0, $"cannot list folder: {e.Message}; check it exists and is readable");
            yield break;
        }
        entries.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        foreach (var (name, isDir) in entries)
        {
            var childRel = rel.Length == 0 ? name : rel + "/" + name;
            var child = Path.Combine(dir, name);
            if (isDir)
            {
                if (!Glob.CouldMatchBelow(childRel)) continue;
                foreach (var x in Walk(child, childRel, report)) yield return x;
            }
            else if (Glob.IsMatch(childRel))
                yield return (child, childRel);
        }
    }

    static bool IsBinary(string path, ResourceReport report)
    {
        Span<byte> head = stackalloc byte[8192];
        int n;
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
            n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // the reader will report it as unreadable
        }
        if (!TextDecoding.LooksBinary(head[..n])) return false;
        report.Add(ResourceIssueKind.BinaryFileSkipped, path, 0, "looks binary (NUL bytes in the first 8 KiB); skipped. Narrow the glob to leave it out");
        return true;
    }

    static readonly byte[] BeginDocument = Encoding.ASCII.GetBytes(@"\begin{document}");

    static bool IsLatexMain(string path)
    {
        try { return File.ReadAllBytes(path).AsSpan().IndexOf(BeginDocument) >= 0; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return true; } // read (and reported) as a main file
    }
}
