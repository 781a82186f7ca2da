namespace Cas.Data;

/// <summary>
/// How self-study prompts look as plain text, for base models that have no chat template. All the
/// wording lives here so agent A, agent B and the student stay consistent.
/// <para>Agent A (writes the user message) sees <see cref="AgentAPrompt"/> and its output is cut at
/// <see cref="AgentAStop"/>. Agent B (the teacher) sees <see cref="TeacherContext"/> followed by
/// <see cref="ConversationPrompt"/> and its answer is cut at one of <see cref="AnswerStops"/>.
/// The student sees its cartridge followed by the same <see cref="ConversationPrompt"/> text, so
/// encode the context and the conversation separately: the conversation's tokens are then the same
/// for teacher and student, which the per-token distillation targets require.</para>
/// </summary>
public static class BaseModelFraming
{
    /// <summary>Agent A's output ends where it writes this (or at the end of generation).</summary>
    public const string AgentAStop = "</message>";

    /// <summary>Agent B's answer ends where it starts a new turn.</summary>
    public static IReadOnlyList<string> AnswerStops { get; } = ["\nUser:", "\n\nUser:", "</passage>"];

    /// <summary>Agent A's whole prompt: the passage, the seed instruction, and an open message tag to continue.</summary>
    public static string AgentAPrompt(string chunkText, string seedInstruction) =>
        "Below is a passage from a document, followed by an instruction for writing a message about it.\n\n" +
        "<passage>\n" + chunkText.Trim() + "\n</passage>\n\n" +
        "Instruction: " + seedInstruction.Trim() + " Write only the message itself, with no preamble.\n\n" +
        "<message>\n";

    /// <summary>What the teacher sees before the conversation: the passage the cartridge stands in for.</summary>
    public static string TeacherContext(string chunkText) =>
        "Below is a passage from a document, followed by a conversation in which an assistant answers using it.\n\n" +
        "<passage>\n" + chunkText.Trim() + "\n</passage>\n\n";

    /// <summary>One user turn and the start of the assistant's reply; the answer tokens follow directly.</summary>
    public static string ConversationPrompt(string userMessage) =>
        "User: " + userMessage.Trim() + "\nAssistant:";

    /// <summary>
    /// Cleans agent A's raw continuation into a user message: cuts at <see cref="AgentAStop"/>, drops a
    /// leading "Message:"/"User:" label and surrounding quotes and whitespace. Empty means unusable.
    /// </summary>
    public static string CleanAgentAOutput(string raw)
    {
        string s = CutAt(raw, [AgentAStop, "<message>", "</passage>"]).Trim();
        foreach (var label in (string[])["Message:", "User:"])
            if (s.StartsWith(label, StringComparison.OrdinalIgnoreCase)) s = s[label.Length..].TrimStart();
        if (s.Length >= 2 && s[0] == '"' && s[^1] == '"') s = s[1..^1].Trim();
        return s;
    }

    /// <summary>Cleans agent B's raw continuation into the answer text: cut at the first stop, trimmed.</summary>
    public static string CleanAnswer(string raw) => CutAt(raw, AnswerStops).Trim();

    /// <summary>The prefix of <paramref name="text"/> before the earliest of <paramref name="stops"/>.</summary>
    public static string CutAt(string text, IEnumerable<string> stops)
    {
        int cut = text.Length;
        foreach (var s in stops)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && i < cut) cut = i;
        }
        return text[..cut];
    }
}
