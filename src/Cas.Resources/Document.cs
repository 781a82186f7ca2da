namespace Cas.Resources;

/// <summary>A question about a document with its reference answers (kept for evaluation, never trained on).</summary>
public sealed record DocumentQuestion(string Question, IReadOnlyList<string> Answers);

/// <summary>
/// One document yielded by a resource. <see cref="Id"/> is stable across runs for the same input
/// (derived from the path and position), <see cref="Source"/> says where it came from (path, line).
/// </summary>
public sealed record Document(
    string Id,
    string Text,
    string Source,
    IReadOnlyDictionary<string, string> Metadata,
    IReadOnlyList<DocumentQuestion> Questions)
{
    public static readonly IReadOnlyDictionary<string, string> NoMetadata = new Dictionary<string, string>();
    public static readonly IReadOnlyList<DocumentQuestion> NoQuestions = [];
}
