namespace Cas.Resources;

/// <summary>
/// A resource could not be opened as asked (bad spec, missing path, bad field path), or a strict
/// <see cref="ResourceReport"/> met an input it would otherwise have skipped. <see cref="Path"/> and
/// <see cref="Line"/> say where, when known.
/// </summary>
public sealed class ResourceException : Exception
{
    public ResourceException(string message, string? path = null, int line = 0, ResourceIssueKind? kind = null,
        Exception? inner = null) : base(message, inner)
    {
        Path = path;
        Line = line;
        Kind = kind;
    }

    /// <summary>The file (or folder) concerned, or null for a spec error.</summary>
    public string? Path { get; }

    /// <summary>1-based line in <see cref="Path"/>, or 0 when no line applies.</summary>
    public int Line { get; }

    /// <summary>The issue a strict report turned into this exception, or null.</summary>
    public ResourceIssueKind? Kind { get; }
}
