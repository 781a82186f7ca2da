using Cas.Client;
using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Service;
using Cas.Service.Tests;
using Cas.Service.V1;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using EngineChatMessage = Cas.Engine.Tokenizers.ChatMessage;

namespace Cas.Chat.Tests;

/// <summary>
/// <see cref="CasChatClient"/> in process and over gRPC against the same server: its answers are the engine's (greedy),
/// streamed and whole agree, history reaches the prompt, Semantic Kernel runs a prompt through it, refusals are typed.
/// </summary>
[Collection(ChatCollection.Name)]
public sealed class ChatClientTests(ChatFixture fx)
{
    const string Cat = "Where did the cat find the frog?", Ship = "What did Ben see on the sea?";
    const int MaxTokens = 16;
    static readonly ChatOptions Options = new() { MaxOutputTokens = MaxTokens };

    CasChatClient InProcess(AskMode mode = AskMode.Cartridges) =>
        CasChatClient.InProcess(fx.Engine, ServerFixture.Collection, new CasChatOptions { Mode = mode });

    CasChatClient Remote(CasClient client, AskMode mode = AskMode.Cartridges) =>
        CasChatClient.Remote(client, ServerFixture.Collection, new CasChatOptions { Mode = mode });

    CasClient Client() => new(fx.Inner.Channel!);

    static AskRequest Chat(string question, params (string Role, string Content)[] history)
    {
        var r = new AskRequest { Collection = ServerFixture.Collection, Question = question, MaxTokens = MaxTokens, Chat = true };
        foreach (var (role, content) in history) r.History.Add(new ChatTurn { Role = role, Content = content });
        return r;
    }

    Task<AskResult> EngineAnswer(AskMode mode, AskRequest request) => fx.Engine.AskAsync(mode, request, _ => Task.CompletedTask, CancellationToken.None);

    /// <summary>The prompt the engine builds for a chat question after a cartridge (the template's rendering, encoded).</summary>
    int[] ExpectedPrompt(string question, params EngineChatMessage[] history) =>
        Prompting.Build(fx.Inner.Tokenizer!, new CompletionRequest(question)
        {
            Chat = true, TokenizerPath = fx.Inner.TokenizerPath, Prefix = new KvPrefix(0, 0, 0, 0, [], []), History = history,
        }).Ids;

