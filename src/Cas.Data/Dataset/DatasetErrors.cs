using Cas.Engine;

namespace Cas.Data;

/// <summary>
/// A dataset file cannot be used: not a dataset, a newer format version, in use by another writer,
/// or damaged. Subclasses say which kind of damage.
/// </summary>
public class DatasetException : CasException
{
    public DatasetException(string message) : base(message) { }
    public DatasetException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>
/// Damage that is not a torn tail: a record in the middle of the file fails its checksum or does not
/// decode, while data follows it. Resuming will not truncate such a file, since that would drop
/// records after the damage.
/// </summary>
public sealed class DatasetCorruptException : DatasetException
{
    /// <summary>Byte offset of the damaged record frame.</summary>
    public long Offset { get; }
    public DatasetCorruptException(string message, long offset) : base(message) { Offset = offset; }
}

/// <summary>
/// The file ends in an incomplete or damaged last record (the signature of a killed writer). Thrown
/// only when the reader was not asked to stop at a torn tail.
/// </summary>
public sealed class DatasetTornTailException : DatasetException
{
    public TornTail TornTail { get; }
    public DatasetTornTailException(string message, TornTail tornTail) : base(message) { TornTail = tornTail; }
}

/// <summary>
/// A torn tail: the bytes from <see cref="Offset"/> (where the last complete record ends) to the end
/// of the file, <see cref="Length"/> bytes, do not form a complete record. <see cref="Reason"/> says why.
/// </summary>
public sealed record TornTail(long Offset, long Length, string Reason)
{
    public override string ToString() => $"torn tail at byte {Offset} ({Length} bytes): {Reason}";
}
