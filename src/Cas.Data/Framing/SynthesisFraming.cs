using Cas.Engine;
using Cas.Engine.Tokenizers;

namespace Cas.Data;

/// <summary>
/// How the two agents' prompts and the student's token sequence are laid out, for chat models (a chat
/// template) or base models (<see cref="BaseModelFraming"/>).
/// <para>Every prompt is a chunk prefix (the only part that holds the chunk; prefilled once per chunk and
/// forked) followed by a suffix. The teacher's suffix is exactly the student's sequence so far: the
/// student's pieces are tokenized on their own and B's answer ids are appended as generated, so the
/// teacher's targets are conditioned on the very tokens the student will see after its cartridge.</para>
/// </summary>
public abstract class SynthesisFraming
{
    protected SynthesisFraming(ITokenizer tokenizer) => Tokenizer = tokenizer;

    public ITokenizer Tokenizer { get; }

    /// <summary>"chatml", "llama3" or "base", for metadata and messages.</summary>
    public abstract string Name { get; }

    /// <summary>Agent A's chunk prefix.</summary>
    public abstract int[] UserPrefix(string chunk);

    /// <summary>Agent B's chunk prefix (may equal the user prefix, which then shares one prefill).</summary>
    public abstract int[] TeacherPrefix(string chunk);

    /// <summary>Agent A's prompt after its prefix, for round <c>turns.Count + 1</c> (turns: earlier user messages and answer texts).</summary>
    public abstract int[] UserSuffix(string chunk, SeedPrompt seed, IReadOnlyList<(string User, string Answer)> turns);

    /// <summary>
    /// The student's tokens for a user turn: the turn framing around <paramref name="userMessage"/> up to
    /// where the answer starts. <paramref name="previousAnswer"/> is the previous answer's ids (null in
    /// round 1), whose stop token, when it ended on one, already closes that turn.
    /// </summary>
    public abstract int[] StudentUserTurn(string userMessage, int[]? previousAnswer);

    public abstract IReadOnlyList<int> UserStopTokens { get; }
    public abstract IReadOnlyList<int> AnswerStopTokens { get; }
    /// <summary>Text at which agent A's output is cut (and generation stopped).</summary>
    public abstract IReadOnlyList<string> UserStopTexts { get; }
    /// <summary>Text at which an answer is cut (and generation stopped).</summary>
    public abstract IReadOnlyList<string> AnswerStopTexts { get; }

    /// <summary>Agent A's raw output as a user message ("" when unusable).</summary>
    public string CleanUserMessage(string raw) => BaseModelFraming.CleanAgentAOutput(BaseModelFraming.CutAt(raw, UserStopTexts));

    /// <summary>Prompt tokens that any prompt of this framing adds around the chunk and the messages, roughly (for the context check).</summary>
    public abstract int Overhead(bool teacher);

    protected int[] Encode(string text) => Tokenizer.Encode(text);

    protected int[] StartTokensThen(string text)
    {
        var body = Tokenizer.Encode(text);
        var start = Tokenizer.StartTokens;
        var ids = new int[start.Count + body.Length];
        for (int i = 0; i < start.Count; i++) ids[i] = start[i];
        body.CopyTo(ids, start.Count);
        return ids;
    }

    /// <summary>The framing for a chat format; null, <see cref="ChatFormatKind.Plain"/> give base-model framing.</summary>
    public static SynthesisFraming Create(ChatFormatKind? kind, ITokenizer tokenizer) => kind switch
    {
        null or ChatFormatKind.Plain => new BaseSynthesisFraming(tokenizer),
        ChatFormatKind.Llama2 => throw new InvalidRequestException(
            "the llama2 chat format folds the system message into the first user turn, so the chunk cannot be kept out of the student's " +
            "sequence; use a model with a separate system turn (chatml, llama3) or base-model framing."),
        _ => new ChatSynthesisFraming(kind.Value, tokenizer),
    };
}

