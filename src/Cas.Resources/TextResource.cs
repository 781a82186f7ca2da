namespace Cas.Resources;

/// <summary>
/// kind "text": one file is one document, its text as decoded (see <see cref="TextDecoding"/>), with
/// "\n" line ends. Id: the file name (or the id given by a folder walk).
/// </summary>
public sealed class TextResource : IResource
{
    public TextResource(string path, string? id = null)
    {
        Path = path;
        Id = id ?? System.IO.Path.GetFileName(path);
    }

    public string Kind => "text";
    public string Path { get; }
    public string Id { get; }

    public IEnumerable<Document> Read(ResourceReport report)
    {
        var text = TextDecoding.ReadFile(Path, report);
        if (text == null) yield break;
        var meta = new Dictionary<string, string> { ["kind"] = Kind };
        var doc = new Document(Id, text, Path, meta, Document.NoQuestions);
        if (report.Accept(doc)) yield return doc;
    }
}
