namespace Cas.Resources;

/// <summary>
/// A source of documents (a file, a folder, a Slack export, a mailbox...). <see cref="Read"/> is lazy:
/// documents are produced one at a time while the caller enumerates, so a large folder or JSONL file is
/// never held in memory as a whole. Every input that is skipped or altered is counted in the report.
/// </summary>
public interface IResource
{
    /// <summary>The kind name used in a resource spec: text, dir, markdown, json, jsonl, latex, slack, email.</summary>
    string Kind { get; }

    /// <summary>Yields the documents; problems go to <paramref name="report"/> (or throw when it is strict).</summary>
    IEnumerable<Document> Read(ResourceReport report);
}
