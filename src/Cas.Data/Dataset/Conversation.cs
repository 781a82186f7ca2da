using Cas.Engine;

namespace Cas.Data;

/// <summary>Who wrote a message. Stored as one byte (the numeric value) in the dataset format.</summary>
public enum MessageRole : byte
{
    System = 0,
    User = 1,
    Assistant = 2,
}

/// <summary>
/// Where a chunk came from. Offsets are half-open ranges [start, end). <see cref="TokenStart"/> and
/// <see cref="TokenEnd"/> are -1 when the chunk was cut by characters (no token offsets known).
/// Char offsets are UTF-16 code-unit offsets into the document's text (Cas.Resources.Document.Text).
/// </summary>
public sealed record ChunkLocation(string DocumentId, int TokenStart, int TokenEnd, int CharStart, int CharEnd)
{
    /// <summary>True when the token offsets are known (the chunk was cut by tokens).</summary>
    public bool HasTokenOffsets => TokenStart >= 0;

    public override string ToString() => HasTokenOffsets
        ? $"{DocumentId} tokens [{TokenStart},{TokenEnd}) chars [{CharStart},{CharEnd})"
        : $"{DocumentId} chars [{CharStart},{CharEnd})";
}

/// <summary>
/// One message of a conversation: its text and the token ids the model saw or produced.
/// <see cref="Targets"/> holds the teacher's sparse top-k distribution for each token position
/// (normally only on assistant messages); when present it has exactly one position per token.
/// </summary>
public sealed record ConversationMessage(MessageRole Role, string Text, int[] Tokens, SparseTargets? Targets = null);

/// <summary>
/// One record of a self-study dataset: a conversation generated from one chunk of one document.
/// <see cref="Id"/> is unique within a dataset and deterministic for the sample it came from
/// (see <see cref="ConversationIds.For"/>). <see cref="ChunkText"/> may be empty when the writer
/// chose not to keep it.
/// </summary>
public sealed record Conversation(
    ulong Id,
    ChunkLocation Chunk,
    string ChunkText,
    SeedPromptKind SeedKind,
    string SeedPrompt,
    IReadOnlyList<ConversationMessage> Messages);
