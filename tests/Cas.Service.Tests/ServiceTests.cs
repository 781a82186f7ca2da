using Cas.Engine;
using Cas.Service.V1;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Grpc.Reflection.V1Alpha;

namespace Cas.Service.Tests;

/// <summary>Every RPC of cas.v1 against a real server with stories260K, and the refusals the issue names.</summary>
public sealed class ServiceTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    static AskRequest Q(string question, int maxTokens = 24) => new() { Collection = ServerFixture.Collection, Question = question, MaxTokens = maxTokens };

    static async Task<RpcException> Refused(Func<Task> call) => await Bounded("a refused call", Assert.ThrowsAsync<RpcException>(call));

    /// <summary>Every step of a test is bounded: a call that never completes fails the test with its name instead of hanging the run.</summary>
    static async Task<T> Bounded<T>(string what, Task<T> task)
    {
        try { return await task.WaitAsync(TimeSpan.FromSeconds(60)); }
        catch (TimeoutException) { throw new TimeoutException($"{what} did not complete within 60 s"); }
    }
    static Task Bounded(string what, Task task) => Bounded(what, task.ContinueWith(t => { t.GetAwaiter().GetResult(); return 0; }, TaskScheduler.Default));

    [Fact]
    public async Task Collections_create_add_list_get_delete()
    {
        fx.Require();
        var c = fx.Collections;
        var created = await c.CreateCollectionAsync(new CreateCollectionRequest { Name = "lifecycle", ChunkTokens = 32 });
        Assert.Equal(32, created.ChunkTokens);
        Assert.Equal(fx.Server!.State.Model(fx.ModelPath!, fx.TokenizerPath!).Fingerprint, created.ModelFingerprint);
        var added = await ServerFixture.AddDocs(c, "lifecycle", ServerFixture.Docs);
        Assert.Equal(3, added.Added);
        Assert.True(added.Chunks >= 3);
        var again = await ServerFixture.AddDocs(c, "lifecycle", [ServerFixture.Docs[0], ("cat", ServerFixture.Docs[1].Text)]);
        Assert.Equal((0, 1, 1), (again.Added, again.Changed, again.Unchanged)); // the same text is a no-op; a new text replaces
        var list = await c.ListCollectionsAsync(new ListCollectionsRequest());
        Assert.Contains(list.Collections, x => x.Name == "lifecycle" && x.Documents == 3);
        var detail = await c.GetCollectionAsync(new GetCollectionRequest { Name = "lifecycle" });
        Assert.Equal(["cat", "moon", "ship"], detail.Documents.Select(d => d.Id));
        Assert.All(detail.Documents, d => Assert.Equal(V1.CartridgeState.Missing, d.CartridgeState));
        var deleted = await c.DeleteCollectionAsync(new DeleteCollectionRequest { Name = "lifecycle" });
        Assert.Equal(3, deleted.DocumentsDeleted);
        var e = await Refused(async () => await c.GetCollectionAsync(new GetCollectionRequest { Name = "lifecycle" }));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.Empty(fx.Server.State.Catalog.Search("lifecycle", "cat ship moon")); // its chunks left the index too
    }

    [Fact]
    public async Task Cartridges_list_get_export_import_delete()
    {
        fx.Require();
        var c = fx.Cartridges;
        var list = await c.ListCartridgesAsync(new ListCartridgesRequest { IdPrefix = ServerFixture.Collection + "/" });
        Assert.Equal(["stories/cat", "stories/ship"], list.Cartridges.Select(x => x.Id));
        var info = await c.GetCartridgeAsync(new GetCartridgeRequest { Id = "stories/cat" });
        Assert.Equal(ServerFixture.CartridgeTokens, info.Length);
        Assert.Equal("cat", info.Labels["document"]);
        Assert.Equal("bf16", info.Dtype);
        Assert.Equal(fx.Server!.State.Catalog.Documents(ServerFixture.Collection).First(d => d.DocumentId == "cat").ContentHash, info.Labels["content_hash"]);

        // Export returns the stored file byte for byte.
        using var export = c.ExportCartridge(new GetCartridgeRequest { Id = "stories/cat" });
        var bytes = new List<byte>();
        CartridgeInfo? head = null;
        await foreach (var m in export.ResponseStream.ReadAllAsync()) { head ??= m.Info; bytes.AddRange(m.Data); }
        Assert.Equal(info.Version, head!.Version);
        Assert.Equal(fx.Server.State.Store.ReadFile("stories/cat").Bytes, bytes.ToArray());

        // Import under a plain id makes version 1, again version 2; delete removes it.
        var first = await ImportAsId(c, fx.CartridgeFiles["ship"], "scratch/ship");
        var second = await ImportAsId(c, fx.CartridgeFiles["ship"], "scratch/ship");
        Assert.Equal((1L, 2L), (first.Version, second.Version));
        Assert.True((await c.DeleteCartridgeAsync(new DeleteCartridgeRequest { Id = "scratch/ship" })).Deleted);
        Assert.Equal(StatusCode.NotFound, (await Refused(async () => await c.GetCartridgeAsync(new GetCartridgeRequest { Id = "scratch/ship" }))).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Refused(async () => await c.DeleteCartridgeAsync(new DeleteCartridgeRequest { Id = "no/such" }))).StatusCode);
        using var missing = c.ExportCartridge(new GetCartridgeRequest { Id = "no/such" });
        Assert.Equal(StatusCode.NotFound, (await Refused(async () => await missing.ResponseStream.MoveNext())).StatusCode);

        // Not a cartridge file: INVALID_ARGUMENT, nothing stored.
        var junk = Path.Combine(fx.DataDir, "junk.safetensors");
        await File.WriteAllBytesAsync(junk, new byte[100]);
        Assert.Equal(StatusCode.InvalidArgument, (await Refused(() => ImportAsId(c, junk, "scratch/junk"))).StatusCode);
        Assert.Null(fx.Server.State.Store.Find("scratch/junk"));
    }

    static async Task<CartridgeInfo> ImportAsId(CartridgeService.CartridgeServiceClient c, string file, string id)
    {
        using var call = c.ImportCartridge();
        await call.RequestStream.WriteAsync(new ImportCartridgeRequest { Id = id, Data = ByteString.CopyFrom(await File.ReadAllBytesAsync(file)) });
        await call.RequestStream.CompleteAsync();
        return await call;
    }

    [Fact]
    public async Task Ask_streams_the_answer_after_the_retrieved_documents_cartridges_and_accounts_for_it()
    {
        fx.Require();
        var (streamed, r) = await ServerFixture.Collect(fx.Query.Ask(Q("Where did the cat play with the ball?")));
        Assert.Equal(r.Answer, streamed);
        Assert.NotEmpty(r.Answer);
        Assert.Equal("cat", r.Chunks[0].DocumentId);
        var used = Assert.Single(r.Documents, d => d.DocumentId == "cat");
        Assert.Equal("stories/cat", used.CartridgeId);
        Assert.Equal(1, used.CartridgeVersion);
        Assert.Equal(r.Documents.Sum(d => d.CartridgeSlots), r.Tokens.CartridgeSlots);
        Assert.True(r.Tokens.PromptTokens > 0);
        Assert.True(r.Tokens.CompletionTokens is > 0 and <= 24);
        var c = fx.Model!.Config;
        Assert.Equal(2L * c.Layers * c.KvHeads * c.HeadDim * 4 * (r.Tokens.CartridgeSlots + r.Tokens.PromptTokens + r.Tokens.CompletionTokens), r.Tokens.KvBytesAttended);
        Assert.True(r.Latency.TotalMs >= r.Latency.PrefillMs + r.Latency.DecodeMs);
        Assert.True(r.Latency.DecodeMs > 0);

        // The same answer as the engine's own generator with the composed cartridges (greedy).
        var parts = r.Documents.Select(d => fx.Server!.State.Store.Get(d.CartridgeId).Prefix).ToList();
        var prompt = Prompting.Build(fx.Tokenizer!, new CompletionRequest("\nQuestion: Where did the cat play with the ball?\nAnswer:") { Prefix = parts[0] });
        var alone = new Generator(new Transformer(fx.Model!)).Generate(
            [new GenerationRequest(prompt.Ids, parts.Count == 1 ? parts[0] : KvPrefix.Concat(parts)) { MaxTokens = 24, StopTokens = prompt.StopTokens }])[0];
        Assert.Equal(r.Tokens.PromptTokens, prompt.Ids.Length);
        Assert.Equal(fx.Tokenizer!.Decode(prompt.Ids.Concat(alone.Tokens).ToArray())[fx.Tokenizer.Decode(prompt.Ids).Length..], r.Answer);
        await fx.WaitIdle();
    }

    /// <summary>
    /// "moon" has no cartridge: a question that does not retrieve it is answered (only the retrieved documents' state is
    /// looked at), one that retrieves it with a trained document skips it with the reason, and naming both cartridges
    /// decodes over the two composed by reference with the Generator's answer over their concatenated copy.
    /// </summary>
    [Fact]
    public async Task Ask_checks_only_the_retrieved_documents_and_composes_several_cartridges()
    {
        fx.Require();
        var (_, r) = await ServerFixture.Collect(fx.Query.Ask(Q("Lily cat Tom red ball garden frog")));
        Assert.DoesNotContain(r.Chunks, ch => ch.DocumentId == "moon");
        Assert.NotEmpty(r.Answer);
        Assert.DoesNotContain(r.Skipped, x => x.StartsWith("moon"));

        var (_, both) = await ServerFixture.Collect(fx.Query.Ask(Q("the cat and the moon")));
        Assert.Contains(both.Chunks, ch => ch.DocumentId == "moon");
        Assert.Contains("moon: cartridge missing", both.Skipped);
        Assert.Contains(both.Documents, d => d.DocumentId == "cat");

        var named = Q("What did they see?", 30);
        named.DocumentIds.AddRange(["ship", "cat"]);
        var (_, two) = await ServerFixture.Collect(fx.Query.Ask(named));
        Assert.Equal(["ship", "cat"], two.Documents.Select(d => d.DocumentId));
        var parts = two.Documents.Select(d => fx.Server!.State.Store.Get(d.CartridgeId).Prefix).ToList();
        var prompt = Prompting.Build(fx.Tokenizer!, new CompletionRequest("\nQuestion: What did they see?\nAnswer:") { Prefix = parts[0] });
        var alone = new Generator(new Transformer(fx.Model!)).Generate(
            [new GenerationRequest(prompt.Ids, KvPrefix.Concat(parts)) { MaxTokens = 30, StopTokens = prompt.StopTokens }])[0];
        Assert.Equal(fx.Tokenizer!.Decode(prompt.Ids.Concat(alone.Tokens).ToArray())[fx.Tokenizer.Decode(prompt.Ids).Length..], two.Answer);
        Assert.Equal(2 * ServerFixture.CartridgeTokens, two.Tokens.CartridgeSlots);
        await fx.WaitIdle();
    }

    [Fact]
    public async Task Concurrent_questions_decode_together_and_answer_as_when_alone()
    {
        fx.Require();
        string[] questions = ["the cat and the red ball", "the big ship with white sails", "who waved at the sailors", "the frog in the garden",
                              "the ship horn", "Lily and Tom"];
        var alone = new List<string>();
        foreach (var q in questions) alone.Add((await ServerFixture.Collect(fx.Query.Ask(Q(q, 40)))).Result.Answer);
        var host = fx.Server!.State.Model(fx.ModelPath!, fx.TokenizerPath!);
        var before = host.Scheduler.Stats;
        var together = await Task.WhenAll(questions.Select(q => ServerFixture.Collect(fx.Query.Ask(Q(q, 40)))));
        Assert.Equal(alone, together.Select(t => t.Result.Answer));
        var after = host.Scheduler.Stats;
        // Fewer steps than rows: sequences shared steps.
        Assert.True(after.Rows - before.Rows > after.Steps - before.Steps, $"steps {after.Steps - before.Steps}, rows {after.Rows - before.Rows}");
        await fx.WaitIdle();
    }

    [Fact]
    public async Task AskRag_pastes_chunks_and_AskIcl_whole_documents()
    {
        fx.Require();
        var (ragText, rag) = await ServerFixture.Collect(fx.Query.AskRag(Q("the moon and the rocket")));
        Assert.Equal(rag.Answer, ragText);
        Assert.Equal("moon", rag.Documents[0].DocumentId);
        Assert.Equal(0, rag.Tokens.CartridgeSlots);
        Assert.True(rag.Tokens.PromptTokens > 20);
        Assert.All(rag.Documents, d => Assert.Equal("", d.CartridgeId));

        var icl = new AskRequest { Collection = ServerFixture.Collection, Question = "What did Sue wish?", MaxTokens = 16 };
        icl.DocumentIds.Add("moon");
        var (_, r) = await ServerFixture.Collect(fx.Query.AskIcl(icl));
        Assert.Equal("moon", Assert.Single(r.Documents).DocumentId);
        int docTokens = fx.Tokenizer!.Encode(ServerFixture.Docs[2].Text).Length;
        Assert.True(r.Tokens.PromptTokens > docTokens, $"prompt {r.Tokens.PromptTokens} tokens, document alone {docTokens}");
        Assert.Empty(r.Chunks); // named documents: no retrieval
    }

    [Fact]
    public async Task Bad_requests_get_proper_statuses_and_the_server_keeps_serving()
    {
        fx.Require();
        async Task<StatusCode> Code(AsyncServerStreamingCall<AskResponse> call) => (await Refused(() => ServerFixture.Collect(call))).StatusCode;
        Assert.Equal(StatusCode.InvalidArgument, await Code(fx.Query.Ask(Q("   "))));
        Assert.Equal(StatusCode.NotFound, await Code(fx.Query.Ask(new AskRequest { Collection = "nope", Question = "hi" })));
        Assert.Equal(StatusCode.InvalidArgument, await Code(fx.Query.Ask(new AskRequest { Question = "hi" })));
        Assert.Equal(StatusCode.InvalidArgument, await Code(fx.Query.Ask(Q("cat", -1))));
        var unknownDoc = Q("cat"); unknownDoc.DocumentIds.Add("dragon");
        Assert.Equal(StatusCode.NotFound, await Code(fx.Query.AskIcl(unknownDoc)));

        // Only untrained documents match: FAILED_PRECONDITION that says so.
        var e = await Refused(() => ServerFixture.Collect(fx.Query.Ask(Q("moon rocket night"))));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("has not finished", e.Status.Detail);
        Assert.Contains("moon (missing)", e.Status.Detail);

        // Training of an unknown collection or job -> NOT_FOUND (TrainingTests covers starting and cancelling).
        Assert.Equal(StatusCode.NotFound, (await Refused(async () => await fx.Training.StartTrainingAsync(new StartTrainingRequest { Collection = "nope" }))).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Refused(async () => await fx.Training.GetTrainingJobAsync(new GetTrainingJobRequest { Id = 999 }))).StatusCode);
        Assert.Equal(StatusCode.NotFound, (await Refused(async () => await fx.Training.CancelTrainingJobAsync(new CancelTrainingJobRequest { Id = 999 }))).StatusCode);

        // Invalid names and duplicates.
        Assert.Equal(StatusCode.InvalidArgument, (await Refused(async () => await fx.Collections.CreateCollectionAsync(new CreateCollectionRequest { Name = "bad name!" }))).StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, (await Refused(async () => await fx.Collections.CreateCollectionAsync(new CreateCollectionRequest { Name = ServerFixture.Collection }))).StatusCode);

        // Oversized message (the fixture's limit is 1 MiB): RESOURCE_EXHAUSTED, nothing added.
        using (var call = fx.Collections.AddDocuments())
        {
            var m = new AddDocumentsRequest { Collection = ServerFixture.Collection };
            m.Documents.Add(new DocumentUpload { Id = "huge", Text = new string('a', 2 << 20) });
            // The server refuses the message from its length prefix and ends the call without reading the rest, so the
            // client's write can wait for HTTP/2 flow-control credit that never comes (1 run in ~10 hung here when the
            // test awaited it). The answer does come: await that, and let disposing the call abort the write.
            var write = call.RequestStream.WriteAsync(m);
            var big = await Refused(async () => await call);
            Assert.Equal(StatusCode.ResourceExhausted, big.StatusCode);
            _ = write.ContinueWith(t => t.Exception, TaskScheduler.Default); // observed: it fails or never finishes, both fine
        }
        Assert.DoesNotContain(fx.Server!.State.Catalog.Documents(ServerFixture.Collection), d => d.DocumentId == "huge");

        // Malformed protobuf (a length that runs past the end). In a client stream our handler reads it: INVALID_ARGUMENT.
        // A unary request is parsed by Grpc.AspNetCore before any interceptor runs, and it answers UNKNOWN.
        byte[] malformed = [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F];
        var invoker = fx.Channel!.CreateCallInvoker();
        var rawStream = new Method<byte[], byte[]>(MethodType.ClientStreaming, "cas.v1.CollectionService", "AddDocuments",
            Marshallers.Create(b => b, b => b), Marshallers.Create(b => b, b => b));
        using (var call = invoker.AsyncClientStreamingCall(rawStream, null, new CallOptions()))
        {
            try { await Bounded("writing the malformed message", call.RequestStream.WriteAsync(malformed)); await Bounded("completing the malformed upload", call.RequestStream.CompleteAsync()); } catch (RpcException) { }
            var refused = await Refused(async () => await call);
            Assert.True(refused.StatusCode == StatusCode.InvalidArgument, $"a malformed streamed message got {refused.Status}, not InvalidArgument.");
        }
        var rawUnary = new Method<byte[], byte[]>(MethodType.Unary, "cas.v1.CollectionService", "GetCollection",
            Marshallers.Create(b => b, b => b), Marshallers.Create(b => b, b => b));
        Assert.Equal(StatusCode.Unknown, (await Refused(async () => await invoker.AsyncUnaryCall(rawUnary, null, new CallOptions(), malformed))).StatusCode);

        // Still serving, nothing pinned.
        var (_, ok) = await Bounded("the last ask", ServerFixture.Collect(fx.Query.Ask(Q("the cat", 4))));
        Assert.NotEmpty(ok.Documents);
        await fx.WaitIdle();
    }

    [Fact]
    public async Task A_client_that_cancels_mid_stream_or_runs_out_of_time_releases_its_cartridges()
    {
        fx.Require();
        // Cancel after the first piece of text.
        using (var cts = new CancellationTokenSource())
        {
            using var call = fx.Query.Ask(Q("the cat and the ship", 400), cancellationToken: cts.Token);
            Assert.True(await call.ResponseStream.MoveNext());
            Assert.Equal(AskResponse.KindOneofCase.Delta, call.ResponseStream.Current.KindCase);
            cts.Cancel();
            var e = await Refused(async () => { while (await call.ResponseStream.MoveNext()) { } });
            Assert.Equal(StatusCode.Cancelled, e.StatusCode);
        }
        await fx.WaitIdle();

        // A deadline that passes mid-decode.
        using (var call = fx.Query.Ask(Q("the cat and the ship", 400), deadline: DateTime.UtcNow.AddMilliseconds(150)))
        {
            var e = await Refused(async () => { while (await call.ResponseStream.MoveNext()) { } });
            Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
        }
        await fx.WaitIdle();
        var m = fx.Server!.State.Budget.Metrics();
        Assert.Equal(0, m.Pinned);
        Assert.True(m.PeakResidentBytes <= m.ResidentBudget);
        // And it still answers.
        var (_, ok) = await ServerFixture.Collect(fx.Query.Ask(Q("the ship", 4)));
        Assert.Contains(ok.Documents, d => d.DocumentId == "ship");
    }

    [Fact]
    public async Task Health_and_reflection_answer()
    {
        fx.Require();
        var health = await new Health.HealthClient(fx.Channel).CheckAsync(new HealthCheckRequest());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);
        using var call = new ServerReflection.ServerReflectionClient(fx.Channel).ServerReflectionInfo();
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext());
        var names = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToList();
        foreach (var s in new[] { "cas.v1.CollectionService", "cas.v1.TrainingService", "cas.v1.QueryService", "cas.v1.CartridgeService", "grpc.health.v1.Health" })
            Assert.Contains(s, names);
    }

    [Fact]
    public async Task Training_jobs_are_read_from_the_catalog()
    {
        fx.Require();
        var catalog = fx.Server!.State.Catalog;
        long id = catalog.CreateJob(ServerFixture.Collection, "cas", "{}", ["cat", "ship"], 10);
        catalog.UpdateJobDocument(id, "cat", Cas.Collections.JobState.Running, 4, loss: 1.5);
        var job = await fx.Training.GetTrainingJobAsync(new GetTrainingJobRequest { Id = id });
        Assert.Equal((V1.JobState.Running, 4L, 20L), (job.State, job.StepsDone, job.StepsTotal));
        Assert.Equal(1.5, job.Documents.First(d => d.DocumentId == "cat").Loss);
        var list = await fx.Training.ListTrainingJobsAsync(new ListTrainingJobsRequest { Collection = ServerFixture.Collection });
        Assert.Contains(list.Jobs, j => j.Id == id);

        using var watch = fx.Training.WatchTrainingJob(new GetTrainingJobRequest { Id = id });
        Assert.True(await watch.ResponseStream.MoveNext());
        Assert.Equal(V1.JobState.Running, watch.ResponseStream.Current.State);
        catalog.FinishJob(id, Cas.Collections.JobState.Failed, "test");
        var states = new List<V1.JobState>();
        while (await watch.ResponseStream.MoveNext()) states.Add(watch.ResponseStream.Current.State);
        Assert.Equal(V1.JobState.Failed, states.Last());
    }
}

