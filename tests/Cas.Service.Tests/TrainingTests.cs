using Cas.Jobs;
using Cas.Service.V1;
using Cas.Training;
using Grpc.Core;
using Grpc.Net.Client;

namespace Cas.Service.Tests;

/// <summary>
/// StartTraining / CancelTrainingJob against a server of its own (stories260K, a 2-document collection, a tiny recipe:
/// 2 resident, 4 probes per chunk, a few steps), so the shared fixture's cartridges stay as they are.
/// </summary>
public sealed class TrainingTests
{
    static readonly (string Id, string Text)[] TwoDocs = [ServerFixture.Docs[0], ServerFixture.Docs[1]];

    /// <summary>The server's recipe: small enough to train both documents in seconds.</summary>
    static readonly CasTrainingOptions Tiny = new()
    {
        Resident = 2, RotateEvery = 2, PIso = 0.5, MaxDistractors = 1, BatchSize = 4, Steps = 3,
        Probes = new DocumentProbeOptions { ExamplesPerChunk = 4, ContinuationTokens = 16, ChunkTokens = 0 },
    };

    sealed class Scratch : IAsyncDisposable
    {
        public required string Dir;
        public required CasServer Server;
        public required GrpcChannel Channel;
        public TrainingService.TrainingServiceClient Training => new(Channel);
        public async ValueTask DisposeAsync()
        {
            Channel.Dispose();
            await Server.DisposeAsync();
            try { Directory.Delete(Dir, true); } catch (IOException) { }
        }
    }

    static async Task<Scratch> Open(string name)
    {
        var dir = Directory.CreateTempSubdirectory("cas-service-train-").FullName;
        var server = await ServerFixture.StartScratch(dir, o => o with { ResidentBytes = 1 << 20, HostBytes = 1 << 20, Training = Tiny });
        var channel = GrpcChannel.ForAddress(server.Address);
        var collections = new CollectionService.CollectionServiceClient(channel);
        await collections.CreateCollectionAsync(new CreateCollectionRequest { Name = name, ChunkTokens = 16 });
        await ServerFixture.AddDocs(collections, name, TwoDocs);
        return new Scratch { Dir = dir, Server = server, Channel = channel };
    }

    static async Task<TrainingJob> WaitFor(TrainingService.TrainingServiceClient client, long id, Func<TrainingJob, bool> until)
    {
        for (int i = 0; i < 2400; i++)
        {
            var job = await client.GetTrainingJobAsync(new GetTrainingJobRequest { Id = id });
            if (until(job)) return job;
            await Task.Delay(50);
        }
        throw new TimeoutException($"job {id} did not get there in 120 s");
    }

    [Fact]
    public async Task A_started_job_trains_every_document_and_Ask_answers_with_the_new_cartridges()
    {
        await using var s = await Open("two");
        var job = await s.Training.StartTrainingAsync(new StartTrainingRequest { Collection = "two", StepsPerDocument = 3, LearningRate = 0.02, Seed = 7 });
        Assert.True(job.Id > 0);
        Assert.Equal("two", job.Collection);
        Assert.Contains("\"Seed\":7", job.SettingsJson);
        Assert.Contains("\"Steps\":3", job.SettingsJson);
        Assert.Contains("\"LearningRate\":0.02", job.SettingsJson);

        // Watch to the end: the last state is DONE and every document has its cartridge version.
        using var watch = s.Training.WatchTrainingJob(new GetTrainingJobRequest { Id = job.Id }, deadline: DateTime.UtcNow.AddSeconds(240)); // a hang fails the test (generous: under load 60 this training took 78 s)
        TrainingJob? last = null;
        while (await watch.ResponseStream.MoveNext()) last = watch.ResponseStream.Current;
        Assert.NotNull(last);
        Assert.Equal(V1.JobState.Done, last!.State);
        Assert.Equal(new[] { "cat", "ship" }, last.Documents.Select(d => d.DocumentId).Order());
        Assert.All(last.Documents, d => { Assert.Equal(V1.JobState.Done, d.State); Assert.True(d.CartridgeVersion > 0); });
        await s.Server.State.Training.WhenStopped(job.Id).WaitAsync(TimeSpan.FromSeconds(30)); // the run leaves just after writing DONE
        Assert.False(s.Server.State.Training.IsRunning(job.Id));

        var state = s.Server.State;
        Assert.All(state.Catalog.Status("two", state.Store), st => Assert.Equal(Cas.Collections.CartridgeState.Fresh, st.State));

        // Nothing left to train: FAILED_PRECONDITION that says so, no new job.
        var again = await Assert.ThrowsAsync<RpcException>(async () => await s.Training.StartTrainingAsync(new StartTrainingRequest { Collection = "two" }));
        Assert.Equal(StatusCode.FailedPrecondition, again.StatusCode);
        Assert.Contains("fresh", again.Status.Detail);
        Assert.Single(state.Catalog.Jobs("two"));

        // Ask decodes with the trained cartridge (the version the job wrote).
        var query = new QueryService.QueryServiceClient(s.Channel);
        var (_, result) = await ServerFixture.Collect(query.Ask(new AskRequest { Collection = "two", Question = "the cat and the red ball", MaxTokens = 8 }));
        var cat = result.Documents.First(d => d.DocumentId == "cat");
        Assert.Equal(last.Documents.First(d => d.DocumentId == "cat").CartridgeVersion, cat.CartridgeVersion);
        Assert.Equal(state.Catalog.Documents("two").First(d => d.DocumentId == "cat").CartridgeId, cat.CartridgeId);
    }

