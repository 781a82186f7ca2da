using Cas.Collections;
using Cas.Engine;
using Cas.Jobs;
using Microsoft.Extensions.Logging;

namespace Cas.Service;

/// <summary>
/// The CAS training jobs this process runs: at most one per collection, each on a background task with its own
/// cancellation. <see cref="CasTrainer"/> writes the job rows (progress, done, failed, cancelled and resumable); this
/// class only starts, cancels and waits. Owned by <see cref="ServiceState"/>; disposing it cancels every run and waits.
/// </summary>
public sealed class TrainingRuns(ServiceState state)
{
    sealed class Run(string collection)
    {
        public readonly string Collection = collection;
        public readonly CancellationTokenSource Cancel = new();
        public long? JobId;
        public Task Task = Task.CompletedTask;
    }

    readonly Dictionary<string, Run> _runs = new(StringComparer.Ordinal);
    readonly object _gate = new();
    bool _stopping;

    /// <summary>Logs a run that failed after it started (its job row already says why).</summary>
    public ILogger? Log { get; set; }

    /// <summary>
    /// Starts training <paramref name="collection"/> and returns the job id once <see cref="CasTrainer"/> has recorded
    /// the job (planned or resumed). Refusals before that (budget, bad settings, nothing to train) are thrown here.
    /// </summary>
    public async Task<long> StartAsync(CollectionInfo collection, CasTrainingOptions options, CancellationToken cancel)
    {
        var host = state.ModelOf(collection);
        await LetFinishedRunEnd(collection.Name, cancel);
        var run = new Run(collection.Name);
        lock (_gate)
        {
            if (_stopping) throw new FailedPreconditionException("the server is shutting down; start the job again after it restarts.");
            if (_runs.TryGetValue(collection.Name, out var other))
                throw new FailedPreconditionException($"a training job is already running for collection '{collection.Name}'" +
                    (other.JobId is long id ? $" (job {id}); cancel it with CancelTrainingJob or wait for it to end." : "; wait for it to end."));
            _runs[collection.Name] = run;
        }
        var started = new TaskCompletionSource<long?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var progress = new SyncProgress<CasJobEvent>(e =>
        {
            if (e is CasJobStarted s) { run.JobId = s.JobId; started.TrySetResult(s.JobId); }
        });
        run.Task = Task.Run(() =>
        {
            try
            {
                var trainer = new CasTrainer(host.Model, host.Tokenizer, state.Catalog, state.Store, state.Budget, state.Options.DataDir);
                var result = trainer.Run(collection.Name, options, progress, run.Cancel.Token);
                started.TrySetResult(result.JobId);
            }
            catch (Exception e)
            {
                if (!started.TrySetException(e) && e is not OperationCanceledException)
                    Log?.LogError(e, "training job {Job} of collection {Collection} failed", run.JobId, collection.Name);
            }
            finally
            {
                lock (_gate) _runs.Remove(collection.Name);
                run.Cancel.Dispose();
            }
        });
        long? job = await started.Task.WaitAsync(cancel);
        return job ?? throw new FailedPreconditionException(
            $"every cartridge of collection '{collection.Name}' is fresh; nothing to train (add or change documents, or delete a cartridge to retrain it).");
    }

    /// <summary>
    /// The trainer writes a job's final state (done, failed, cancelled) a moment before its run leaves this registry;
    /// a client that saw the final state and starts again at once must not be told a job is still running.
    /// </summary>
    async Task LetFinishedRunEnd(string collection, CancellationToken cancel)
    {
        Run? other;
        lock (_gate) _runs.TryGetValue(collection, out other);
        if (other?.JobId is not long id || state.Catalog.FindJob(id)?.State is not (JobState.Done or JobState.Failed or JobState.Cancelled)) return;
        try { await other.Task.WaitAsync(TimeSpan.FromSeconds(30), cancel); }
        catch (TimeoutException) { /* then it is still running: the caller is refused below */ }
    }

    /// <summary>Whether job <paramref name="jobId"/> is running in this process (its final state may already be recorded).</summary>
    public bool IsRunning(long jobId)
    {
        lock (_gate) return _runs.Values.Any(r => r.JobId == jobId);
    }

    /// <summary>Completes when job <paramref name="jobId"/> no longer runs in this process.</summary>
    public Task WhenStopped(long jobId)
    {
        lock (_gate) return _runs.Values.FirstOrDefault(r => r.JobId == jobId)?.Task ?? Task.CompletedTask;
    }

    /// <summary>Cancels job <paramref name="jobId"/> and waits until it has stopped (its snapshot saved); false when it is not running here.</summary>
    public async Task<bool> CancelAsync(long jobId, CancellationToken cancel)
    {
        Run? run;
        lock (_gate) run = _runs.Values.FirstOrDefault(r => r.JobId == jobId);
        if (run == null) return false;
        try { run.Cancel.Cancel(); } catch (ObjectDisposedException) { /* it ended meanwhile */ }
        await run.Task.WaitAsync(cancel);
        return true;
    }

    /// <summary>Cancels every run and waits for them to stop; no run starts afterwards.</summary>
    public void StopAll()
    {
        List<Run> runs;
        lock (_gate) { _stopping = true; runs = [.. _runs.Values]; }
        foreach (var r in runs) try { r.Cancel.Cancel(); } catch (ObjectDisposedException) { }
        foreach (var r in runs) r.Task.Wait(); // Run's own handler catches everything
    }
}
