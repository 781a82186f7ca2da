using Cas.Engine;

namespace Cas.Store;

/// <summary>Base of the store's deliberate errors; messages say what happened and what to do.</summary>
public class StoreException : CasException
{
    public StoreException(string message) : base(message) { }
    public StoreException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>No cartridge with that id (or version) is committed.</summary>
public sealed class CartridgeNotFoundException(string message) : StoreException(message);

/// <summary>
/// A chunk failed its checksum (or is missing) when read: the cartridge version is marked bad and is not served
/// again until it is written anew; every other cartridge keeps serving.
/// </summary>
public sealed class CartridgeCorruptException(string id, long version, string message) : StoreException(message)
{
    public string Id { get; } = id;
    public long Version { get; } = version;
}

/// <summary>The disk (or the configured capacity) cannot take the write; nothing was committed.</summary>
public sealed class StoreFullException(string message, Exception? inner = null) : StoreException(message, inner ?? new IOException(message));

/// <summary>Another process holds the store (FASTER's log is single-process).</summary>
public sealed class StoreLockedException(string message) : StoreException(message);

/// <summary>The resident budget cannot hold the request (larger than the budget, or pinned entries leave no room in time).</summary>
public sealed class BudgetExceededException(string message) : StoreException(message);
