using System.Security.Cryptography;
using System.Text.Json;
using Cas.Service.V1;
using Cas.Tests.Common;

namespace Cas.Interop.Tests;

/// <summary>
/// Every RPC, error statuses, deadlines, cancellation and bad input, driven by a client nobody here wrote (Python
/// grpcio, Node grpc-js) against an in-process server. The clients only report what they saw; the assertions are here,
/// often against the server's own state or the .NET client's answer to the same request.
/// </summary>
public abstract class InteropTests(InteropServer fx, InteropClient client)
{
    const int TestTimeoutMs = 60_000;
    const string Question = "What did the cat find?";

    object AskArgs(int maxTokens, object? extra = null)
    {
        var d = new Dictionary<string, object> { ["collection"] = StoriesCollection.Name, ["question"] = Question, ["max_tokens"] = maxTokens };
        if (extra != null) foreach (var p in extra.GetType().GetProperties()) d[p.Name] = p.GetValue(extra)!;
        return d;
    }

    Task<JsonElement> Run(string scenario, object args)
    {
        fx.Require();
        client.Require();
        return client.Run(fx, scenario, args);
    }

    protected static JsonElement At(JsonElement e, string path)
    {
        foreach (var part in path.Split('.'))
        {
            JsonElement next = default;
            Assert.True(e.ValueKind == JsonValueKind.Object && e.TryGetProperty(part, out next), $"no '{part}' in {e}");
            e = next;
        }
        return e;
    }

    static string S(JsonElement e, string path) => At(e, path).ValueKind == JsonValueKind.String ? At(e, path).GetString()! : At(e, path).GetRawText();

    // 64-bit integers arrive as strings from both clients (proto3 JSON mapping / proto-loader longs: String), 32-bit as numbers.
    static long L(JsonElement e, string path) => long.Parse(S(e, path));

    static void Status(JsonElement report, string name, string code, string? detailContains = null)
    {
        var s = At(report, name);
        Assert.True(S(s, "code") == code, $"{name}: expected {code}, got {S(s, "code")} ({S(s, "details")})");
        if (detailContains != null) Assert.Contains(detailContains, S(s, "details"));
    }

    static List<string> Strings(JsonElement e) => e.EnumerateArray().Select(x => x.GetString()!).ToList();

    [Fact(Timeout = TestTimeoutMs)]
    public async Task CollectionService_every_rpc()
    {
        string name = "interop-" + client.Name;
        string[][] docs = [["a", "The red fox jumped over the log."], ["b", "A blue bird sang in the tree all day."], ["c", "The green frog sat on a lily pad."]];
        var r = await Run("collections", new { name, docs });

        var host = fx.Server!.State.Model(fx.ModelPath, fx.TokenizerPath);
        Assert.Equal(name, S(r, "create.name"));
        Assert.Equal(16, At(r, "create.chunk_tokens").GetInt32());
        Assert.Equal(host.Fingerprint, S(r, "create.model_fingerprint"));
        // Two streamed messages: a and b, then c and a again (unchanged).
        Assert.Equal(3, At(r, "add.added").GetInt32());
        Assert.Equal(1, At(r, "add.unchanged").GetInt32());
        Assert.Equal(0, At(r, "add.changed").GetInt32());
        Assert.True(L(r, "add.chunks") >= 3);
        Assert.Equal(1, At(r, "add_changed.changed").GetInt32());
        Assert.Contains(name, Strings(At(r, "list")));
        Assert.Contains(StoriesCollection.Name, Strings(At(r, "list")));
        Assert.Equal(3, At(r, "get.collection.documents").GetInt32());
        var got = At(r, "get.documents").EnumerateArray().ToList();
        Assert.Equal(["a", "b", "c"], got.Select(d => S(d, "id")).Order());
        Assert.All(got, d => Assert.Equal("CARTRIDGE_STATE_MISSING", S(d, "cartridge_state")));
        Assert.Equal(docs[1][1].Length + " And then it rained.".Length, got.First(d => S(d, "id") == "b").GetProperty("characters").GetInt32());
        Assert.Equal(3, At(r, "delete.documents_deleted").GetInt32());
        Status(r, "get_after_delete", "NOT_FOUND", name);
        Assert.DoesNotContain(fx.Server.State.Catalog.List(), c => c.Name == name);
    }

