namespace Cas.Data;

/// <summary>
/// A seed prompt: the instruction agent A receives (next to the chunk) telling it what kind of
/// first message to write. <see cref="Format"/> is the target format for structuring prompts.
/// </summary>
public sealed record SeedPrompt(SeedPromptKind Kind, string Text, string? Format = null);
