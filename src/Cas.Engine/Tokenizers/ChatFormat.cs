using System.Text;
using System.Text.Json;

namespace Cas.Engine.Tokenizers;

/// <summary>One chat turn: role is "system", "user" or "assistant".</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>The prompt layouts the engine can render.</summary>
public enum ChatFormatKind
{
    /// <summary>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n (SmolLM2, Qwen).</summary>
    ChatML,
    /// <summary>&lt;|begin_of_text|&gt;&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\ncontent&lt;|eot_id|&gt; (Llama 3).</summary>
    Llama3,
    /// <summary>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;\n...\n&lt;&lt;/SYS&gt;&gt;\n\nuser [/INST] answer &lt;/s&gt; (Llama 2 chat).</summary>
    Llama2,
    /// <summary>Base-model framing: "System text\n\nUser: ...\nAssistant: ...\n".</summary>
    Plain,
}

/// <summary>Renders chat messages as the official chat templates do, and recognises a model's template.</summary>
public static class ChatFormat
{
    /// <summary>The system prompt SmolLM2-Instruct's template inserts when the conversation has none.</summary>
    public const string SmolLM2DefaultSystemPrompt = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

    /// <summary>Renders the conversation; with addGenerationPrompt the text ends where the assistant's answer begins.</summary>
    public static string Render(ChatFormatKind kind, IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt) =>
        Render(kind, messages, addGenerationPrompt, null);

    /// <summary>
    /// As <see cref="Render(ChatFormatKind, IReadOnlyList{ChatMessage}, bool)"/>; for ChatML a non-null
    /// <paramref name="defaultSystemPrompt"/> is inserted as the first message when the conversation has no
    /// system message (SmolLM2's template does this with <see cref="SmolLM2DefaultSystemPrompt"/>).
    /// </summary>
    public static string Render(ChatFormatKind kind, IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string? defaultSystemPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        foreach (var m in messages)
        {
            if (m is null || m.Role is null || m.Content is null)
                throw new InvalidRequestException("every chat message needs a role and a content (null found).");
        }
        return kind switch
        {
            ChatFormatKind.ChatML => RenderChatML(messages, addGenerationPrompt, defaultSystemPrompt),
            ChatFormatKind.Llama3 => RenderLlama3(messages, addGenerationPrompt),
            ChatFormatKind.Llama2 => RenderLlama2(messages),
            ChatFormatKind.Plain => RenderPlain(messages, addGenerationPrompt),
            _ => throw new InvalidRequestException($"unknown chat format {kind}."),
        };
    }

    static string RenderChatML(IReadOnlyList<ChatMessage> messages, bool gen, string? defaultSystem)
    {
        var sb = new StringBuilder();
        if (defaultSystem != null && (messages.Count == 0 || messages[0].Role != "system"))
            sb.Append("<|im_start|>system\n").Append(defaultSystem).Append("<|im_end|>\n");
        foreach (var m in messages)
            sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        if (gen) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }

    // Meta-Llama-3-Instruct: bos, then header, "\n\n", content | trim, <|eot_id|> per message.
    static string RenderLlama3(IReadOnlyList<ChatMessage> messages, bool gen)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < messages.Count; i++)
        {
            if (i == 0) sb.Append("<|begin_of_text|>");
            sb.Append("<|start_header_id|>").Append(messages[i].Role).Append("<|end_header_id|>\n\n")
              .Append(JsText.Trim(messages[i].Content)).Append("<|eot_id|>");
        }
        if (gen) sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
        return sb.ToString();
    }

    // Llama-2-chat: optional system folded into the first user turn; roles must alternate user/assistant.
    // The official template has no generation prompt: the text ends with " [/INST]" after a user turn.
    static string RenderLlama2(IReadOnlyList<ChatMessage> messages)
    {
        int first = 0;
        string? system = null;
        if (messages.Count > 0 && messages[0].Role == "system") { system = messages[0].Content; first = 1; }
        var sb = new StringBuilder();
        for (int i = first; i < messages.Count; i++)
        {
            var m = messages[i];
            bool shouldBeUser = (i - first) % 2 == 0;
            if ((m.Role == "user") != shouldBeUser)
                throw new InvalidRequestException("Llama 2 chat needs roles alternating user/assistant/user/... (after an optional system message).");
            string content = i == first && system != null ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + m.Content : m.Content;
            if (m.Role == "user") sb.Append("<s>[INST] ").Append(JsText.Trim(content)).Append(" [/INST]");
            else if (m.Role == "assistant") sb.Append(' ').Append(JsText.Trim(content)).Append(" </s>");
        }
        return sb.ToString();
    }

    static string RenderPlain(IReadOnlyList<ChatMessage> messages, bool gen)
    {
        var sb = new StringBuilder();
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case "system": sb.Append(m.Content).Append("\n\n"); break;
                case "user": sb.Append("User: ").Append(m.Content).Append('\n'); break;
                case "assistant": sb.Append("Assistant: ").Append(m.Content).Append('\n'); break;
                default: sb.Append(char.ToUpperInvariant(m.Role.Length > 0 ? m.Role[0] : ' ')).Append(m.Role.Length > 1 ? m.Role[1..] : "")
                    .Append(": ").Append(m.Content).Append('\n'); break;
            }
        }
        if (gen) sb.Append("Assistant:");
        return sb.ToString();
    }

    /// <summary>
    /// Reads chat_template from tokenizer_config.json (beside tokenizer.json; the argument may be the folder,
    /// the tokenizer.json path or the tokenizer_config.json path) and recognises it by its markers.
    /// Null when there is no config, no template, or an unknown one.
    /// </summary>
    public static ChatFormatKind? Detect(string folderOrTokenizerJsonPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(folderOrTokenizerJsonPath);
        string configPath = Directory.Exists(folderOrTokenizerJsonPath)
            ? Path.Combine(folderOrTokenizerJsonPath, "tokenizer_config.json")
            : Path.GetFileName(folderOrTokenizerJsonPath) == "tokenizer_config.json"
                ? folderOrTokenizerJsonPath
                : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(folderOrTokenizerJsonPath))!, "tokenizer_config.json");
        if (!File.Exists(configPath)) return null;
        string? template;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(configPath));
            template = TemplateText(doc.RootElement);
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{configPath} is not valid JSON: {e.Message}", e);
        }
        return template == null ? null : DetectTemplate(template);
    }

    /// <summary>Recognises a chat template's text by distinctive markers.</summary>
    public static ChatFormatKind? DetectTemplate(string template)
    {
        if (template.Contains("<|im_start|>", StringComparison.Ordinal)) return ChatFormatKind.ChatML;
        if (template.Contains("<|start_header_id|>", StringComparison.Ordinal)) return ChatFormatKind.Llama3;
        if (template.Contains("[INST]", StringComparison.Ordinal) && template.Contains("<<SYS>>", StringComparison.Ordinal)) return ChatFormatKind.Llama2;
        return null;
    }

    static string? TemplateText(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("chat_template", out var ct)) return null;
        if (ct.ValueKind == JsonValueKind.String) return ct.GetString();
        if (ct.ValueKind != JsonValueKind.Array) return null;
        string? firstTemplate = null;
        foreach (var item in ct.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Object) continue;
            var text = HfJson.Str(item, "template");
            if (text == null) continue;
            if (HfJson.Str(item, "name") == "default") return text;
            firstTemplate ??= text;
        }
        return firstTemplate;
    }

    /// <summary>The names <see cref="Parse"/> accepts, for messages and help.</summary>
    public const string Names = "auto | chatml | llama3 | llama2 | plain";

    /// <summary>
    /// The one parser of chat-format names for every command: "auto" (or empty) gives null, meaning
    /// <see cref="Resolve"/> decides; "chatml", "llama3", "llama2", "plain" (also "base": a base model's plain text).
    /// </summary>
    public static ChatFormatKind? Parse(string? name) => (name ?? "").Trim().ToLowerInvariant() switch
    {
        "" or "auto" => null,
        "chatml" => ChatFormatKind.ChatML,
        "llama3" => ChatFormatKind.Llama3,
        "llama2" => ChatFormatKind.Llama2,
        "plain" or "base" => ChatFormatKind.Plain,
        _ => throw new InvalidRequestException($"unknown chat format '{name}'; use {Names}."),
    };

    /// <summary>
    /// The format to use: <paramref name="requested"/> when given; otherwise the template named by tokenizer_config.json
    /// beside <paramref name="tokenizerPath"/>, else the one whose special tokens the tokenizer has (ChatML, Llama 3),
    /// else <see cref="ChatFormatKind.Plain"/> (a base model).
    /// </summary>
    public static ChatFormatKind Resolve(ChatFormatKind? requested, ITokenizer tokenizer, string? tokenizerPath)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (requested is { } k) return k;
        if (!string.IsNullOrEmpty(tokenizerPath) && Detect(tokenizerPath) is { } detected) return detected;
        if (tokenizer.SpecialTokenId("<|im_start|>") != null && tokenizer.SpecialTokenId("<|im_end|>") != null) return ChatFormatKind.ChatML;
        if (tokenizer.SpecialTokenId("<|start_header_id|>") != null && tokenizer.SpecialTokenId("<|eot_id|>") != null) return ChatFormatKind.Llama3;
        return ChatFormatKind.Plain;
    }

    /// <summary>Token ids that end an assistant turn for this format (only those the tokenizer has), EOS included.</summary>
    public static int[] StopTokens(ChatFormatKind kind, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var ids = new List<int>();
        void Add(int? id) { if (id is { } v && !ids.Contains(v)) ids.Add(v); }
        switch (kind)
        {
            case ChatFormatKind.ChatML:
                Add(tokenizer.SpecialTokenId("<|im_end|>"));
                Add(tokenizer.EosId);
                Add(tokenizer.SpecialTokenId("<|endoftext|>"));
                break;
            case ChatFormatKind.Llama3:
                Add(tokenizer.SpecialTokenId("<|eot_id|>"));
                Add(tokenizer.SpecialTokenId("<|eom_id|>"));
                Add(tokenizer.SpecialTokenId("<|end_of_text|>"));
                Add(tokenizer.EosId);
                break;
            case ChatFormatKind.Llama2:
                Add(tokenizer.SpecialTokenId("</s>"));
                Add(tokenizer.EosId);
                break;
            default:
                Add(tokenizer.EosId);
                break;
        }
        return ids.ToArray();
    }
}