    [Fact(Timeout = TestTimeoutMs)]
    public async Task CartridgeService_every_rpc_with_streamed_export_and_import()
    {
        string id = fx.CartridgeId("cat"), copy = $"interop/{client.Name}-copy";
        var r = await Run("cartridges", new { id, copy_id = copy, prefix = StoriesCollection.Name + "/" });

        Assert.Contains(id, Strings(At(r, "list")));
        Assert.Contains(fx.CartridgeId("ship"), Strings(At(r, "list")));
        var stored = fx.Server!.State.Store.Find(id)!;
        Assert.Equal(id, S(r, "get.id"));
        Assert.Equal(stored.Version, L(r, "get.version"));
        Assert.Equal(StoriesCollection.CartridgeTokens, At(r, "get.length").GetInt32());
        Assert.Equal(stored.Bytes, L(r, "get.bytes"));
        Assert.Equal(stored.ModelFingerprint, S(r, "get.model_fingerprint"));
        Assert.Equal("cat", S(r, "get.labels." + Cas.Collections.CollectionCatalog.LabelDocument));

        // Export: the info in the first message only, the bytes those of the stored file.
        var file = fx.Server.State.Store.ReadFile(id, CancellationToken.None).Bytes;
        var infoIn = At(r, "export.info_in").EnumerateArray().Select(x => x.GetBoolean()).ToList();
        Assert.Equal(At(r, "export.messages").GetInt32(), infoIn.Count);
        Assert.True(infoIn[0]);
        Assert.All(infoIn.Skip(1), Assert.False);
        Assert.Equal(id, S(r, "export_info.id"));
        Assert.Equal(file.Length, At(r, "export.bytes").GetInt32());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(file)), S(r, "export.sha256"));

        // Import of those bytes in 1000-byte pieces under another id, stored as f32; then get, delete, gone.
        Assert.True(At(r, "import_pieces").GetInt32() > 1);
        Assert.Equal(copy, S(r, "import.id"));
        Assert.Equal(1, L(r, "import.version"));
        Assert.Equal("f32", S(r, "import.dtype"));
        Assert.Equal(StoriesCollection.CartridgeTokens, At(r, "import.length").GetInt32());
        Assert.Equal(stored.ModelFingerprint, S(r, "import.model_fingerprint"));
        Assert.Equal(S(r, "import.bytes"), S(r, "get_copy.bytes"));
        Assert.True(At(r, "delete.deleted").GetBoolean());
        Status(r, "get_deleted", "NOT_FOUND", copy);
        Assert.Null(fx.Server.State.Store.Find(copy));
    }

    [Fact(Timeout = TestTimeoutMs)]
    public async Task TrainingService_every_rpc_and_a_deadline_on_a_watch()
    {
        var r = await Run("training", new { done_job = fx.DoneJob, running_job = fx.RunningJob, collection = StoriesCollection.Name, watch_deadline_ms = 1500 });

        Assert.Equal(fx.DoneJob, L(r, "get.id"));
        Assert.Equal("JOB_STATE_DONE", S(r, "get.state"));
        Assert.Equal(StoriesCollection.Name, S(r, "get.collection"));
        var doc = At(r, "get.documents")[0];
        Assert.Equal("cat", S(doc, "document_id"));
        Assert.Equal(10, L(doc, "steps_done"));
        Assert.Equal(0.5, At(doc, "loss").GetDouble());
        Assert.Equal(1, L(doc, "cartridge_version"));
        var listed = At(r, "list").EnumerateArray().ToDictionary(j => L(j, "id"), j => S(j, "state"));
        Assert.Equal("JOB_STATE_DONE", listed[fx.DoneJob]);
        Assert.Equal("JOB_STATE_RUNNING", listed[fx.RunningJob]);
        // A finished job: its state once, and the stream ends.
        var done = At(r, "watch_done").EnumerateArray().ToList();
        Assert.Single(done);
        Assert.Equal("JOB_STATE_DONE", S(done[0], "state"));
        // A running job that does not change: its state, then the client's deadline ends the stream.
        Status(r, "watch_running", "DEADLINE_EXCEEDED");
        var running = At(r, "watch_running.messages").EnumerateArray().ToList();
        Assert.Single(running);
        Assert.Equal("JOB_STATE_RUNNING", S(running[0], "state"));
        Assert.Equal(3, L(running[0], "steps_done"));
        Status(r, "get_unknown", "NOT_FOUND");
        // StartTraining / CancelTrainingJob reached through their refusals (a real job is trained in Cas.Service.Tests):
        // choosing documents is not supported, the collection or job must exist.
        Status(r, "start_unknown_collection", "NOT_FOUND", "no-such-collection");
        Status(r, "start_chosen_documents", "UNIMPLEMENTED");
        Status(r, "cancel_unknown", "NOT_FOUND");
    }

    [Fact(Timeout = TestTimeoutMs)]
    public async Task Health_without_a_key_and_reflection_with_one()
    {
        var r = await Run("health_reflection", new { });

        Status(r, "health", "OK");
        Assert.Equal("SERVING", S(r, "health.value"));
        var services = Strings(At(r, "services"));
        foreach (var s in new[] { "cas.v1.CollectionService", "cas.v1.TrainingService", "cas.v1.QueryService", "cas.v1.CartridgeService", "grpc.health.v1.Health" })
            Assert.Contains(s, services);
        // The file that defines QueryService, as the server reflects it, parsed by the client's own protobuf library.
        var query = At(r, "symbol_files").GetProperty("cas/v1/query.proto");
        Assert.Equal(["Ask", "AskRag", "AskIcl", "AskNoContext", "Score"], Strings(query.GetProperty("QueryService")));
        Status(r, "reflection_without_key", "UNAUTHENTICATED", "x-api-key");
    }

    [Fact(Timeout = TestTimeoutMs)]
    public async Task Ask_AskRag_AskIcl_stream_the_answers_the_dotnet_client_gets()
    {
        const int maxTokens = 16;
        var r = await Run("ask", AskArgs(maxTokens));

        var request = new AskRequest { Collection = StoriesCollection.Name, Question = Question, MaxTokens = maxTokens };
        foreach (var (name, method) in new (string, Func<AskRequest, Grpc.Core.CallOptions, Grpc.Core.AsyncServerStreamingCall<AskResponse>>)[]
                 { ("ask", fx.Query.Ask), ("rag", fx.Query.AskRag), ("icl", fx.Query.AskIcl) })
        {
            var a = At(r, name);
            // The deltas joined are the answer, nothing follows the result, and (greedy) it is the .NET client's answer.
            Assert.Equal(S(a, "result.answer"), S(a, "streamed"));
            Assert.Equal(0, At(a, "after_result").GetInt32());
            var (_, dotnet) = await fx.Ask(method, request);
            Assert.Equal(dotnet.Answer, S(a, "result.answer"));
            Assert.Equal(dotnet.FinishReason.ToString(), FinishName(S(a, "result.finish_reason")));
            Assert.Equal(dotnet.Tokens.PromptTokens, At(a, "result.tokens.prompt_tokens").GetInt32());
            Assert.Equal(dotnet.Tokens.CartridgeSlots, At(a, "result.tokens.cartridge_slots").GetInt32());
            Assert.Equal(dotnet.Tokens.CompletionTokens, At(a, "result.tokens.completion_tokens").GetInt32());
            Assert.Equal(dotnet.Tokens.KvBytesAttended, L(a, "result.tokens.kv_bytes_attended"));
            Assert.Equal(dotnet.Documents.Select(d => d.DocumentId), At(a, "result.documents").EnumerateArray().Select(d => S(d, "document_id")));
            Assert.True(At(a, "deltas").GetInt32() >= (dotnet.Answer.Length > 0 ? 1 : 0));
            Assert.True(At(a, "result.latency.total_ms").GetDouble() > 0);
        }
        // Ask decodes after the retrieved document's cartridge; the baselines paste text instead.
        var used = At(r, "ask.result.documents")[0];
        Assert.Equal("cat", S(used, "document_id"));
        Assert.Equal(fx.CartridgeId("cat"), S(used, "cartridge_id"));
        Assert.Equal(1, L(used, "cartridge_version"));
        Assert.Equal(StoriesCollection.CartridgeTokens, At(used, "cartridge_slots").GetInt32());
        Assert.Equal(0, At(r, "rag.result.tokens.cartridge_slots").GetInt32());
        Assert.Equal(0, At(r, "icl.result.tokens.cartridge_slots").GetInt32());
        Assert.True(At(r, "rag.result.tokens.prompt_tokens").GetInt32() > At(r, "ask.result.tokens.prompt_tokens").GetInt32());
        Assert.True(At(r, "icl.result.tokens.prompt_tokens").GetInt32() > At(r, "ask.result.tokens.prompt_tokens").GetInt32());
        await fx.WaitIdle();
    }

    [Fact(Timeout = TestTimeoutMs)]
    public async Task Score_gives_the_engines_NLL_per_token_and_the_new_RPCs_answer()
    {
        fx.Require();
        var host = fx.Server!.State.Model(fx.ModelPath, fx.TokenizerPath);
        int[] answer = Cas.Engine.Prompting.EncodeContinuation(host.Tokenizer, " the cat ran to the big ship.");
        int[] tooLong = [.. Enumerable.Range(0, host.Config.MaxSeqLen + 8).Select(i => answer[i % answer.Length])];
        const int maxTokens = 32;
        var r = await Run("score", AskArgs(maxTokens, new { answer, long_answer = tooLong, document = "cat" }));

        var engine = new Cas.Service.QueryEngine(fx.Server.State);
        var request = new AskRequest { Collection = StoriesCollection.Name, Question = Question, MaxTokens = maxTokens };
        foreach (var (name, mode, framing) in new[] { ("cas", Cas.Service.AskMode.Cartridges, Cas.Service.ScoreFraming.Continuation), ("none", Cas.Service.AskMode.NoContext, Cas.Service.ScoreFraming.Question) })
        {
            var local = await engine.ScoreAsync(mode, request, answer, framing, CancellationToken.None);
            var nll = At(r, name + ".token_nll").EnumerateArray().Select(x => x.GetDouble()).ToList();
            Assert.Equal(answer.Length, nll.Count);
            for (int i = 0; i < nll.Count; i++) Assert.True(Math.Abs(nll[i] - local.TokenNll[i]) <= 1e-9, $"{name} token {i}: {nll[i]} vs {local.TokenNll[i]}");
            Assert.Equal(local.Prompt, At(r, name + ".prompt").EnumerateArray().Select(x => x.GetInt32()));
            Assert.Equal(local.Ask.Documents.Select(d => d.DocumentId), At(r, name + ".result.documents").EnumerateArray().Select(d => S(d, "document_id")));
            Assert.Equal(local.Ask.Tokens.CartridgeSlots, At(r, name + ".result.tokens.cartridge_slots").GetInt32());
            Assert.Equal(local.Ask.Tokens.KvBytesAttended, L(r, name + ".result.tokens.kv_bytes_attended"));
        }
        Assert.True(At(r, "cas.result.tokens.cartridge_slots").GetInt32() > 0);
        Status(r, "unknown_collection", "NOT_FOUND", "no-such-collection");
        Status(r, "empty_answer", "INVALID_ARGUMENT", "empty");
        Status(r, "too_long", "INVALID_ARGUMENT", "context");
        var (_, none) = await fx.Ask(fx.Query.AskNoContext, request);
        Assert.Equal(none.Answer, S(r, "ask_none.result.answer"));
        Assert.Empty(At(r, "ask_none.result.documents").EnumerateArray());
        Assert.Equal(StoriesCollection.Docs.First(d => d.Id == "cat").Text, S(r, "text"));
        Assert.Equal(fx.Server.State.Budget.Metrics().ResidentBudget, L(r, "budget.resident_budget"));
        Assert.True(L(r, "budget.peak_resident_bytes") > 0);
        await fx.WaitIdle();
    }

    static string FinishName(string proto) => proto switch
    {
        "FINISH_REASON_STOP" => "Stop", "FINISH_REASON_LENGTH" => "Length", "FINISH_REASON_CONTEXT" => "Context", _ => "Unspecified",
    };

    [Fact(Timeout = TestTimeoutMs)]
    public async Task Bad_input_gets_its_status_and_the_server_keeps_serving()
    {
        var r = await Run("errors", AskArgs(4, new
        {
            untrained = InteropServer.Untrained, no_cartridge_doc = "moon", oversized_bytes = 2 * InteropServer.MaxMessageBytes,
        }));

        Status(r, "unknown_collection", "NOT_FOUND", "no-such-collection");
        Status(r, "unknown_cartridge", "NOT_FOUND", "stories/no-such");
        Status(r, "export_unknown_cartridge", "NOT_FOUND", "stories/no-such");
        Status(r, "empty_question", "INVALID_ARGUMENT");
        Status(r, "untrained_collection", "FAILED_PRECONDITION", "has not finished");
        Status(r, "document_without_cartridge", "FAILED_PRECONDITION", "moon");
        Status(r, "no_key", "UNAUTHENTICATED", "x-api-key");
        Status(r, "wrong_key", "UNAUTHENTICATED", "x-api-key");
        Status(r, "oversized", "RESOURCE_EXHAUSTED");
        Status(r, "not_a_cartridge", "INVALID_ARGUMENT");
        Status(r, "malformed_client_stream", "INVALID_ARGUMENT", "malformed");
        Status(r, "malformed_server_stream", MalformedRequestStatus);
        Status(r, "malformed_unary", MalformedRequestStatus);
        Status(r, "after", "OK");
        Assert.NotEmpty(At(r, "after.value.result.documents").EnumerateArray());

        // Nothing of the refused calls was kept, nothing is pinned, and .NET clients are served too.
        Assert.DoesNotContain(fx.Server!.State.Catalog.Documents(StoriesCollection.Name), d => d.DocumentId == "huge");
        Assert.Null(fx.Server.State.Store.Find("interop/garbage"));
        await fx.WaitIdle();
        var (_, ok) = await fx.Ask(fx.Query.Ask, new AskRequest { Collection = StoriesCollection.Name, Question = "the ship", MaxTokens = 4 });
        Assert.Contains(ok.Documents, d => d.DocumentId == "ship");
    }

    /// <summary>
    /// A malformed request to a unary or server-streaming method is parsed by Grpc.AspNetCore before any interceptor runs,
    /// and it answers UNKNOWN (documented in src/Cas.Service/README.md); in a client stream our handler reads it and
    /// answers INVALID_ARGUMENT.
    /// </summary>
    const string MalformedRequestStatus = "UNKNOWN";

    [Fact(Timeout = TestTimeoutMs)]
    public async Task A_deadline_mid_decode_is_DEADLINE_EXCEEDED_and_releases_everything()
    {
        var r = await Run("deadline", AskArgs(400, new { deadline_ms = 100 }));

        Status(r, "ask", "DEADLINE_EXCEEDED");
        Status(r, "after", "OK");
        await fx.WaitIdle();
        var m = fx.Server!.State.Budget.Metrics();
        Assert.Equal(0, m.Pinned);
        Assert.True(m.PeakResidentBytes <= m.ResidentBudget);
    }

    [Fact(Timeout = TestTimeoutMs)]
    public async Task A_client_that_cancels_mid_stream_sees_CANCELLED_and_nothing_stays_pinned()
    {
        var r = await Run("cancel", AskArgs(400, new { running_job = fx.RunningJob }));

        Assert.Equal("delta", S(r, "first_kind"));
        Status(r, "ask", "CANCELLED");
        CheckCancelEvents(r, "ask");
        Assert.Equal("JOB_STATE_RUNNING", S(r, "watch_first_state"));
        Status(r, "watch", "CANCELLED");
        CheckCancelEvents(r, "watch");
        Status(r, "after", "OK");
        await fx.WaitIdle();
        Assert.Equal(0, fx.Server!.State.Budget.Metrics().Pinned);
    }

    /// <summary>What each client library shows of a cancelled stream (checked in the subclasses).</summary>
    protected abstract void CheckCancelEvents(JsonElement report, string call);

    [Fact(Timeout = TestTimeoutMs)]
    public async Task A_client_that_disconnects_mid_stream_leaves_nothing_pinned_and_the_server_answers()
    {
        var r = await Run("disconnect", AskArgs(400));

        Assert.Equal("delta", S(r, "first_kind"));
        await fx.WaitIdle();
        Assert.Equal(0, fx.Server!.State.Budget.Metrics().Pinned);
        var (_, ok) = await fx.Ask(fx.Query.Ask, new AskRequest { Collection = StoriesCollection.Name, Question = Question, MaxTokens = 4 });
        Assert.Contains(ok.Documents, d => d.DocumentId == "cat");
        var again = await client.Run(fx, "ask", AskArgs(4));
        Assert.Equal(ok.Answer, S(again, "ask.result.answer"));
    }
}

