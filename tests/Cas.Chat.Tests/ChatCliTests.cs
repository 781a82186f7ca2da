using System.Diagnostics;
using System.Text.RegularExpressions;
using Cas.Client;
using Cas.Engine.Cartridges;
using Cas.Service;
using Cas.Service.V1;
using Grpc.Net.Client;
using Cas.Service.Tests;
using Cas.Tests.Common;
using Microsoft.Extensions.AI;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Cas.Chat.Tests;

/// <summary>`cas chat` as a process with piped stdin: two turns with history, /reset, /exit and end of input.</summary>
[Collection(ChatCollection.Name)]
public sealed class ChatCliTests(ChatFixture fx)
{
    const int MaxTokens = 12;

    /// <summary>Runs `cas chat ARGS` with <paramref name="stdin"/> piped in (then closed); at most 60 s.</summary>
    static async Task<(int Rc, string Out, string Err)> RunChat(string stdin, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(CasCli.Dll);
        psi.ArgumentList.Add("chat");
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.StandardInput.WriteAsync(stdin);
        p.StandardInput.Close();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try { await p.WaitForExitAsync(limit.Token); }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"cas chat did not end within 60 s; stdout: {await stdout}; stderr: {await stderr}");
        }
        return (p.ExitCode, await stdout, await stderr);
    }

    static int[] PromptTokens(string stderr) =>
        Regex.Matches(stderr, @"prompt_tokens=(\d+)").Select(m => int.Parse(m.Groups[1].Value)).ToArray();

    static async Task<string[]> Conversation(CasChatClient chat, params string[] userLines)
    {
        var history = new List<AiChatMessage>();
        var answers = new List<string>();
        foreach (var line in userLines)
        {
            if (line == "/reset") { history.Clear(); continue; }
            history.Add(new AiChatMessage(ChatRole.User, line));
            var answer = (await chat.GetResponseAsync(history)).Text;
            history.Add(new AiChatMessage(ChatRole.Assistant, answer));
            answers.Add(answer);
        }
        return [.. answers];
    }

    [Fact]
    public async Task Chat_with_a_collection_through_the_server_keeps_the_history()
    {
        fx.Require();
        string[] lines = ["Where did the cat find the frog?", "What did Ben see on the sea?"];
        using var client = new CasClient(fx.Inner.Channel!);
        var expected = await Conversation(CasChatClient.Remote(client, ServerFixture.Collection, new CasChatOptions { MaxTokens = MaxTokens }), lines);

        var (rc, stdout, stderr) = await RunChat(string.Join("\n", lines) + "\n/exit\nnot read after /exit\n",
            "--collection", ServerFixture.Collection, "--server", fx.Inner.Server!.Address.ToString(), "--max-tokens", MaxTokens.ToString());
        Assert.True(rc == 0, stderr);
        Assert.Equal(string.Concat(expected.Select(a => a + "\n")), stdout); // each answer streamed, then a newline
        var prompts = PromptTokens(stderr);
        Assert.Equal(2, prompts.Length);
        Assert.True(prompts[1] > prompts[0] + 10, $"the second turn's prompt ({prompts[1]} tokens) should hold the first turn ({prompts[0]})");
        Assert.Contains("cartridge=stories/cat", stderr);
    }

    [Fact]
    public async Task Chat_with_a_collection_in_process_from_the_data_folder()
    {
        fx.Require();
        string[] lines = ["Where did the cat find the frog?", "What color was the ball?"];
        var dir = Directory.CreateTempSubdirectory("cas-chat-local-").FullName;
        try
        {
            // A data folder with a collection and one cartridge, made by a server that is then stopped (the store is single-process).
            string[] expected;
            var server = await ServerFixture.StartScratch(dir, o => o);
            try
            {
                using var channel = GrpcChannel.ForAddress(server.Address);
                var collections = new CollectionService.CollectionServiceClient(channel);
                await collections.CreateCollectionAsync(new CreateCollectionRequest { Name = "local", ChunkTokens = 16 });
                await ServerFixture.AddDocs(collections, "local", ServerFixture.Docs);
                await ServerFixture.Import(new CartridgeService.CartridgeServiceClient(channel), fx.Inner.CartridgeFiles["cat"], "local", "cat");
                expected = await Conversation(CasChatClient.InProcess(new QueryEngine(server.State), "local", new CasChatOptions { MaxTokens = MaxTokens }), lines);
            }
            finally { await ChatFixture.DisposeBounded(server.DisposeAsync(), "the scratch server"); }

            var (rc, stdout, stderr) = await RunChat(string.Join("\n", lines) + "\n/exit\n",
                "--collection", "local", "--data-dir", dir, "--max-tokens", MaxTokens.ToString());
            Assert.True(rc == 0, stderr);
            Assert.Equal(string.Concat(expected.Select(a => a + "\n")), stdout);
            Assert.Contains("cartridge=local/cat", stderr);
            Assert.Equal(2, PromptTokens(stderr).Length);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task Chat_with_cartridge_files_resets_and_ends_at_end_of_input()
    {
        fx.Require();
        var file = fx.Inner.CartridgeFiles["cat"];
        var model = fx.Inner.Model!;
        var prefix = Cartridge.Load(file, model).Prefix;
        var chat = new CasChatClient(new CartridgeAsker(model, fx.Inner.Tokenizer!, fx.Inner.TokenizerPath, [("cat.safetensors", prefix)]), "",
            new CasChatOptions { MaxTokens = MaxTokens });
        string[] lines = ["Who is Tom?", "What did he find?", "/reset", "Who is Tom?"];
        var expected = await Conversation(chat, lines);
        Assert.Equal(expected[0], expected[2]);

        var (rc, stdout, stderr) = await RunChat(string.Join("\n", lines) + "\n", // no /exit: end of input ends it
            "--cartridge", file, "--model", fx.Inner.ModelPath!, "--tokenizer", fx.Inner.TokenizerPath!, "--max-tokens", MaxTokens.ToString());
        Assert.True(rc == 0, stderr);
        Assert.Equal(string.Concat(expected.Select(a => a + "\n")), stdout);
        Assert.Contains("history cleared.", stderr);
        var prompts = PromptTokens(stderr);
        Assert.Equal(3, prompts.Length);
        Assert.True(prompts[1] > prompts[0]);
        Assert.Equal(prompts[0], prompts[2]); // after /reset the question is asked afresh
        Assert.Contains("cartridge_slots=16", stderr);
    }

    [Fact]
    public async Task Bad_arguments_and_unknown_collections_are_one_line_errors()
    {
        fx.Require();
        var (rc, stdout, stderr) = await RunChat("", "--collection", "x", "--cartridge", fx.Inner.CartridgeFiles["cat"]);
        Assert.Equal(2, rc);
        Assert.StartsWith("error: give either --collection", stderr);
        Assert.Empty(stdout);
        (rc, _, stderr) = await RunChat("hello\n", "--collection", "nope", "--server", fx.Inner.Server!.Address.ToString());
        Assert.Equal(2, rc);
        Assert.StartsWith("error: NotFound: no collection 'nope'", stderr);
        // A question the collection cannot answer yet: reported, the conversation goes on, the exit code says so.
        (rc, stdout, stderr) = await RunChat("moon rocket\nWhere did the cat find the frog?\n",
            "--collection", ServerFixture.Collection, "--server", fx.Inner.Server.Address.ToString(), "--max-tokens", "4");
        Assert.Equal(2, rc);
        Assert.Contains("error: FailedPrecondition:", stderr);
        Assert.Single(PromptTokens(stderr));
        Assert.False(string.IsNullOrWhiteSpace(stdout));
    }
}
