using Cas.Engine.Tokenizers;

namespace Cas.SelfStudy.Tests.Synthesis;

/// <summary>Chat-model self-study (ChatML) with a byte-level tokenizer and a tiny random-weight model.</summary>
public class ChatFramingTests
{
    static readonly ByteChatTokenizer Tok = new();
    static readonly ChatSynthesisFraming Framing = new(ChatFormatKind.ChatML, Tok);

    static SelfStudyOptions Options => new()
    {
        Conversations = 8, Seed = 3, MinChunkTokens = 60, MaxChunkTokens = 200, ConversationsPerChunk = 4, Concurrency = 8, Rounds = 2,
        UserAgent = AgentOptions.UserDefaults with { MaxTokens = 24 },
        AnswerAgent = AgentOptions.AnswerDefaults with { MaxTokens = 40 },
    };

    static SelfStudySynthesizer Synth(SelfStudyOptions o) => new(Kit.TinyChatModel, Tok, ChatFormatKind.ChatML, Kit.StoryDocuments(), o);

    [Fact]
    public void BothAgentsShareOneSystemPrefixHoldingTheChunk()
    {
        string chunk = "Tom found a red kite.";
        Assert.Equal(Framing.UserPrefix(chunk), Framing.TeacherPrefix(chunk));
        Assert.Equal("<|im_start|>system\n" + ChatSynthesisFraming.SystemText(chunk) + "<|im_end|>\n", Tok.Decode(Framing.TeacherPrefix(chunk)));
        Assert.Contains("<passage>\n" + chunk + "\n</passage>", ChatSynthesisFraming.SystemText(chunk));
    }

    [Fact]
    public void AgentAWorksWithRolesFlipped()
    {
        var seed = new SeedPrompt(SeedPromptKind.Question, "Ask a hard question.");
        string first = Tok.Decode(Framing.UserSuffix("chunk", seed, []));
        Assert.Equal("<|im_start|>user\nAsk a hard question. Reply with only the message itself, exactly as the user would send it.<|im_end|>\n" +
            "<|im_start|>assistant\n", first);
        // Round 2: A's own earlier message is the assistant turn, B's answer comes back as the user turn.
        string second = Tok.Decode(Framing.UserSuffix("chunk", seed, [("Who found the kite?", "Tom did.")]));
        Assert.StartsWith(first[..^"<|im_start|>assistant\n".Length], second);
        Assert.EndsWith("<|im_start|>assistant\nWho found the kite?<|im_end|>\n<|im_start|>user\nTom did.<|im_end|>\n<|im_start|>assistant\n", second);
    }

    [Fact]
    public void StudentTurnsCarryOnlyTheConversationFraming()
    {
        Assert.Equal("<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n", Tok.Decode(Framing.StudentUserTurn("Why?", null)));
        // After an answer that ended on its end-of-turn token, that token already closes the turn...
        int[] stopped = [.. Tok.Encode("Because."), ByteChatTokenizer.ImEnd];
        Assert.Equal("\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n", Tok.Decode(Framing.StudentUserTurn("And then?", stopped)));
        // ...after one cut by the token limit, the next turn closes it.
        int[] cut = Tok.Encode("Because");
        Assert.Equal("<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n", Tok.Decode(Framing.StudentUserTurn("And then?", cut)));
    }

    [Fact]
    public void GeneratedChatsMatchTheTeacherOnTheStudentSequence()
    {
        var records = Kit.RunToList(Synth(Options));
        Assert.Equal(8, records.Count);
        foreach (var c in records)
        {
            var student = Kit.StudentSequence(c);
            string text = Tok.Decode(student);
            Assert.StartsWith("<|im_start|>user\n" + c.Messages[0].Text + "<|im_end|>\n<|im_start|>assistant\n", text);
            Assert.DoesNotContain("<|im_start|>system", text);
            Assert.DoesNotContain(c.ChunkText.Trim(), text);
            Assert.Equal(4, c.Messages.Count);
            Kit.CheckAgainstTeacher(Kit.TinyChatModel, Framing.TeacherPrefix(c.ChunkText), c);
        }
    }

    [Fact]
    public void SharingAndConcurrencyDoNotChangeChats()
    {
        var reference = Kit.RunToList(Synth(Options));
        Kit.SameRecords(reference, Kit.RunToList(Synth(Options with { SharePrefix = false })), 1e-4);
        Kit.SameRecords(reference, Kit.RunToList(Synth(Options with { Concurrency = 1 })), 1e-4);
    }
}

/// <summary>ChatML framing with SmolLM2's real tokenizer (special tokens split out, byte-level BPE) on a random model of its vocabulary.</summary>
public class RealTokenizerChatTests
{
    [Fact]
    public void SmolLM2TokenizerChatsMatchTheTeacher()
    {
        var path = Cas.Tests.Common.TestPaths.RequireShared("models/smollm2-135m-instruct-tokenizer/tokenizer.json");
        var tok = TokenizerLoader.Load(path);
        var model = Cas.Engine.Models.RandomWeights.Create(new Cas.Engine.Models.ModelConfig
        {
            Architecture = Cas.Engine.Models.Architecture.Llama, Dim = 32, HiddenDim = 64, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 8,
            VocabSize = tok.VocabSize, MaxSeqLen = 2048, TiedEmbeddings = false,
        }, seed: 3);
        var o = new SelfStudyOptions
        {
            Conversations = 4, Seed = 2, MinChunkTokens = 40, MaxChunkTokens = 80, ConversationsPerChunk = 2, Concurrency = 4, Rounds = 2,
            UserAgent = AgentOptions.UserDefaults with { MaxTokens = 16 },
            AnswerAgent = AgentOptions.AnswerDefaults with { MaxTokens = 16 },
        };
        var records = Kit.RunToList(new SelfStudySynthesizer(model, tok, ChatFormatKind.ChatML, Kit.StoryDocuments(), o));
        var framing = new ChatSynthesisFraming(ChatFormatKind.ChatML, tok);
        int imStart = tok.SpecialTokenId("<|im_start|>")!.Value, imEnd = tok.SpecialTokenId("<|im_end|>")!.Value;
        Assert.Equal(4, records.Count);
        foreach (var c in records)
        {
            var first = c.Messages[0].Tokens;
            Assert.Equal(imStart, first[0]);
            Assert.Equal(tok.Encode("user\n"), first[1..3]);
            var tail = tok.Encode("<|im_end|>\n<|im_start|>assistant\n");
            Assert.Equal(tail, first[^tail.Length..]);
            Assert.DoesNotContain(imStart, framing.TeacherPrefix(c.ChunkText)[1..]); // one system turn, nothing else
            Assert.Equal(imEnd, framing.TeacherPrefix(c.ChunkText)[^2]);
            Kit.CheckAgainstTeacher(model, framing.TeacherPrefix(c.ChunkText), c);
        }
    }
}