/// <summary>Debian's python3-grpcio.</summary>
public sealed class PythonClientTests(InteropServer fx) : InteropTests(fx, InteropClient.Python), IClassFixture<InteropServer>
{
    // grpcio: cancel() returns True when the call had not ended; the call's code is then CANCELLED and iterating it raises.
    protected override void CheckCancelEvents(JsonElement report, string call)
    {
        if (call == "ask")
        {
            Assert.True(At(report, "cancel_returned").GetBoolean());
            Assert.Equal("CANCELLED", At(report, "ask.iter_code").GetString());
        }
        else Assert.True(At(report, "watch_cancel_returned").GetBoolean());
    }
}

/// <summary>npm's @grpc/grpc-js + @grpc/proto-loader.</summary>
public sealed class NodeClientTests(InteropServer fx) : InteropTests(fx, InteropClient.Node), IClassFixture<InteropServer>
{
    // grpc-js: after cancel() the stream emits 'error' (CANCELLED) and then 'end'; no data after the error.
    protected override void CheckCancelEvents(JsonElement report, string call)
    {
        var events = At(report, call + ".events").EnumerateArray().Select(e => e.GetString()!).ToList();
        int error = events.IndexOf("error:CANCELLED");
        Assert.True(error > 0, $"no error:CANCELLED after data in [{string.Join(", ", events)}]");
        Assert.DoesNotContain("data", events.Skip(error));
        Assert.Equal("end", At(report, call + ".ended_by").GetString());
        Assert.True(events.IndexOf("end") > error, $"'end' should follow the error: [{string.Join(", ", events)}]");
    }
}