/// <summary>
/// Chat models. Both agents share one system message holding the chunk (so one prefill serves both).
/// Agent A works with roles flipped: the seed prompt is its user message, it writes as the assistant,
/// and B's earlier answers come back to it as user messages. The student sees the chat without any
/// system message: user turn, B's answer ids (with B's end-of-turn token when it stopped on one), ...
/// </summary>
sealed class ChatSynthesisFraming : SynthesisFraming
{
    const string Placeholder = "\uE000\uE001\uE000"; // private-use text that no template trims or escapes
    readonly ChatFormatKind kind;
    readonly int[] stops;

    public ChatSynthesisFraming(ChatFormatKind kind, ITokenizer tokenizer) : base(tokenizer)
    {
        this.kind = kind;
        stops = ChatFormat.StopTokens(kind, tokenizer);
        if (stops.Length == 0)
            throw new InvalidRequestException($"the tokenizer has no end-of-turn token for the {kind} chat format; pick the matching format or base-model framing.");
        // The chunk must sit in a prefix of its own, ahead of every message.
        string prefix = SystemPrefixText("x");
        string full = ChatFormat.Render(kind, [new ChatMessage("system", SystemText("x")), new ChatMessage("user", "y")], addGenerationPrompt: true);
        if (prefix.Length == 0 || !full.StartsWith(prefix, StringComparison.Ordinal))
            throw new InvalidRequestException($"the {kind} chat template does not render the system message as a prefix of the conversation; it cannot be used for self-study.");
    }

    public override string Name => kind.ToString().ToLowerInvariant();

    /// <summary>The system message both agents get.</summary>
    public static string SystemText(string chunk) =>
        "You are reading the following passage from a document.\n\n<passage>\n" + chunk.Trim() + "\n</passage>\n\n" +
        "Base your replies on this passage.";

    string SystemPrefixText(string chunk) =>
        ChatFormat.Render(kind, [new ChatMessage("system", SystemText(chunk))], addGenerationPrompt: false);

    public override int[] UserPrefix(string chunk) => Encode(SystemPrefixText(chunk));
    public override int[] TeacherPrefix(string chunk) => UserPrefix(chunk);

    public override int[] UserSuffix(string chunk, SeedPrompt seed, IReadOnlyList<(string User, string Answer)> turns)
    {
        // Only the part after the system message matters, so the chunk is replaced by a stand-in here.
        var messages = new List<ChatMessage>
        {
            new("system", SystemText("x")),
            new("user", seed.Text + " Reply with only the message itself, exactly as the user would send it."),
        };
        foreach (var (user, answer) in turns)
        {
            messages.Add(new ChatMessage("assistant", user));
            messages.Add(new ChatMessage("user", answer));
        }
        string prefix = SystemPrefixText("x");
        return Encode(ChatFormat.Render(kind, messages, addGenerationPrompt: true)[prefix.Length..]);
    }

    public override int[] StudentUserTurn(string userMessage, int[]? previousAnswer)
    {
        if (previousAnswer is null)
        {
            string prefix = SystemPrefixText("x");
            string full = ChatFormat.Render(kind, [new ChatMessage("system", SystemText("x")), new ChatMessage("user", userMessage)], addGenerationPrompt: true);
            return Encode(full[prefix.Length..]);
        }
        // The template text from the end of the previous answer's content to the start of the next answer.
        string text = ChatFormat.Render(kind,
            [new ChatMessage("system", SystemText("x")), new ChatMessage("user", "x"), new ChatMessage("assistant", Placeholder), new ChatMessage("user", userMessage)],
            addGenerationPrompt: true);
        int at = text.IndexOf(Placeholder, StringComparison.Ordinal);
        var ids = Encode(text[(at + Placeholder.Length)..]);
        // An answer that ended on its end-of-turn token already holds the token that closes the turn.
        if (previousAnswer.Length > 0 && ids.Length > 0 && ids[0] == previousAnswer[^1] && Array.IndexOf(stops, ids[0]) >= 0) return ids[1..];
        return ids;
    }