    [Fact]
    public async Task In_process_answer_is_the_engines_answer_with_its_accounting()
    {
        fx.Require();
        var response = await InProcess().GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)], Options);
        var expected = await EngineAnswer(AskMode.Cartridges, Chat(Cat));
        Assert.False(string.IsNullOrWhiteSpace(expected.Answer));
        Assert.Equal(expected.Answer, response.Text);
        Assert.Equal(ChatRole.Assistant, Assert.Single(response.Messages).Role);

        var result = response.AskResult()!;
        Assert.Equal(expected.Documents.Select(d => (d.DocumentId, d.CartridgeId, d.CartridgeSlots)), result.Documents.Select(d => (d.DocumentId, d.CartridgeId, d.CartridgeSlots)));
        Assert.Contains("cat", (string[])response.AdditionalProperties![CasChatClient.DocumentsKey]!);
        Assert.Equal(ExpectedPrompt(Cat).Length, result.Tokens.PromptTokens); // the question as a user turn of the model's template
        Assert.Equal(result.Tokens.PromptTokens, response.Usage!.InputTokenCount);
        Assert.Equal(result.Tokens.CompletionTokens, response.Usage.OutputTokenCount);
        Assert.Equal(result.Documents.Sum(d => d.CartridgeSlots), response.Usage.AdditionalCounts!["cartridge_slots"]);
        Assert.Equal(result.Tokens.KvBytesAttended, response.Usage.AdditionalCounts["kv_bytes_attended"]);
        Assert.True(result.Tokens.CompletionTokens is > 0 and <= MaxTokens);
        Assert.Equal(result.FinishReason == Service.V1.FinishReason.Stop ? ChatFinishReason.Stop : ChatFinishReason.Length, response.FinishReason);

        var metadata = Assert.IsType<ChatClientMetadata>(InProcess().GetService(typeof(ChatClientMetadata)));
        Assert.Equal("cas", metadata.ProviderName);
        Assert.Equal(ServerFixture.Collection, metadata.DefaultModelId);
    }

    [Fact]
    public async Task Streaming_updates_concatenate_to_the_whole_answer_and_end_with_the_accounting()
    {
        fx.Require();
        foreach (var mode in new[] { AskMode.Cartridges, AskMode.Rag })
        {
            var client = InProcess(mode);
            var whole = await client.GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)], Options);
            var updates = new List<ChatResponseUpdate>();
            await foreach (var u in client.GetStreamingResponseAsync([new AiChatMessage(ChatRole.User, Cat)], Options)) updates.Add(u);
            Assert.True(updates.Count(u => u.Text.Length > 0) > 1, "the answer came in one piece; nothing was streamed");
            Assert.Equal(whole.Text, string.Concat(updates.Select(u => u.Text)));
            var usage = Assert.IsType<UsageContent>(Assert.Single(updates[^1].Contents)).Details;
            Assert.Equal(whole.Usage!.InputTokenCount, usage.InputTokenCount);
            Assert.Equal(whole.Usage.OutputTokenCount, usage.OutputTokenCount);
            var merged = updates.ToChatResponse(); // Microsoft.Extensions.AI's own merge of the updates
            Assert.Equal(whole.Text, merged.Text);
            Assert.Equal(whole.Usage.TotalTokenCount, merged.Usage!.TotalTokenCount);
            Assert.Equal(whole.FinishReason, merged.FinishReason);
            Assert.Equal(whole.AskResult()!.Answer, merged.AskResult()!.Answer);
            if (mode == AskMode.Rag) Assert.Equal(0, whole.AskResult()!.Tokens.CartridgeSlots);
        }
    }

    [Fact]
    public async Task Remote_client_answers_as_the_in_process_one()
    {
        fx.Require();
        using var client = Client();
        foreach (var mode in new[] { AskMode.Cartridges, AskMode.Rag, AskMode.Icl })
        {
            var local = await InProcess(mode).GetResponseAsync([new AiChatMessage(ChatRole.User, Ship)], Options);
            var remote = await Remote(client, mode).GetResponseAsync([new AiChatMessage(ChatRole.User, Ship)], Options);
            Assert.Equal(local.Text, remote.Text);
            Assert.Equal(local.Usage!.InputTokenCount, remote.Usage!.InputTokenCount);
            Assert.Equal(local.Usage.AdditionalCounts!["cartridge_slots"], remote.Usage.AdditionalCounts!["cartridge_slots"]);
            Assert.Equal(local.AskResult()!.Documents, remote.AskResult()!.Documents);
            var streamed = new System.Text.StringBuilder();
            await foreach (var u in Remote(client, mode).GetStreamingResponseAsync([new AiChatMessage(ChatRole.User, Ship)], Options)) streamed.Append(u.Text);
            Assert.Equal(local.Text, streamed.ToString());
        }
        // The mode per call, through ChatOptions.
        var rag = await Remote(client).GetResponseAsync([new AiChatMessage(ChatRole.User, Ship)],
            new ChatOptions { MaxOutputTokens = MaxTokens, AdditionalProperties = new() { [CasChatClient.ModeKey] = "rag" } });
        Assert.Equal((await EngineAnswer(AskMode.Rag, Chat(Ship))).Answer, rag.Text);
        Assert.Equal(0, rag.AskResult()!.Tokens.CartridgeSlots);
    }

    [Fact]
    public async Task History_reaches_the_prompt_and_retrieval_uses_the_last_user_message()
    {
        fx.Require();
        var first = await InProcess().GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)], Options);
        AiChatMessage[] conversation =
        [
            new(ChatRole.System, "You tell short stories."),
            new(ChatRole.User, Cat), new(ChatRole.Assistant, first.Text), new(ChatRole.User, Ship),
        ];
        var alone = (await InProcess().GetResponseAsync([new AiChatMessage(ChatRole.User, Ship)], Options)).AskResult()!;
        var turn = await InProcess().GetResponseAsync(conversation, Options);
        var result = turn.AskResult()!;

        EngineChatMessage[] history = [new("system", "You tell short stories."), new("user", Cat), new("assistant", first.Text)];
        var expected = ExpectedPrompt(Ship, history);
        Assert.Equal(expected.Length, result.Tokens.PromptTokens);
        Assert.True(result.Tokens.PromptTokens > alone.Tokens.PromptTokens + 10, $"{result.Tokens.PromptTokens} prompt tokens with history, {alone.Tokens.PromptTokens} without");
        // The encoded prompt is the template's rendering of the whole conversation (plain User:/Assistant: for stories260K).
        var text = fx.Inner.Tokenizer!.Decode(expected);
        Assert.Contains("User: " + Cat, text);
        Assert.Contains("Assistant: " + first.Text, text);
        Assert.EndsWith("User: " + Ship + "\nAssistant:", text);
        // Retrieval saw only the last user message: the same chunks and documents as the question alone.
        Assert.Equal(alone.Chunks, result.Chunks);
        Assert.Equal(alone.Documents.Select(d => d.DocumentId), result.Documents.Select(d => d.DocumentId));
        // The engine answers the same request the same way, and the history crosses gRPC (AskRequest.history).
        var engine = await EngineAnswer(AskMode.Cartridges, Chat(Ship, ("system", "You tell short stories."), ("user", Cat), ("assistant", first.Text)));
        Assert.Equal(engine.Answer, turn.Text);
        using var client = Client();
        var remote = await Remote(client).GetResponseAsync(conversation, Options);
        Assert.Equal(turn.Text, remote.Text);
        Assert.Equal(result.Tokens.PromptTokens, remote.AskResult()!.Tokens.PromptTokens);
    }

    [Fact]
    public void History_without_a_chat_template_is_refused_by_the_prompt_builder()
    {
        fx.Require();
        var e = Assert.Throws<InvalidRequestException>(() => Prompting.Build(fx.Inner.Tokenizer!,
            new CompletionRequest("q") { History = [new EngineChatMessage("user", "earlier")] }));
        Assert.Contains("Chat", e.Message);
    }

    [Fact]
    public async Task Semantic_Kernel_runs_a_prompt_through_the_client()
    {
        fx.Require();
        var chat = CasChatClient.InProcess(fx.Engine, ServerFixture.Collection, new CasChatOptions { MaxTokens = MaxTokens });
        var expected = (await chat.GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)])).Text;
        Assert.False(string.IsNullOrWhiteSpace(expected));

        // SK's IChatCompletionService over an IChatClient (ChatClientAIService needs our ChatClientMetadata).
        var builder = Kernel.CreateBuilder();
        builder.Services.AddSingleton<IChatCompletionService>(chat.AsChatCompletionService());
        var kernel = builder.Build();
        var result = await kernel.InvokePromptAsync(Cat);
        Assert.Equal(expected, result.GetValue<string>());
        var streamed = new System.Text.StringBuilder();
        await foreach (var piece in kernel.InvokePromptStreamingAsync<string>(Cat)) streamed.Append(piece);
        Assert.Equal(expected, streamed.ToString());

        // And the remote client, registered as an IChatClient.
        using var client = Client();
        var remoteBuilder = Kernel.CreateBuilder();
        remoteBuilder.Services.AddSingleton<IChatClient>(CasChatClient.Remote(client, ServerFixture.Collection, new CasChatOptions { MaxTokens = MaxTokens }));
        var remoteResult = await remoteBuilder.Build().InvokePromptAsync(Cat);
        Assert.Equal(expected, remoteResult.GetValue<string>());
    }

    [Fact]
    public async Task Refusals_are_typed_exceptions_in_process_and_remote()
    {
        fx.Require();
        using var client = Client();
        foreach (var remote in new[] { false, true })
        {
            CasChatClient On(string collection) => remote
                ? CasChatClient.Remote(client, collection) : CasChatClient.InProcess(fx.Engine, collection);
            var unknown = await Assert.ThrowsAsync<NotFoundException>(() => On("nope").GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)], Options));
            Assert.Contains("nope", unknown.Message);
            await Assert.ThrowsAsync<InvalidRequestException>(() => On(ServerFixture.Collection).GetResponseAsync([new AiChatMessage(ChatRole.User, "  ")], Options));
            // Only "moon" matches, and it has no cartridge: training has not finished.
            var untrained = await Assert.ThrowsAsync<FailedPreconditionException>(async () =>
            {
                await foreach (var _ in On(ServerFixture.Collection).GetStreamingResponseAsync([new AiChatMessage(ChatRole.User, "moon rocket")], Options)) { }
            });
            Assert.Contains("has not finished", untrained.Message);
            // The conversation must end with the user's question; no tool messages.
            await Assert.ThrowsAsync<InvalidRequestException>(() => On(ServerFixture.Collection).GetResponseAsync(
                [new AiChatMessage(ChatRole.User, Cat), new AiChatMessage(ChatRole.Assistant, "a")], Options));
            await Assert.ThrowsAsync<InvalidRequestException>(() => On(ServerFixture.Collection).GetResponseAsync(
                [new AiChatMessage(ChatRole.Tool, "x"), new AiChatMessage(ChatRole.User, Cat)], Options));
        }
        // A malformed history sent straight to the server: INVALID_ARGUMENT, as InvalidRequestException.
        var bad = await Assert.ThrowsAsync<InvalidRequestException>(() => client.AskAsync(AskMode.Cartridges, Chat(Cat, ("tool", "x")), null));
        Assert.StartsWith("InvalidArgument:", bad.Message);

        // A server that wants an API key: UNAUTHENTICATED without it.
        var dir = Directory.CreateTempSubdirectory("cas-chat-key-").FullName;
        var keyed = await ServerFixture.StartScratch(dir, o => o with { ApiKey = "secret" });
        try
        {
            using var noKey = new CasClient(keyed.Address);
            var e = await Assert.ThrowsAsync<CasServiceException>(() => CasChatClient.Remote(noKey, "any").GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)]));
            Assert.Equal(Grpc.Core.StatusCode.Unauthenticated, e.Status);
            using var withKey = new CasClient(keyed.Address, "secret");
            await Assert.ThrowsAsync<NotFoundException>(() => CasChatClient.Remote(withKey, "any").GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)]));
        }
        finally
        {
            await ChatFixture.DisposeBounded(keyed.DisposeAsync(), "the API-key server");
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task A_consumer_that_stops_reading_stops_the_decode_and_releases_the_cartridges()
    {
        fx.Require();
        using var client = Client();
        foreach (var chat in new[] { InProcess(), Remote(client) })
        {
            int seen = 0;
            await foreach (var u in chat.GetStreamingResponseAsync([new AiChatMessage(ChatRole.User, Cat)], new ChatOptions { MaxOutputTokens = 200 }))
                if (u.Text.Length > 0 && ++seen == 1) break;
            Assert.Equal(1, seen);
            await fx.Inner.WaitIdle();
        }
        // And the server still answers.
        Assert.False(string.IsNullOrEmpty((await Remote(client).GetResponseAsync([new AiChatMessage(ChatRole.User, Cat)], Options)).Text));
    }
}
