using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Store;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.Logging;

namespace Cas.Service;

/// <summary>What was asked for (a collection, a document, a cartridge, a job) does not exist.</summary>
public sealed class NotFoundException(string message) : CasException(message);

/// <summary>The request is valid but the system is not in the state it needs (e.g. training has not finished).</summary>
public sealed class FailedPreconditionException(string message) : CasException(message);

/// <summary>The feature is not in this build; the message says what to use instead.</summary>
public sealed class NotImplementedFeatureException(string message) : CasException(message);

/// <summary>
/// The one place where exceptions become gRPC statuses, and where the API key is checked. Every service method runs
/// inside it, so a method only throws the library's typed exceptions and never builds a status itself.
/// </summary>
public sealed class ExceptionInterceptor(CasServerOptions options, ILogger<ExceptionInterceptor> log) : Interceptor
{
    /// <summary>The request header that carries the API key when <see cref="CasServerOptions.ApiKey"/> is set.</summary>
    public const string ApiKeyHeader = "x-api-key";

    public static Status ToStatus(Exception e, ServerCallContext? context) => Unwrap(e) switch
    {
        RpcException r => r.Status,
        OperationCanceledException when context != null && context.Deadline < DateTime.UtcNow =>
            new Status(StatusCode.DeadlineExceeded, "the deadline passed before the work finished; it was stopped."),
        OperationCanceledException => new Status(StatusCode.Cancelled, "the call was cancelled; its work was stopped."),
        NotFoundException or CartridgeNotFoundException => new Status(StatusCode.NotFound, e.Message),
        FailedPreconditionException => new Status(StatusCode.FailedPrecondition, e.Message),
        NotImplementedFeatureException => new Status(StatusCode.Unimplemented, e.Message),
        BudgetExceededException or StoreFullException => new Status(StatusCode.ResourceExhausted, e.Message),
        CartridgeCorruptException => new Status(StatusCode.DataLoss, e.Message),
        StoreLockedException => new Status(StatusCode.Unavailable, e.Message),
        InvalidRequestException or CartridgeException => new Status(StatusCode.InvalidArgument, e.Message),
        Google.Protobuf.InvalidProtocolBufferException => new Status(StatusCode.InvalidArgument, $"malformed request message: {e.Message}"),
        ModelFormatException => new Status(StatusCode.FailedPrecondition, e.Message),
        _ => new Status(StatusCode.Internal, $"internal error ({e.GetType().Name}); the server log has the details."),
    };

    /// <summary>A request message that fails to parse can reach the handler wrapped by the framework's stream reader;
    /// the parse error inside decides the status.</summary>
    static Exception Unwrap(Exception e)
    {
        for (var inner = e.InnerException; inner != null; inner = inner.InnerException)
            if (inner is Google.Protobuf.InvalidProtocolBufferException) return inner;
        return e;
    }

    RpcException Map(Exception e, ServerCallContext context)
    {
        if (e is RpcException r) return r;
        var status = ToStatus(e, context);
        if (status.StatusCode == StatusCode.Internal) log.LogError(e, "{Method} failed", context.Method);
        else log.LogInformation("{Method} -> {Status}: {Detail}", context.Method, status.StatusCode, status.Detail);
        return new RpcException(status);
    }

    void CheckKey(ServerCallContext context)
    {
        if (options.ApiKey is not { Length: > 0 } key) return;
        if (context.Method.StartsWith("/grpc.health.v1.Health/", StringComparison.Ordinal)) return; // probes carry no key
        var given = context.RequestHeaders.GetValue(ApiKeyHeader);
        if (given == null || !System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(
                System.Text.Encoding.UTF8.GetBytes(given), System.Text.Encoding.UTF8.GetBytes(key)))
            throw new RpcException(new Status(StatusCode.Unauthenticated, $"missing or wrong API key: send it in the '{ApiKeyHeader}' header."));
    }

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context,
        UnaryServerMethod<TRequest, TResponse> continuation)
    {
        CheckKey(context);
        try { return await continuation(request, context); }
        catch (Exception e) { throw Map(e, context); }
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        CheckKey(context);
        try { return await continuation(requestStream, context); }
        catch (Exception e) { throw Map(e, context); }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        CheckKey(context);
        try { await continuation(request, responseStream, context); }
        catch (Exception e) { throw Map(e, context); }
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
        IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        CheckKey(context);
        try { await continuation(requestStream, responseStream, context); }
        catch (Exception e) { throw Map(e, context); }
    }
}