/// <summary>The API-key option: calls without the key are UNAUTHENTICATED; health checks need none.</summary>
public sealed class ApiKeyTests
{
    [Fact]
    public async Task Calls_without_the_key_are_refused()
    {
        var dir = Directory.CreateTempSubdirectory("cas-service-key-").FullName;
        try
        {
            await using var server = await ServerFixture.StartScratch(dir, o => o with { ApiKey = "s3cret" });
            using var channel = GrpcChannel.ForAddress(server.Address);
            var client = new CollectionService.CollectionServiceClient(channel);
            var e = await Assert.ThrowsAsync<RpcException>(async () => await client.ListCollectionsAsync(new ListCollectionsRequest()));
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
            e = await Assert.ThrowsAsync<RpcException>(async () => await client.ListCollectionsAsync(new ListCollectionsRequest(), new Metadata { { "x-api-key", "wrong" } }));
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
            var ok = await client.ListCollectionsAsync(new ListCollectionsRequest(), new Metadata { { "x-api-key", "s3cret" } });
            Assert.Empty(ok.Collections);
            var health = await new Health.HealthClient(channel).CheckAsync(new HealthCheckRequest());
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);
        }
        finally { Directory.Delete(dir, true); }
    }
}

/// <summary>A resident budget smaller than one cartridge: RESOURCE_EXHAUSTED, nothing pinned, RAG still answers.</summary>
public sealed class BudgetTests
{
    [Fact]
    public async Task A_cartridge_larger_than_the_resident_budget_is_refused_and_nothing_leaks()
    {
        var dir = Directory.CreateTempSubdirectory("cas-service-budget-").FullName;
        try
        {
            await using var server = await ServerFixture.StartScratch(dir, o => o with { ResidentBytes = 1024, HostBytes = 1 << 20 });
            using var channel = GrpcChannel.ForAddress(server.Address);
            var collections = new CollectionService.CollectionServiceClient(channel);
            await collections.CreateCollectionAsync(new CreateCollectionRequest { Name = "small" });
            await ServerFixture.AddDocs(collections, "small", ServerFixture.Docs);
            var host = server.State.Model(server.State.Options.ModelPath!, server.State.Options.TokenizerPath!);
            var file = Path.Combine(dir, "cat.safetensors");
            ServerFixture.MakeCartridge(host.Model, host.Tokenizer, ServerFixture.Docs[0].Text, file);
            var info = await ServerFixture.Import(new CartridgeService.CartridgeServiceClient(channel), file, "small", "cat");
            Assert.True(info.ComputeBytes > 1024);

            var query = new QueryService.QueryServiceClient(channel);
            var request = new AskRequest { Collection = "small", Question = "the cat and the ball", MaxTokens = 4 };
            var e = await Assert.ThrowsAsync<RpcException>(() => ServerFixture.Collect(query.Ask(request)));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.Equal(0, server.State.Budget.Metrics().Pinned);
            Assert.Equal(0, server.State.Budget.Metrics().ResidentBytes);
            var (_, rag) = await ServerFixture.Collect(query.AskRag(request));
            Assert.Equal("cat", rag.Documents[0].DocumentId);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task Export_of_a_cartridge_larger_than_the_message_limit_comes_in_pieces_under_it()
    {
        var dir = Directory.CreateTempSubdirectory("cas-service-export-").FullName;
        try
        {
            const int limit = 64 << 10;
            await using var server = await ServerFixture.StartScratch(dir, o => o with { MaxMessageBytes = limit });
            using var channel = GrpcChannel.ForAddress(server.Address);
            var host = server.State.Model(server.State.Options.ModelPath!, server.State.Options.TokenizerPath!);
            // p = 200 on stories260K: 5 layers × 2 × 4 KV heads × 200 × 8 dims × 2 bytes (bf16) ≈ 128 KB, twice the limit.
            var text = string.Concat(Enumerable.Repeat(ServerFixture.Docs[0].Text + " ", 8));
            var prefix = Cas.Engine.Cartridges.CartridgeInit.FirstK(host.Model, Prompting.Encode(host.Tokenizer, text, addStart: true), 200);
            var file = Path.Combine(dir, "long.safetensors");
            Cas.Engine.Cartridges.Cartridge.ForModel(host.Model, prefix, Cas.Engine.Cartridges.CartridgeInitKind.FirstK).Save(file);
            var cartridges = new CartridgeService.CartridgeServiceClient(channel);
            using (var import = cartridges.ImportCartridge(deadline: DateTime.UtcNow.AddSeconds(60)))
            {
                var all = await File.ReadAllBytesAsync(file);
                for (int at = 0; at < all.Length; at += 16 << 10)
                {
                    var m = new ImportCartridgeRequest { Data = ByteString.CopyFrom(all, at, Math.Min(16 << 10, all.Length - at)) };
                    if (at == 0) m.Id = "big/one";
                    await import.RequestStream.WriteAsync(m);
                }
                await import.RequestStream.CompleteAsync();
                await import;
            }
            var stored = server.State.Store.ReadFile("big/one").Bytes;
            Assert.True(stored.Length > limit, $"the stored cartridge is {stored.Length} bytes; the test needs more than {limit}");

            using var export = cartridges.ExportCartridge(new GetCartridgeRequest { Id = "big/one" }, deadline: DateTime.UtcNow.AddSeconds(60));
            var bytes = new List<byte>();
            int pieces = 0;
            await foreach (var m in export.ResponseStream.ReadAllAsync()) { pieces++; Assert.True(m.CalculateSize() <= limit); bytes.AddRange(m.Data); }
            Assert.True(pieces > 2, $"{pieces} pieces");
            Assert.Equal(stored, bytes.ToArray());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task A_question_whose_own_KV_cache_exceeds_the_sequence_budget_is_refused_and_the_server_keeps_serving()
    {
        var dir = Directory.CreateTempSubdirectory("cas-service-kv-").FullName;
        try
        {
            // stories260K: 5 layers × 4 KV heads × 8 dims × 2 (K, V) × 4 bytes = 1,280 bytes a position, so 128 KiB holds
            // 102 positions: a short document pasted with 8 answer tokens fits, any question with 200 answer tokens does not.
            await using var server = await ServerFixture.StartScratch(dir, o => o with { SequenceKvBytes = 128 << 10 });
            using var channel = GrpcChannel.ForAddress(server.Address);
            var collections = new CollectionService.CollectionServiceClient(channel);
            await collections.CreateCollectionAsync(new CreateCollectionRequest { Name = "kv" }, deadline: DateTime.UtcNow.AddSeconds(60));
            await ServerFixture.AddDocs(collections, "kv", ServerFixture.Docs).WaitAsync(TimeSpan.FromSeconds(60));
            var query = new QueryService.QueryServiceClient(channel);
            var big = new AskRequest { Collection = "kv", Question = "moon", MaxTokens = 200, MaxCartridges = 1 };
            var e = await Assert.ThrowsAsync<RpcException>(() => ServerFixture.Collect(query.AskIcl(big, deadline: DateTime.UtcNow.AddSeconds(60))));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.Contains("decode KV budget", e.Status.Detail);
            var (_, ok) = await ServerFixture.Collect(query.AskRag(new AskRequest { Collection = "kv", Question = "moon", MaxTokens = 8, RetrieveChunks = 1 },
                deadline: DateTime.UtcNow.AddSeconds(60)));
            Assert.True(ok.Tokens.PromptTokens + ok.Tokens.CompletionTokens <= 102);
        }
        finally { Directory.Delete(dir, true); }
    }
}
