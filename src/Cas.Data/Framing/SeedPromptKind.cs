using Cas.Engine;

namespace Cas.Data;

/// <summary>
/// What kind of first message agent A is asked to write. The numeric values are stored in dataset
/// files (one byte) and must never change.
/// </summary>
public enum SeedPromptKind : byte
{
    /// <summary>Restate a named part of the text in a format (JSON, YAML, TOML, XML, plain lines), keeping names, dates and numbers exact.</summary>
    Structuring = 0,
    /// <summary>Summarize a named part of the text.</summary>
    Summarization = 1,
    /// <summary>A hard, specific question answerable from the chunk.</summary>
    Question = 2,
    /// <summary>A realistic task someone would do with the text.</summary>
    UseCase = 3,
    /// <summary>A creative request grounded in the text.</summary>
    Creative = 4,
    /// <summary>Just start a conversation about the text.</summary>
    Generic = 5,
}

/// <summary>Names of seed kinds as written in mixes and shown to users: structuring, summarization, question, use_case, creative, generic.</summary>
public static class SeedPromptKinds
{
    /// <summary>All kinds in their numeric order.</summary>
    public static IReadOnlyList<SeedPromptKind> All { get; } =
    [
        SeedPromptKind.Structuring, SeedPromptKind.Summarization, SeedPromptKind.Question,
        SeedPromptKind.UseCase, SeedPromptKind.Creative, SeedPromptKind.Generic,
    ];

    public static string Name(SeedPromptKind kind) => kind switch
    {
        SeedPromptKind.Structuring => "structuring",
        SeedPromptKind.Summarization => "summarization",
        SeedPromptKind.Question => "question",
        SeedPromptKind.UseCase => "use_case",
        SeedPromptKind.Creative => "creative",
        SeedPromptKind.Generic => "generic",
        _ => $"kind{(int)kind}",
    };

    /// <summary>Parses a kind name (case-insensitive; "use-case" is accepted for "use_case").</summary>
    public static bool TryParse(string name, out SeedPromptKind kind)
    {
        string n = name.Trim().ToLowerInvariant().Replace('-', '_');
        foreach (var k in All)
            if (Name(k) == n) { kind = k; return true; }
        kind = default;
        return false;
    }

    public static SeedPromptKind Parse(string name) => TryParse(name, out var k) ? k
        : throw new InvalidRequestException($"unknown seed prompt kind '{name}'; expected one of {string.Join(", ", All.Select(Name))}.");
}
