using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;

namespace Cas.Engine.Models;

/// <summary>Element types of the safetensors format, named as in the file header.</summary>
public enum SafeTensorDType { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 }

/// <summary>One tensor's header entry. Offsets are relative to the start of the data section.</summary>
public sealed record SafeTensorInfo(string Name, SafeTensorDType DType, int[] Shape, long DataBegin, long DataEnd)
{
    public long ElementCount
    {
        get { long n = 1; foreach (var d in Shape) n *= d; return n; }
    }

    public long ByteLength => DataEnd - DataBegin;

    public string ShapeText => FormatShape(Shape);

    internal static string FormatShape(ReadOnlySpan<int> shape)
    {
        var sb = new StringBuilder("[");
        for (int i = 0; i < shape.Length; i++) { if (i > 0) sb.Append(", "); sb.Append(shape[i]); }
        return sb.Append(']').ToString();
    }
}

/// <summary>
/// A read-only .safetensors file: 8-byte little-endian header length N, N bytes of JSON header
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}}</c>,
/// then the raw little-endian tensor data. The header is fully validated on <see cref="Open"/>;
/// tensors are read on demand with positioned reads (F32 straight into the destination array,
/// BF16/F16 through a pooled buffer and a vectorised widening). Reads are positional, so several
/// threads may read different tensors of one open file at once.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>Same limit as the reference implementation: a larger header is not a real model file.</summary>
    public const long MaxHeaderBytes = 100_000_000;
    const int ChunkBytes = 1 << 20;

    readonly Source source;
    readonly long dataStart;
    readonly Dictionary<string, SafeTensorInfo> byName;

    SafeTensorsFile(string path, Source source, long fileLength, long dataStart,
                    List<SafeTensorInfo> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        this.source = source;
        FileLength = fileLength;
        this.dataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
        byName = new Dictionary<string, SafeTensorInfo>(tensors.Count, StringComparer.Ordinal);
        foreach (var t in tensors) byName[t.Name] = t;
    }

    public string Path { get; }
    public long FileLength { get; }
    /// <summary>The optional <c>__metadata__</c> entries (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>All tensors, in the order of their data in the file.</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }

    public bool Contains(string name) => byName.ContainsKey(name);

    public bool TryGetInfo(string name, out SafeTensorInfo info) => byName.TryGetValue(name, out info!);

    public SafeTensorInfo GetInfo(string name) =>
        byName.TryGetValue(name, out var info) ? info
            : throw new ModelFormatException($"tensor '{name}' is not in {Path}.");

    /// <summary>Opens and validates a file. Throws <see cref="ModelFormatException"/> saying what is wrong.</summary>
    public static SafeTensorsFile Open(string path)
    {
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ModelFormatException($"safetensors file not found: {path}", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException($"cannot open safetensors file {path}: {e.Message}", e);
        }
        try
        {
            return Parse(path, new FileSource(handle));
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Validates safetensors bytes already in memory (a cartridge read from the store) exactly as <see cref="Open"/>
    /// validates a file; <paramref name="name"/> stands for the path in messages. The bytes must not change while the
    /// result is in use.
    /// </summary>
    public static SafeTensorsFile FromBytes(ReadOnlyMemory<byte> bytes, string name) => Parse(name, new MemorySource(bytes));

    static SafeTensorsFile Parse(string path, Source source)
    {
        long fileLength = source.Length;
        if (fileLength < 8)
            throw new ModelFormatException($"{path} is {fileLength} bytes, too short to be a safetensors file (it must start with an 8-byte header length).");
        Span<byte> lenBytes = stackalloc byte[8];
        ReadExactly(source, lenBytes, 0, path, "the header length");
        ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen > (ulong)(fileLength - 8))
            throw new ModelFormatException($"{path}: header length {headerLen} exceeds the file size ({fileLength} bytes); the file is truncated or not a safetensors file.");
        if (headerLen > MaxHeaderBytes)
            throw new ModelFormatException($"{path}: header length {headerLen} is larger than the {MaxHeaderBytes}-byte limit; not a safetensors file.");
        if (headerLen < 2)
            throw new ModelFormatException($"{path}: header length {headerLen} is too small to hold a JSON object.");

        var header = new byte[(int)headerLen];
        ReadExactly(source, header, 8, path, "the header");
        long dataStart = 8 + (long)headerLen;
        long dataLength = fileLength - dataStart;

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header);
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{path}: the header is not valid JSON ({e.Message}); the file is corrupt or not a safetensors file.", e);
        }

        var tensors = new List<SafeTensorInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException($"{path}: the header must be a JSON object, found {doc.RootElement.ValueKind}.");
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(prop.Name))
                    throw new ModelFormatException($"{path}: the header names '{prop.Name}' twice.");
                if (prop.Name == "__metadata__")
                {
                    ParseMetadata(path, prop.Value, metadata);
                    continue;
                }
                tensors.Add(ParseTensor(path, prop.Name, prop.Value, dataLength, fileLength, dataStart));
            }
        }

        // Tensors must not share bytes (empty tensors occupy nothing and never overlap).
        tensors.Sort((a, b) => a.DataBegin != b.DataBegin ? a.DataBegin.CompareTo(b.DataBegin) : a.DataEnd.CompareTo(b.DataEnd));
        SafeTensorInfo? prev = null;
        foreach (var t in tensors)
        {
            if (t.ByteLength == 0) continue;
            if (prev != null && t.DataBegin < prev.DataEnd)
                throw new ModelFormatException(
                    $"{path}: tensors '{prev.Name}' (bytes {prev.DataBegin}..{prev.DataEnd}) and '{t.Name}' (bytes {t.DataBegin}..{t.DataEnd}) overlap; the header is corrupt.");
            prev = t;
        }
        return new SafeTensorsFile(path, source, fileLength, dataStart, tensors, metadata);
    }

    static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException($"{path}: '__metadata__' must be an object of string values, found {value.ValueKind}.");
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw new ModelFormatException($"{path}: '__metadata__' entry '{m.Name}' must be a string, found {m.Value.ValueKind}.");
            metadata[m.Name] = m.Value.GetString()!;
        }
    }

    static SafeTensorInfo ParseTensor(string path, string name, JsonElement e, long dataLength, long fileLength, long dataStart)
    {
        string Where() => $"{path}: tensor '{name}'";
        if (e.ValueKind != JsonValueKind.Object)
            throw new ModelFormatException($"{Where()}: header entry must be an object with dtype, shape and data_offsets.");

        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw new ModelFormatException($"{Where()}: missing string field 'dtype'.");
        string dtypeText = dt.GetString()!;
        if (!TryParseDType(dtypeText, out var dtype))
            throw new ModelFormatException($"{Where()}: unknown dtype '{dtypeText}'.");

        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw new ModelFormatException($"{Where()}: missing array field 'shape'.");
        var shape = new int[sh.GetArrayLength()];
        int k = 0;
        long count = 1;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt32(out int v) || v < 0)
                throw new ModelFormatException($"{Where()}: shape entries must be non-negative 32-bit integers, found {d.GetRawText()}.");
            shape[k++] = v;
            try { count = checked(count * v); }
            catch (OverflowException) { throw new ModelFormatException($"{Where()}: shape {SafeTensorInfo.FormatShape(shape)} is too large."); }
        }

        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new ModelFormatException($"{Where()}: missing field 'data_offsets' ([begin, end]).");
        var o0 = off[0];
        var o1 = off[1];
        if (o0.ValueKind != JsonValueKind.Number || o1.ValueKind != JsonValueKind.Number
            || !o0.TryGetInt64(out long begin) || !o1.TryGetInt64(out long end) || begin < 0 || end < begin)
            throw new ModelFormatException($"{Where()}: data_offsets {off.GetRawText()} must be two integers 0 <= begin <= end.");

        long expectedBytes;
        try { expectedBytes = checked(count * DTypeSize(dtype)); }
        catch (OverflowException) { throw new ModelFormatException($"{Where()}: shape {SafeTensorInfo.FormatShape(shape)} is too large."); }
        if (end - begin != expectedBytes)
            throw new ModelFormatException(
                $"{Where()}: data_offsets [{begin}, {end}] span {end - begin} bytes but shape {SafeTensorInfo.FormatShape(shape)} of {dtypeText} needs {expectedBytes} bytes.");
        if (end > dataLength)
            throw new ModelFormatException(
                $"{Where()}: data_offsets [{begin}, {end}] lie beyond the {dataLength} bytes of tensor data in the file " +
                $"(file is {fileLength} bytes, needs at least {dataStart + end}); the file is truncated or its header is wrong.");
        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    static readonly Dictionary<string, SafeTensorDType> DTypeNames =
        Enum.GetValues<SafeTensorDType>().ToDictionary(d => d.ToString(), StringComparer.Ordinal);

    /// <summary>Parses a header dtype name exactly as the format spells it ("F32", "BF16", ...).</summary>
    public static bool TryParseDType(string text, out SafeTensorDType dtype) => DTypeNames.TryGetValue(text, out dtype);

    public static int DTypeSize(SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.BOOL or SafeTensorDType.U8 or SafeTensorDType.I8 or SafeTensorDType.F8_E5M2 or SafeTensorDType.F8_E4M3 => 1,
        SafeTensorDType.I16 or SafeTensorDType.U16 or SafeTensorDType.F16 or SafeTensorDType.BF16 => 2,
        SafeTensorDType.I32 or SafeTensorDType.U32 or SafeTensorDType.F32 => 4,
        SafeTensorDType.F64 or SafeTensorDType.I64 or SafeTensorDType.U64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>Reads a F32, F16 or BF16 tensor as a new fp32 array (row-major, as stored).</summary>
    public float[] ReadFloats(string name) => ReadFloats(GetInfo(name));

    public float[] ReadFloats(SafeTensorInfo info)
    {
        CheckReadable(info);
        var result = GC.AllocateUninitializedArray<float>(checked((int)info.ElementCount));
        ReadFloats(info, result);
        return result;
    }

    /// <summary>Reads a F32, F16 or BF16 tensor into <paramref name="destination"/> (exactly ElementCount long).</summary>
    public void ReadFloats(SafeTensorInfo info, Span<float> destination)
    {
        CheckReadable(info);
        if (destination.Length != info.ElementCount)
            throw new ArgumentException($"destination holds {destination.Length} floats but tensor '{info.Name}' has {info.ElementCount}.", nameof(destination));
        long offset = dataStart + info.DataBegin;
        if (info.DType == SafeTensorDType.F32)
        {
            ReadExactly(source, MemoryMarshal.AsBytes(destination), offset, Path, $"tensor '{info.Name}'");
            if (!BitConverter.IsLittleEndian)
            {
                var u = MemoryMarshal.Cast<float, uint>(destination);
                BinaryPrimitives.ReverseEndianness(u, u);
            }
            return;
        }

        byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            int done = 0;
            while (done < destination.Length)
            {
                int n = Math.Min(ChunkBytes / 2, destination.Length - done);
                var bytes = buffer.AsSpan(0, n * 2);
                ReadExactly(source, bytes, offset + 2L * done, Path, $"tensor '{info.Name}'");
                var bits = MemoryMarshal.Cast<byte, ushort>(bytes);
                if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(bits, bits);
                if (info.DType == SafeTensorDType.BF16) HalfPrecision.BF16ToFloat(bits, destination.Slice(done, n));
                else HalfPrecision.F16ToFloat(bits, destination.Slice(done, n));
                done += n;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    void CheckReadable(SafeTensorInfo info)
    {
        ArgumentNullException.ThrowIfNull(info);
        if (!byName.TryGetValue(info.Name, out var own) || !ReferenceEquals(own, info))
            throw new ArgumentException($"tensor info '{info.Name}' does not come from {Path}.", nameof(info));
        if (info.DType is not (SafeTensorDType.F32 or SafeTensorDType.F16 or SafeTensorDType.BF16))
            throw new ModelFormatException(
                $"{Path}: tensor '{info.Name}' has dtype {info.DType}; only F32, F16 and BF16 weights are supported (convert the checkpoint to one of those).");
        if (info.ElementCount > Array.MaxLength)
            throw new ModelFormatException($"{Path}: tensor '{info.Name}' has {info.ElementCount} elements, more than one array can hold.");
    }

    static void ReadExactly(Source source, Span<byte> destination, long offset, string path, string what)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int n = source.Read(destination.Slice(done), offset + done);
            if (n == 0)
                throw new ModelFormatException(
                    $"{path}: unexpected end of file while reading {what} (needed {destination.Length} bytes at offset {offset}, got {done}); the file is truncated or changed while being read.");
            done += n;
        }
    }

    public void Dispose() => source.Dispose();

    /// <summary>Where the bytes are: a file (positioned reads, safe from several threads) or memory.</summary>
    abstract class Source : IDisposable
    {
        public abstract long Length { get; }
        /// <summary>Copies up to destination.Length bytes from <paramref name="offset"/>; 0 at the end.</summary>
        public abstract int Read(Span<byte> destination, long offset);
        public virtual void Dispose() { }
    }

    sealed class FileSource(SafeFileHandle handle) : Source
    {
        public override long Length => RandomAccess.GetLength(handle);
        public override int Read(Span<byte> destination, long offset) => RandomAccess.Read(handle, destination, offset);
        public override void Dispose() => handle.Dispose();
    }

    sealed class MemorySource(ReadOnlyMemory<byte> bytes) : Source
    {
        public override long Length => bytes.Length;
        public override int Read(Span<byte> destination, long offset)
        {
            if (offset >= bytes.Length) return 0;
            int n = (int)Math.Min(destination.Length, bytes.Length - offset);
            bytes.Span.Slice((int)offset, n).CopyTo(destination);
            return n;
        }
    }
}
