using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Cas.Service;

/// <summary>
/// The gRPC server: Kestrel with HTTP/2 (cleartext on 127.0.0.1 by default, TLS with a certificate), the four cas.v1
/// services, grpc.health.v1.Health and server reflection, one interceptor for errors and the API key, and maximum
/// message sizes. <c>await using var server = await CasServer.StartAsync(options);</c> then talk to
/// <see cref="Address"/>; disposing stops it (training jobs are cancelled and waited for, in-flight decodes are cancelled, their
/// cartridges released).
/// </summary>
public sealed class CasServer : IAsyncDisposable
{
    readonly WebApplication _app;

    CasServer(WebApplication app, ServiceState state, Uri address)
    {
        _app = app; State = state; Address = address;
    }

    /// <summary>Where the server listens (the real port when <see cref="CasServerOptions.Port"/> was 0).</summary>
    public Uri Address { get; }

    /// <summary>The catalog, store, budget manager and models the services share.</summary>
    public ServiceState State { get; }

    public static async Task<CasServer> StartAsync(CasServerOptions options, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!IPAddress.TryParse(options.Host == "localhost" ? "127.0.0.1" : options.Host, out var ip))
            throw new Cas.Engine.InvalidRequestException($"--host must be an IP address (e.g. 127.0.0.1 or 0.0.0.0), got '{options.Host}'.");
        if (options.Port is < 0 or > 65535) throw new Cas.Engine.InvalidRequestException($"--port must be 0–65535, got {options.Port}.");
        var state = new ServiceState(options);
        try
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
            // Logs go to stderr: stdout carries only results (`cas serve` prints its address there).
            builder.Services.Configure<Microsoft.Extensions.Logging.Console.ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
            builder.Logging.SetMinimumLevel(options.LogLevel);
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.Listen(ip, options.Port, l =>
                {
                    l.Protocols = HttpProtocols.Http2;
                    if (options.TlsCertificatePath is { } cert) l.UseHttps(cert, options.TlsCertificatePassword);
                });
            });
            builder.Services.AddSingleton(options);
            builder.Services.AddSingleton(state);
            builder.Services.AddSingleton<QueryEngine>();
            builder.Services.AddSingleton<ExceptionInterceptor>();
            builder.Services.AddGrpc(o =>
            {
                o.Interceptors.Add<ExceptionInterceptor>();
                o.MaxReceiveMessageSize = options.MaxMessageBytes;
                o.MaxSendMessageSize = options.MaxMessageBytes;
                o.EnableDetailedErrors = false;
            });
            builder.Services.AddGrpcHealthChecks().AddCheck("store", () => Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy());
            builder.Services.AddGrpcReflection();
            var app = builder.Build();
            app.MapGrpcService<CollectionServiceImpl>();
            app.MapGrpcService<CartridgeServiceImpl>();
            app.MapGrpcService<TrainingServiceImpl>();
            app.MapGrpcService<QueryServiceImpl>();
            app.MapGrpcHealthChecksService();
            app.MapGrpcReflectionService();
            await app.StartAsync(cancel);
            var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            var uri = new Uri(bound.Replace("[::]", "127.0.0.1").Replace("0.0.0.0", "127.0.0.1"));
            app.Logger.LogInformation("cas serving on {Address} (data {DataDir}, model {Model})", uri, Path.GetFullPath(options.DataDir), options.ModelPath ?? "per collection");
            return new CasServer(app, state, uri);
        }
        catch
        {
            state.Dispose();
            throw;
        }
    }

    /// <summary>Completes when the host is asked to stop (Ctrl+C / SIGTERM in `cas serve`).</summary>
    public Task WaitForShutdownAsync(CancellationToken cancel = default) => _app.WaitForShutdownAsync(cancel);

    public async ValueTask DisposeAsync()
    {
        using var grace = new CancellationTokenSource(TimeSpan.FromSeconds(5)); // in-flight calls get this long, then are cancelled
        try
        {
            // Training jobs first: each saves its snapshot and records itself cancelled (resumable), so watchers see the end.
            await Task.Run(State.Training.StopAll);
            await _app.StopAsync(grace.Token);
        }
        finally
        {
            await _app.DisposeAsync();
            State.Dispose();
        }
    }
}
