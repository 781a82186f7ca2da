using System.Runtime.InteropServices;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;

namespace Cas.Engine;

/// <summary>
/// A completion to make: the prompt text and how to read it (plain text or a chat turn), the cartridge prefix it
/// follows (if any), and how to sample.
/// </summary>
public sealed record CompletionRequest(string Prompt)
{
    /// <summary>Treat <see cref="Prompt"/> as a user message and format it with a chat template.</summary>
    public bool Chat { get; init; }
    /// <summary>With <see cref="Chat"/>: the template; null resolves it from the tokenizer (<see cref="ChatFormat.Resolve"/>).</summary>
    public ChatFormatKind? ChatFormat { get; init; }
    /// <summary>With <see cref="Chat"/>: an optional system message.</summary>
    public string? System { get; init; }
    /// <summary>With <see cref="Chat"/>: the earlier turns of a multi-turn conversation ("user"/"assistant", in order),
    /// rendered after <see cref="System"/> and before <see cref="Prompt"/> (the last user message).</summary>
    public IReadOnlyList<ChatMessage> History { get; init; } = [];
    /// <summary>The tokenizer's file or folder, for chat-template detection (tokenizer_config.json beside it).</summary>
    public string? TokenizerPath { get; init; }
    /// <summary>Cartridge KV in front of the prompt (its frozen slot 0 is the BOS KV).</summary>
    public KvPrefix? Prefix { get; init; }
    public int MaxTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
}

/// <summary>The prompt's token ids and the tokens that end the completion.</summary>
public sealed record PromptTokens(int[] Ids, IReadOnlyList<int> StopTokens);

/// <summary>
/// Prompt building for generation: where start tokens go, how a prompt after a cartridge is encoded, chat formatting.
/// The one place these rules live (the CLI, the service and jobs all call it).
/// </summary>
public static class Prompting
{
    /// <summary>
    /// The prompt's ids and stop tokens.
    /// <list type="bullet">
    /// <item>Chat: the user message (after the system message and the earlier turns) rendered with the template, stopping at its end-of-turn
    /// tokens; after a cartridge a template's leading BOS is dropped (the cartridge's slot 0 already is the BOS KV).</item>
    /// <item>Plain text after a cartridge: the cartridge stands in for "BOS + document", so the prompt continues the
    /// document and is encoded as continuation text (no start tokens, no dummy-prefix space); it must not be empty.</item>
    /// <item>Plain text: the tokenizer's start tokens + the text (BOS, or EOS, alone for an empty prompt).</item>
    /// </list>
    /// </summary>
    public static PromptTokens Build(ITokenizer tokenizer, CompletionRequest request)
    {
        ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(request);
        string text = request.Prompt ?? "";
        bool afterCartridge = request.Prefix != null;
        if (request.Chat)
        {
            var kind = ChatFormat.Resolve(request.ChatFormat, tokenizer, request.TokenizerPath);
            var messages = new List<ChatMessage>();
            if (request.System is { Length: > 0 } sys) messages.Add(new ChatMessage("system", sys));
            messages.AddRange(request.History);
            messages.Add(new ChatMessage("user", text));
            var ids = Encode(tokenizer, ChatFormat.Render(kind, messages, addGenerationPrompt: true), addStart: false);
            if (afterCartridge && ids.Length > 1 && tokenizer.BosId is int bos && ids[0] == bos) ids = ids[1..];
            return new PromptTokens(ids, ChatFormat.StopTokens(kind, tokenizer));
        }
        if (request.History.Count > 0)
            throw new InvalidRequestException("a conversation's earlier turns are rendered with a chat template: set Chat (cas generate --chat) to send history.");
        IReadOnlyList<int> stops = tokenizer.EosId is int eos ? [eos] : [];
        if (afterCartridge)
        {
            var ids = EncodeContinuation(tokenizer, text);
            if (ids.Length == 0)
                throw new InvalidRequestException("after a cartridge the prompt must not be empty: the cartridge holds KV, not a next-token distribution. Start with some text, e.g. a newline or a question.");
            return new PromptTokens(ids, stops);
        }
        return new PromptTokens(Encode(tokenizer, text, addStart: true), stops);
    }

