using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace Cas.Engine.Models;

/// <summary>
/// Writes fp32 data as a .safetensors file (F32, BF16 or F16 on disk). The file appears
/// atomically: it is written to a temporary file beside the target, flushed to disk, then renamed
/// over the target, so readers never see a half-written file. <see cref="ToBytes"/> gives the same
/// bytes in memory (the cartridge store keeps them as its records).
/// </summary>
public static class SafeTensorsWriter
{
    const int ChunkElements = 1 << 18;

    public static void Write(
        string path,
        IEnumerable<(string Name, int[] Shape, ReadOnlyMemory<float> Data, SafeTensorDType DType)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        byte[] header = BuildHeader(list, metadata);

        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 16))
            {
                WriteTo(fs, header, list);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>The bytes <see cref="Write"/> would put in a file.</summary>
    public static byte[] ToBytes(
        IEnumerable<(string Name, int[] Shape, ReadOnlyMemory<float> Data, SafeTensorDType DType)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        byte[] header = BuildHeader(list, metadata);
        long total = 8L + header.Length;
        foreach (var t in list) total += (long)t.Data.Length * SafeTensorsFile.DTypeSize(t.DType);
        if (total > Array.MaxLength) throw new ArgumentException($"{total} bytes of safetensors do not fit one array (max {Array.MaxLength}); write a file instead.");
        var bytes = GC.AllocateUninitializedArray<byte>((int)total);
        using (var ms = new MemoryStream(bytes, writable: true)) WriteTo(ms, header, list);
        return bytes;
    }

    static void WriteTo(Stream stream, byte[] header, List<(string Name, int[] Shape, ReadOnlyMemory<float> Data, SafeTensorDType DType)> list)
    {
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        stream.Write(len);
        stream.Write(header);
        foreach (var t in list) WriteData(stream, t.Data.Span, t.DType);
    }

    static byte[] BuildHeader(
        List<(string Name, int[] Shape, ReadOnlyMemory<float> Data, SafeTensorDType DType)> list,
        IReadOnlyDictionary<string, string>? metadata)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach (var kv in metadata) json.WriteString(kv.Key, kv.Value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, shape, data, dtype) in list)
            {
                if (string.IsNullOrEmpty(name) || name == "__metadata__")
                    throw new ArgumentException($"invalid tensor name '{name}'.");
                if (!names.Add(name)) throw new ArgumentException($"tensor '{name}' is given twice.");
                if (dtype is not (SafeTensorDType.F32 or SafeTensorDType.BF16 or SafeTensorDType.F16))
                    throw new ArgumentException($"tensor '{name}': cannot write dtype {dtype}; use F32, BF16 or F16.");
                ArgumentNullException.ThrowIfNull(shape);
                long count = 1;
                foreach (var d in shape)
                {
                    if (d < 0) throw new ArgumentException($"tensor '{name}': negative dimension in shape {SafeTensorInfo.FormatShape(shape)}.");
                    count *= d;
                }
                if (count != data.Length)
                    throw new ArgumentException($"tensor '{name}': shape {SafeTensorInfo.FormatShape(shape)} holds {count} elements but {data.Length} were given.");
                long bytes = count * SafeTensorsFile.DTypeSize(dtype);
                json.WriteStartObject(name);
                json.WriteString("dtype", dtype.ToString());
                json.WriteStartArray("shape");
                foreach (var d in shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }
            json.WriteEndObject();
        }
        // Pad with spaces so the data section starts 8-byte aligned (as the reference writer does).
        int padded = (buffer.WrittenCount + 7) / 8 * 8;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }

    static void WriteData(Stream fs, ReadOnlySpan<float> data, SafeTensorDType dtype)
    {
        if (dtype == SafeTensorDType.F32 && BitConverter.IsLittleEndian)
        {
            fs.Write(MemoryMarshal.AsBytes(data));
            return;
        }
        int size = SafeTensorsFile.DTypeSize(dtype);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkElements * size);
        try
        {
            for (int i = 0; i < data.Length; i += ChunkElements)
            {
                var part = data.Slice(i, Math.Min(ChunkElements, data.Length - i));
                var bytes = buffer.AsSpan(0, part.Length * size);
                if (dtype == SafeTensorDType.F32)
                {
                    var u = MemoryMarshal.Cast<byte, uint>(bytes);
                    BinaryPrimitives.ReverseEndianness(MemoryMarshal.Cast<float, uint>(part), u);
                }
                else
                {
                    var bits = MemoryMarshal.Cast<byte, ushort>(bytes);
                    if (dtype == SafeTensorDType.BF16) HalfPrecision.FloatToBF16(part, bits);
                    else HalfPrecision.FloatToF16(part, bits);
                    if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(bits, bits);
                }
                fs.Write(bytes);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