    [Fact]
    public async Task A_cancelled_job_stops_is_reported_cancelled_and_resumes_on_the_next_start()
    {
        await using var s = await Open("long");
        var request = new StartTrainingRequest { Collection = "long", StepsPerDocument = 1_000_000 };
        var job = await s.Training.StartTrainingAsync(request);
        await WaitFor(s.Training, job.Id, j => j.StepsDone > 0);

        // One job per collection at a time.
        var busy = await Assert.ThrowsAsync<RpcException>(async () => await s.Training.StartTrainingAsync(request));
        Assert.Equal(StatusCode.FailedPrecondition, busy.StatusCode);
        Assert.Contains($"job {job.Id}", busy.Status.Detail);

        var cancelled = await s.Training.CancelTrainingJobAsync(new CancelTrainingJobRequest { Id = job.Id }, deadline: DateTime.UtcNow.AddSeconds(60));
        Assert.Equal(V1.JobState.Cancelled, cancelled.State);
        Assert.False(s.Server.State.Training.IsRunning(job.Id));
        var got = await s.Training.GetTrainingJobAsync(new GetTrainingJobRequest { Id = job.Id });
        Assert.Equal(V1.JobState.Cancelled, got.State);
        long stepsAtCancel = got.StepsDone;
        await Task.Delay(300);
        Assert.Equal(stepsAtCancel, (await s.Training.GetTrainingJobAsync(new GetTrainingJobRequest { Id = job.Id })).StepsDone); // it stopped

        // Cancelling again is a no-op; the same settings resume the same job.
        Assert.Equal(V1.JobState.Cancelled, (await s.Training.CancelTrainingJobAsync(new CancelTrainingJobRequest { Id = job.Id })).State);
        var resumed = await s.Training.StartTrainingAsync(request);
        Assert.Equal(job.Id, resumed.Id);
        Assert.True(s.Server.State.Training.IsRunning(job.Id));
        // Shutdown (CasServer.DisposeAsync runs this first) cancels the running job and waits for it.
        await Task.Run(s.Server.State.Training.StopAll).WaitAsync(TimeSpan.FromSeconds(60)); // TimeoutException: shutdown did not stop the job
        Assert.False(s.Server.State.Training.IsRunning(job.Id));
        Assert.Equal(Cas.Collections.JobState.Cancelled, s.Server.State.Catalog.FindJob(job.Id)!.State);
    }

    [Fact]
    public async Task Bad_training_requests_get_proper_statuses()
    {
        await using var s = await Open("bad");
        async Task<StatusCode> Code(StartTrainingRequest r) =>
            (await Assert.ThrowsAsync<RpcException>(async () => await s.Training.StartTrainingAsync(r))).StatusCode;
        Assert.Equal(StatusCode.NotFound, await Code(new StartTrainingRequest { Collection = "nope" }));
        Assert.Equal(StatusCode.InvalidArgument, await Code(new StartTrainingRequest()));
        Assert.Equal(StatusCode.InvalidArgument, await Code(new StartTrainingRequest { Collection = "bad", StepsPerDocument = -1 }));
        Assert.Equal(StatusCode.InvalidArgument, await Code(new StartTrainingRequest { Collection = "bad", StepsPerDocument = (long)int.MaxValue + 1 }));
        Assert.Equal(StatusCode.InvalidArgument, await Code(new StartTrainingRequest { Collection = "bad", LearningRate = -0.1 }));
        Assert.Equal(StatusCode.InvalidArgument, await Code(new StartTrainingRequest { Collection = "bad", LearningRate = double.NaN }));
        Assert.Equal(StatusCode.InvalidArgument, await Code(new StartTrainingRequest { Collection = "bad", CartridgeTokens = -4 }));
        Assert.Equal(StatusCode.InvalidArgument, await Code(new StartTrainingRequest { Collection = "bad", CartridgeTokens = 1 }));
        var pick = new StartTrainingRequest { Collection = "bad" }; pick.DocumentIds.Add("cat");
        Assert.Equal(StatusCode.Unimplemented, await Code(pick));
        Assert.Equal(StatusCode.Unimplemented, await Code(new StartTrainingRequest { Collection = "bad", RetrainFresh = true }));
        Assert.Empty(s.Server.State.Catalog.Jobs("bad")); // nothing was started
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(async () =>
            await s.Training.CancelTrainingJobAsync(new CancelTrainingJobRequest { Id = 999 }))).StatusCode);
    }

    [Fact]
    public void Request_fields_map_onto_the_recipe()
    {
        var r = new StartTrainingRequest { Collection = "c", CartridgeTokens = 24, StepsPerDocument = 5, LearningRate = 0.5, Seed = 9 };
        var o = TrainingServiceImpl.TrainingOptions(r, Tiny with { Steps = null, Epochs = 2 });
        Assert.Equal((24, 5, 0.5f, 9UL, (double?)null), (o.MinCartridgeTokens, o.Steps!.Value, o.LearningRate, o.Seed, o.Epochs));
        Assert.Equal(24, o.CartridgeTokensFor(10_000)); // p fixed, whatever the document's length
        var d = TrainingServiceImpl.TrainingOptions(new StartTrainingRequest { Collection = "c" }, Tiny);
        Assert.Equal(Tiny, d); // zeros keep the recipe
    }
}
