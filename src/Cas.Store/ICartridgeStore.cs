using Cas.Engine;
using Cas.Engine.Cartridges;

namespace Cas.Store;

/// <summary>How a cartridge's K/V are kept on disk; reads always return the fp32 compute layout.</summary>
public enum StoredDType { BF16, F32 }

/// <summary>
/// One committed cartridge version, as listed by the manifest. <see cref="Labels"/> are the caller's key=value tags
/// (collection, document, source path, content hash, ...); <see cref="Bad"/> is set once a read found a damaged chunk.
/// </summary>
public sealed record StoredCartridgeInfo(
    string Id,
    long Version,
    string ModelFingerprint,
    int Length,
    int Layers,
    int KvHeads,
    int HeadDim,
    StoredDType DType,
    long Bytes,
    int Chunks,
    DateTime CommittedUtc,
    IReadOnlyDictionary<string, string> Labels,
    string? Bad)
{
    /// <summary>Bytes of the fp32 K/V once loaded (what the resident tier holds).</summary>
    public long ComputeBytes => 2L * Layers * KvHeads * Length * HeadDim * sizeof(float);
}

/// <summary>A cartridge read back from the store: its manifest row, its K/V in compute layout, and its cas.* metadata.</summary>
public sealed record StoredCartridge(StoredCartridgeInfo Info, KvPrefix Prefix, IReadOnlyDictionary<string, string> Metadata);

/// <summary>A cartridge version's stored bytes (a cartridge file) with its manifest row.</summary>
public sealed record StoredFile(StoredCartridgeInfo Info, byte[] Bytes);

/// <summary>Outcome of <see cref="ICartridgeStore.Verify"/>: every committed cartridge read and checked.</summary>
public sealed record VerifyReport(int Checked, IReadOnlyList<(string Id, long Version, string Problem)> Bad);

/// <summary>Outcome of <see cref="ICartridgeStore.Compact"/>.</summary>
public sealed record CompactReport(long LogBytesBefore, long LogBytesAfter, int GarbageVersionsCollected);

/// <summary>
/// The cartridge store: whole cartridge versions by id. Training and serving use only this interface, so a
/// networked store (Garnet, for a cluster) can replace the local FASTER one without touching them.
/// Every method is thread-safe. A version is visible to readers only once wholly durable (see README.md).
/// </summary>
public interface ICartridgeStore : IDisposable
{
    /// <summary>
    /// Stores <paramref name="cartridge"/> as the next version of <paramref name="id"/> and returns its manifest row.
    /// Atomic: on any failure (disk full, crash) nothing of it is visible; the previous version stays current.
    /// </summary>
    StoredCartridgeInfo Put(string id, Cartridge cartridge, IReadOnlyDictionary<string, string>? labels = null,
        StoredDType dtype = StoredDType.BF16, CancellationToken cancellation = default);

    /// <summary>The current version's manifest row, or null.</summary>
    StoredCartridgeInfo? Find(string id);

    /// <summary>Current versions, ordered by id; <paramref name="idPrefix"/> filters (e.g. "collection/").</summary>
    IReadOnlyList<StoredCartridgeInfo> List(string? idPrefix = null);

    /// <summary>Reads, verifies (every chunk's checksum) and decodes the current version to fp32.</summary>
    StoredCartridge Get(string id, CancellationToken cancellation = default);

    /// <summary>
    /// The current version's stored bytes, verified: a complete cartridge file (safetensors, BF16 or F32), ready to
    /// export or to keep in a host-memory tier; <see cref="CartridgeCodec.Decode"/> turns it into the compute layout.
    /// </summary>
    StoredFile ReadFile(string id, CancellationToken cancellation = default);

    /// <summary>Removes the cartridge (all versions); space returns at the next <see cref="Compact"/>. False if absent.</summary>
    bool Delete(string id);

    /// <summary>Reads every committed cartridge and checks every chunk; damaged ones are marked bad.</summary>
    VerifyReport Verify(CancellationToken cancellation = default);

    /// <summary>Drops deleted and superseded chunks from the log and returns the space to the file system.</summary>
    CompactReport Compact();
}
