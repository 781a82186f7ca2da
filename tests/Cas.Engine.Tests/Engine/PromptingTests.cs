using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Engine;

/// <summary>Prompt building for generation (Completion.cs) and the one chat-format parser.</summary>
public class PromptingTests
{
    static ITokenizer Stories() => TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin"));

    [Fact]
    public void Chat_format_names_parse_one_way_everywhere()
    {
        Assert.Null(ChatFormat.Parse(null));
        Assert.Null(ChatFormat.Parse(" Auto "));
        Assert.Equal(ChatFormatKind.ChatML, ChatFormat.Parse("chatml"));
        Assert.Equal(ChatFormatKind.Llama3, ChatFormat.Parse("LLAMA3"));
        Assert.Equal(ChatFormatKind.Llama2, ChatFormat.Parse("llama2"));
        Assert.Equal(ChatFormatKind.Plain, ChatFormat.Parse("plain"));
        Assert.Equal(ChatFormatKind.Plain, ChatFormat.Parse("base"));
        Assert.Contains(ChatFormat.Names, Assert.Throws<InvalidRequestException>(() => ChatFormat.Parse("vicuna")).Message);
    }

    [Fact]
    public void Auto_resolves_from_the_template_then_the_special_tokens_then_plain()
    {
        var stories = Stories();
        Assert.Equal(ChatFormatKind.Plain, ChatFormat.Resolve(null, stories, null));
        Assert.Equal(ChatFormatKind.Llama3, ChatFormat.Resolve(ChatFormatKind.Llama3, stories, null)); // a given format wins
        // SmolLM2's folder here has no tokenizer_config.json: its <|im_start|>/<|im_end|> tokens decide.
        string smol = TestPaths.RequireShared("models/smollm2-135m-instruct-tokenizer");
        Assert.Equal(ChatFormatKind.ChatML, ChatFormat.Resolve(null, TokenizerLoader.Load(smol), smol));
    }

    [Fact]
    public void Prompts_start_with_BOS_except_after_a_cartridge()
    {
        var tok = Stories();
        int bos = tok.BosId!.Value;
        var plain = Prompting.Build(tok, new CompletionRequest("Once upon a time"));
        Assert.Equal([bos, .. tok.Encode("Once upon a time")], plain.Ids);
        Assert.Equal([tok.EosId!.Value], plain.StopTokens);
        Assert.Equal([bos], Prompting.Build(tok, new CompletionRequest("")).Ids);

        // After a cartridge (which stands in for BOS + document) the prompt continues the text: no BOS and no
        // dummy-prefix token: the ids decode to exactly the text.
        var prefix = Prefix();
        var after = Prompting.Build(tok, new CompletionRequest("\nThe end.") { Prefix = prefix });
        Assert.DoesNotContain(bos, after.Ids);
        Assert.Equal("\nThe end.", tok.Decode(after.Ids));
        Assert.Throws<InvalidRequestException>(() => Prompting.Build(tok, new CompletionRequest("") { Prefix = prefix }));

        // Chat on a base model: plain User/Assistant text, stopping at EOS.
        var chat = Prompting.Build(tok, new CompletionRequest("Who is Lily?") { Chat = true });
        Assert.Equal(ChatFormat.Render(ChatFormatKind.Plain, [new ChatMessage("user", "Who is Lily?")], addGenerationPrompt: true), tok.Decode(chat.Ids));
    }

    [Fact]
    public void A_chat_template_BOS_is_dropped_after_a_cartridge()
    {
        var tok = new BosTokenizer();
        var request = new CompletionRequest("hi") { Chat = true, ChatFormat = ChatFormatKind.Llama2 };
        var alone = Prompting.Build(tok, request);
        var after = Prompting.Build(tok, request with { Prefix = Prefix() });
        Assert.Equal(BosTokenizer.Bos, alone.Ids[0]);
        Assert.Equal(alone.Ids[1..], after.Ids);
    }

    [Fact]
    public void The_stream_emits_text_as_it_completes_and_holds_back_a_split_character()
    {
        var tok = new BosTokenizer();
        var pieces = new List<string>();
        var stream = new CompletionStream(tok, tok.Encode("a"), pieces.Add);
        foreach (var id in tok.Encode("bé")) stream.Add(id); // é is two UTF-8 bytes: nothing until the second
        stream.Finish();
        Assert.Equal(["b", "é"], pieces);
    }

    /// <summary>A one-slot cartridge prefix (its values do not matter to prompt building).</summary>
    static KvPrefix Prefix() => new(1, 1, 2, 1, [new float[2]], [new float[2]]);

    /// <summary>UTF-8 bytes as ids 0..255, "&lt;s&gt;" = 256 (BOS), "&lt;/s&gt;" = 257 (EOS), recognised in text.</summary>
    sealed class BosTokenizer : ITokenizer
    {
        public const int Bos = 256, Eos = 257;
        public int VocabSize => 258;
        public int? BosId => Bos;
        public int? EosId => Eos;
        public IReadOnlyList<int> StartTokens => [Bos];
        public int[] Encode(string text)
        {
            var ids = new List<int>();
            var parts = text.Split("<s>");
            for (int i = 0; i < parts.Length; i++)
            {
                if (i > 0) ids.Add(Bos);
                foreach (var b in System.Text.Encoding.UTF8.GetBytes(parts[i].Replace("</s>", ""))) ids.Add(b);
            }
            return [.. ids];
        }
        public string Decode(ReadOnlySpan<int> ids)
        {
            var bytes = new List<byte>();
            foreach (var id in ids) if (id < 256) bytes.Add((byte)id);
            return System.Text.Encoding.UTF8.GetString([.. bytes]);
        }
        public int? SpecialTokenId(string text) => text switch { "<s>" => Bos, "</s>" => Eos, _ => null };
    }
}
