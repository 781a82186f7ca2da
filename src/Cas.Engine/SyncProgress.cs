namespace Cas.Engine;

/// <summary>
/// An <see cref="IProgress{T}"/> that calls its handler at once, on the reporting thread and in order
/// (<see cref="Progress{T}"/> posts each report to a synchronization context or the thread pool). The one such class:
/// commands, jobs, the service and tests report progress through it.
/// </summary>
public sealed class SyncProgress<T>(Action<T> handler) : IProgress<T>
{
    public void Report(T value) => handler(value);
}