    public override IReadOnlyList<int> UserStopTokens => stops;
    public override IReadOnlyList<int> AnswerStopTokens => stops;
    public override IReadOnlyList<string> UserStopTexts => [];
    public override IReadOnlyList<string> AnswerStopTexts => [];

    public override int Overhead(bool teacher) => Encode(ChatFormat.Render(kind,
        [new ChatMessage("system", SystemText("")), new ChatMessage("user", ""), new ChatMessage("assistant", ""), new ChatMessage("user", "")],
        addGenerationPrompt: true)).Length;
}

/// <summary>
/// Base models: plain-text framing from <see cref="BaseModelFraming"/>. Agent A and agent B see the
/// chunk under different headings, so a chunk gets two prefills (each still shared by all its
/// conversations). Generation stops at EOS or BOS (llama2.c models emit BOS between documents) and at
/// the framing's stop strings.
/// </summary>
sealed class BaseSynthesisFraming : SynthesisFraming
{
    const string PassageEnd = "</passage>\n\n";
    readonly int[] stops;

    /// <summary>What agent A is asked in rounds after the first.</summary>
    public const string FollowUpInstruction =
        "Write the user's next message in this conversation: a follow-up to the assistant's last answer, still about the passage. " +
        "Write only the message itself, with no preamble.";

    public BaseSynthesisFraming(ITokenizer tokenizer) : base(tokenizer)
    {
        var s = new List<int>();
        if (tokenizer.EosId is int eos) s.Add(eos);
        if (tokenizer.BosId is int bos && !s.Contains(bos)) s.Add(bos);
        stops = [.. s];
    }

    public override string Name => "base";

    static string UserPrefixText(string chunk)
    {
        string text = BaseModelFraming.AgentAPrompt(chunk, "x");
        return text[..(text.LastIndexOf(PassageEnd, StringComparison.Ordinal) + PassageEnd.Length)];
    }

    public override int[] UserPrefix(string chunk) => StartTokensThen(UserPrefixText(chunk));
    public override int[] TeacherPrefix(string chunk) => StartTokensThen(BaseModelFraming.TeacherContext(chunk));

    public override int[] UserSuffix(string chunk, SeedPrompt seed, IReadOnlyList<(string User, string Answer)> turns)
    {
        if (turns.Count == 0)
        {
            string full = BaseModelFraming.AgentAPrompt(chunk, seed.Text);
            return Encode(full[UserPrefixText(chunk).Length..]);
        }
        var sb = new System.Text.StringBuilder("Conversation so far:\n");
        foreach (var (user, answer) in turns)
            sb.Append(BaseModelFraming.ConversationPrompt(user)).Append(' ').Append(answer.Trim()).Append('\n');
        sb.Append("\nInstruction: ").Append(FollowUpInstruction).Append("\n\n<message>\n");
        return Encode(sb.ToString());
    }

    public override int[] StudentUserTurn(string userMessage, int[]? previousAnswer) =>
        Encode((previousAnswer is null ? "" : "\n") + BaseModelFraming.ConversationPrompt(userMessage));

    public override IReadOnlyList<int> UserStopTokens => stops;
    public override IReadOnlyList<int> AnswerStopTokens => stops;
    public override IReadOnlyList<string> UserStopTexts { get; } = [BaseModelFraming.AgentAStop, "<message>", "</passage>"];
    public override IReadOnlyList<string> AnswerStopTexts => BaseModelFraming.AnswerStops;

    public override int Overhead(bool teacher) => teacher
        ? StartTokensThen(BaseModelFraming.TeacherContext("")).Length + Encode("\n" + BaseModelFraming.ConversationPrompt("")).Length
        : StartTokensThen(BaseModelFraming.AgentAPrompt("", "")).Length;
}
