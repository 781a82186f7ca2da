namespace Cas.SelfStudy;

/// <summary>
/// The phrasings of each seed kind (several per kind, so the generated messages vary in wording).
/// Every phrasing is addressed to agent A and asks for a message that makes sense without the
/// passage in view, since the student answers it from its cartridge alone.
/// </summary>
public static class SeedPrompts
{
    /// <summary>Placeholder in structuring phrasings replaced by a format name.</summary>
    public const string FormatPlaceholder = "{format}";

    /// <summary>Formats a structuring prompt can ask for.</summary>
    public static IReadOnlyList<string> StructuringFormats { get; } =
        ["JSON", "YAML", "TOML", "XML", "plain text with one fact per line"];

    static readonly string[] Structuring =
    [
        "Write a message asking for one specific part of the passage to be rewritten as {format}. Name the part you mean, " +
        "and ask that every name, date and number be kept exactly as it appears.",
        "Ask the assistant to pull the facts from one section of the passage into a {format} document. Say which section, " +
        "and insist that names, dates, figures and units are copied without any change.",
        "Request that a particular portion of the passage be reorganised into {format}. Identify the portion clearly, " +
        "and require that each person, place, date and quantity be preserved character for character.",
        "Compose a request to turn the key details of one part of the passage into {format}. Point to the part by its " +
        "topic or opening words, and ask that no name, date or number be altered, rounded or left out.",
        "Write a message asking for the entities and figures mentioned in one named part of the passage to be listed " +
        "as {format}, one field each, with every name, date and value spelled exactly as in the original.",
    ];

    static readonly string[] Summarization =
    [
        "Write a message asking for a summary of one specific part of the passage. Refer to that part by its heading, " +
        "topic or opening words so the request cannot be misread.",
        "Ask for a short summary of a single section or paragraph of the passage, saying exactly which one and what the " +
        "summary should concentrate on.",
        "Request a concise summary of one portion of the passage. Identify the portion precisely, and ask that the " +
        "important names and numbers survive in the summary.",
        "Write a request to condense a particular part of the passage into three or four sentences, naming which part is meant.",
        "Ask someone to explain, in a brief paragraph, what happens or what is argued in one named part of the passage.",
    ];

    static readonly string[] Question =
    [
        "Write one difficult, specific question that can be answered from the passage alone. It should take careful " +
        "reading rather than general knowledge, and it must make sense to someone who cannot see the passage.",
        "Ask a precise question about a detail in the passage: a name, a number, a date, a cause or a consequence. " +
        "Make it hard enough that someone who only skimmed would get it wrong, and name the subject instead of saying \"the passage\".",
        "Write a question whose answer requires combining two or more separate pieces of information from the passage. " +
        "Mention the relevant names or terms so that the question stands on its own.",
        "Pose a challenging question with a single clear answer that is stated in, or follows directly from, the text. " +
        "Include enough context that the question is unambiguous.",
        "Write a question that tests whether someone really understood a subtle point in the passage, such as an " +
        "exception, a comparison or the reason behind something.",
    ];

    static readonly string[] UseCase =
    [
        "Imagine someone who works with documents like this one. Write the message they would send to get help with a " +
        "realistic task that depends on the information in the passage.",
        "Think of a practical job (drafting an email, preparing a checklist, planning something, checking a claim) that a " +
        "person could do with the content of the passage, and write their request for it.",
        "Write a realistic request from a user who needs to apply the information in the passage to their own situation. " +
        "Describe that situation concretely.",
        "Write a message from a professional (choose a plausible role) asking for help with a specific task that requires " +
        "knowing what the passage says.",
        "Write a request that a student or researcher might make when using this material for their own work, stating " +
        "what they are trying to produce.",
    ];

    static readonly string[] Creative =
    [
        "Write a request for a short creative piece (a poem, a short story or a dialogue) grounded in the people, events " +
        "or ideas of the passage.",
        "Ask for something imaginative based on the passage, for example a scene told by someone it mentions or a letter " +
        "between two of its figures.",
        "Write an unusual but answerable request that uses the content of the passage creatively, such as explaining it " +
        "to a child or turning it into a riddle.",
        "Request a rewrite of one idea from the passage in a different style or genre, naming the idea so the request is clear.",
    ];

    static readonly string[] Generic =
    [
        "Write the first message of a conversation with an assistant about the content of the passage.",
        "Start a conversation about the subject of the passage. The message may be a question, a request or a remark.",
        "Write an opening message that a curious reader of this passage might send to an assistant.",
        "Begin a discussion about something in the passage that you find interesting, the way a user writes to a chat assistant.",
    ];

    /// <summary>The phrasings of <paramref name="kind"/> (structuring ones contain <see cref="FormatPlaceholder"/>).</summary>
    public static IReadOnlyList<string> Phrasings(SeedPromptKind kind) => kind switch
    {
        SeedPromptKind.Structuring => Structuring,
        SeedPromptKind.Summarization => Summarization,
        SeedPromptKind.Question => Question,
        SeedPromptKind.UseCase => UseCase,
        SeedPromptKind.Creative => Creative,
        SeedPromptKind.Generic => Generic,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown seed prompt kind"),
    };

    /// <summary>A random phrasing of <paramref name="kind"/> (and a random format for structuring).</summary>
    public static SeedPrompt Sample(SeedPromptKind kind, DeterministicRng rng)
    {
        var list = Phrasings(kind);
        string text = list[rng.NextInt(list.Count)];
        if (kind != SeedPromptKind.Structuring) return new SeedPrompt(kind, text);
        string format = StructuringFormats[rng.NextInt(StructuringFormats.Count)];
        return new SeedPrompt(kind, text.Replace(FormatPlaceholder, format), format);
    }
}