    /// <summary>
    /// Encodes text; with addStart, prepends the tokens the tokenizer puts before a sequence (BOS for llama2.c and
    /// Llama), and for an empty text with none, the BOS/EOS id so generation has a start.
    /// </summary>
    public static int[] Encode(ITokenizer tokenizer, string text, bool addStart)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var body = tokenizer.Encode(text);
        if (!addStart) return body;
        var start = tokenizer.StartTokens;
        if (start.Count == 0 && body.Length == 0)
            start = tokenizer.BosId is int b ? [b] : tokenizer.EosId is int e ? [e] : throw new InvalidRequestException("empty prompt and the tokenizer has no BOS or EOS token to start from.");
        var ids = new int[start.Count + body.Length];
        for (int i = 0; i < start.Count; i++) ids[i] = start[i];
        body.CopyTo(ids, start.Count);
        return ids;
    }

    /// <summary>
    /// Encodes text that follows other text: drops a leading token some tokenizers add for a dummy-prefix space
    /// (llama2.c/SentencePiece) when the rest alone decodes to the text.
    /// </summary>
    public static int[] EncodeContinuation(ITokenizer tokenizer, string text)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (string.IsNullOrEmpty(text)) return [];
        var ids = tokenizer.Encode(text);
        if (ids.Length > 1 && tokenizer.Decode(ids.AsSpan(1)) == text) return ids[1..];
        return ids;
    }
}

/// <summary>
/// Turns tokens into text as they arrive, holding back an incomplete UTF-8 character at the end. Decodes prompt +
/// completion and emits what follows the prompt's text, so a leading space that a SentencePiece-style decoder drops
/// at the start of a sequence is kept.
/// </summary>
public sealed class CompletionStream
{
    readonly ITokenizer _tok;
    readonly Action<string> _emit;
    readonly List<int> _ids;
    int _printed;

    public CompletionStream(ITokenizer tokenizer, int[] prompt, Action<string> emit)
    {
        _tok = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _emit = emit ?? throw new ArgumentNullException(nameof(emit));
        _ids = new List<int>(prompt);
        _printed = _tok.Decode(prompt).Length;
    }

    public void Add(int token)
    {
        _ids.Add(token);
        var text = _tok.Decode(CollectionsMarshal.AsSpan(_ids));
        int end = text.Length;
        if (end > 0 && text[end - 1] == '\uFFFD') return; // wait for the rest of a multi-byte character
        if (end > _printed) { _emit(text[_printed..end]); _printed = end; }
    }

    /// <summary>Emits whatever is still held back (an incomplete character at the very end).</summary>
    public void Finish()
    {
        var text = _tok.Decode(CollectionsMarshal.AsSpan(_ids));
        if (text.Length > _printed) { _emit(text[_printed..]); _printed = text.Length; }
    }
}

/// <summary>One completion, streamed as text: prompt building, generation and decoding together.</summary>
public static class Completion
{
    /// <summary>
    /// Builds the prompt (<see cref="Prompting.Build"/>), generates and passes the text to <paramref name="onText"/> as it
    /// is produced; returns the generation's result.
    /// </summary>
    public static GenerationResult Run(Model model, ITokenizer tokenizer, CompletionRequest request, Action<string> onText, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(onText);
        var prompt = Prompting.Build(tokenizer, request);
        var generation = new GenerationRequest(prompt.Ids, request.Prefix)
        {
            MaxTokens = request.MaxTokens, StopTokens = prompt.StopTokens, Sampling = request.Sampling,
        };
        var stream = new CompletionStream(tokenizer, prompt.Ids, onText);
        var result = new Generator(new Transformer(model)).Generate([generation], (_, token, _) => stream.Add(token), cancel)[0];
        stream.Finish();
        return result;
    }
}
