using Cas.Service;
using Cas.Service.Tests;

namespace Cas.Chat.Tests;

/// <summary>
/// The service tests' <see cref="ServerFixture"/> (a server on 127.0.0.1 with stories260K and the collection "stories":
/// "cat" and "ship" with first-k cartridges, "moon" without), shared by every test here, with bounded start and
/// teardown: a server that does not stop within <see cref="Teardown"/> fails the run instead of hanging it.
/// </summary>
public sealed class ChatFixture : IAsyncLifetime
{
    public static readonly TimeSpan Startup = TimeSpan.FromSeconds(120), Teardown = TimeSpan.FromSeconds(30);

    public ServerFixture Inner { get; } = new();

    public async ValueTask InitializeAsync() => await Inner.InitializeAsync().AsTask().WaitAsync(Startup);

    public QueryEngine Engine => new(Inner.Server!.State);

    public void Require() => Inner.Require();

    public async ValueTask DisposeAsync() => await DisposeBounded(Inner.DisposeAsync(), "the chat tests' server");

    /// <summary>Awaits a disposal for at most <see cref="Teardown"/>; a timeout is an error naming what hung.</summary>
    public static async Task DisposeBounded(ValueTask dispose, string what)
    {
        var task = dispose.AsTask();
        if (await Task.WhenAny(task, Task.Delay(Teardown)) != task)
            throw new TimeoutException($"disposing {what} did not finish within {Teardown.TotalSeconds:F0} s (the server's StopAsync/Dispose hung).");
        await task;
    }
}

[CollectionDefinition(Name)]
public sealed class ChatCollection : ICollectionFixture<ChatFixture>
{
    public const string Name = "chat";
}
