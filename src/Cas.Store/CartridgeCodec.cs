using System.Buffers;
using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Text.Json;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;

namespace Cas.Store;

/// <summary>
/// A cartridge's stored bytes are exactly a cartridge file (safetensors: 8-byte header length, JSON header with the
/// cas.* metadata, then layers.{l}.keys/values in BF16 or F32), so `cas store export` is a plain copy and
/// `Cartridge.Load` reads the export. Written here in memory because the engine's writer (SafeTensorsWriter) only
/// writes to a path and its reader (SafeTensorsFile) only opens a path; the store needs bytes in and out.
/// </summary>
public static class CartridgeCodec
{
    /// <summary>The file bytes of <paramref name="cartridge"/> with K/V as <paramref name="dtype"/>.</summary>
    public static byte[] Encode(Cartridge cartridge, StoredDType dtype)
    {
        ArgumentNullException.ThrowIfNull(cartridge);
        var meta = cartridge.BuildMetadata();
        var p = cartridge.Prefix;
        int elems = p.KvHeads * p.Length * p.HeadDim;
        int esize = dtype == StoredDType.BF16 ? 2 : 4;
        string dt = dtype == StoredDType.BF16 ? "BF16" : "F32";
        var header = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            foreach (var kv in meta) json.WriteString(kv.Key, kv.Value);
            json.WriteEndObject();
            long offset = 0;
            for (int t = 0; t < 2 * p.Layers; t++)
            {
                json.WriteStartObject(t % 2 == 0 ? Cartridge.KeysName(t / 2) : Cartridge.ValuesName(t / 2));
                json.WriteString("dtype", dt);
                json.WriteStartArray("shape"); json.WriteNumberValue(p.KvHeads); json.WriteNumberValue(p.Length); json.WriteNumberValue(p.HeadDim); json.WriteEndArray();
                json.WriteStartArray("data_offsets"); json.WriteNumberValue(offset); json.WriteNumberValue(offset + (long)elems * esize); json.WriteEndArray();
                json.WriteEndObject();
                offset += (long)elems * esize;
            }
            json.WriteEndObject();
        }
        int headerLen = (header.WrittenCount + 7) & ~7; // data starts 8-aligned; the pad is spaces, as safetensors allows
        long total = 8 + headerLen + 2L * p.Layers * elems * esize;
        if (total > Array.MaxLength) throw new InvalidRequestException($"a cartridge of {total} bytes is too large for the store (max {Array.MaxLength}).");
        var bytes = GC.AllocateUninitializedArray<byte>((int)total);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)headerLen);
        header.WrittenSpan.CopyTo(bytes.AsSpan(8));
        bytes.AsSpan(8 + header.WrittenCount, headerLen - header.WrittenCount).Fill((byte)' ');
        int at = 8 + headerLen;
        for (int t = 0; t < 2 * p.Layers; t++)
        {
            var src = (t % 2 == 0 ? p.Keys : p.Values)[t / 2].AsSpan();
            if (!float.IsFinite(TensorPrimitives.MaxMagnitude(src))) // NaN or ±Inf somewhere: find it for the message
                for (int i = 0; i < src.Length; i++)
                    if (!float.IsFinite(src[i])) throw new InvalidRequestException($"refusing to store a cartridge with {src[i]} in {(t % 2 == 0 ? "keys" : "values")} of layer {t / 2} at index {i}; training diverged.");
            var dst = bytes.AsSpan(at, elems * esize);
            if (dtype == StoredDType.BF16) HalfPrecision.FloatToBF16(src, MemoryMarshal.Cast<byte, ushort>(dst));
            else MemoryMarshal.AsBytes(src).CopyTo(dst);
            at += elems * esize;
        }
        return bytes;
    }

    /// <summary>Decodes file bytes written by <see cref="Encode"/> to fp32 K/V and the metadata strings.</summary>
    public static (KvPrefix Prefix, Dictionary<string, string> Metadata) Decode(ReadOnlySpan<byte> file, string what)
    {
        if (file.Length < 8) throw new CartridgeFormatException($"{what}: {file.Length} bytes is too short for a cartridge.");
        long headerLen = (long)BinaryPrimitives.ReadUInt64LittleEndian(file);
        if (headerLen <= 0 || 8 + headerLen > file.Length) throw new CartridgeFormatException($"{what}: header length {headerLen} does not fit {file.Length} bytes.");
        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        var tensors = new Dictionary<string, (string DType, long Begin, long End, int[] Shape)>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(file.Slice(8, (int)headerLen).ToArray());
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__") { foreach (var m in prop.Value.EnumerateObject()) meta[m.Name] = m.Value.GetString() ?? ""; continue; }
                var off = prop.Value.GetProperty("data_offsets");
                var shape = prop.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray();
                tensors[prop.Name] = (prop.Value.GetProperty("dtype").GetString() ?? "", off[0].GetInt64(), off[1].GetInt64(), shape);
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException)
        {
            throw new CartridgeFormatException($"{what}: the cartridge header is not valid JSON ({e.Message}).");
        }
        int Int(string key) => meta.TryGetValue(key, out var s) && int.TryParse(s, out int v) && v > 0 ? v
            : throw new CartridgeFormatException($"{what}: metadata '{key}' is missing or not a positive integer.");
        int p = Int("cas.p"), layers = Int("cas.layers"), kvHeads = Int("cas.kv_heads"), headDim = Int("cas.head_dim");
        int elems = kvHeads * p * headDim;
        int dataStart = (int)(8 + headerLen);
        float[] Read(ReadOnlySpan<byte> data, string name)
        {
            if (!tensors.TryGetValue(name, out var t)) throw new CartridgeFormatException($"{what}: tensor '{name}' is missing.");
            int esize = t.DType switch { "BF16" => 2, "F32" => 4, _ => throw new CartridgeFormatException($"{what}: tensor '{name}' has dtype {t.DType}; the store keeps BF16 or F32.") };
            if (t.Shape.Length != 3 || t.Shape[0] != kvHeads || t.Shape[1] != p || t.Shape[2] != headDim || t.End - t.Begin != (long)elems * esize || t.Begin < 0 || t.End > data.Length)
                throw new CartridgeFormatException($"{what}: tensor '{name}' does not have shape [{kvHeads}, {p}, {headDim}] within the data.");
            var src = data.Slice((int)t.Begin, elems * esize);
            var dst = GC.AllocateUninitializedArray<float>(elems);
            if (esize == 2) HalfPrecision.BF16ToFloat(MemoryMarshal.Cast<byte, ushort>(src), dst);
            else MemoryMarshal.Cast<byte, float>(src).CopyTo(dst);
            return dst;
        }
        var keys = new float[layers][]; var values = new float[layers][];
        for (int l = 0; l < layers; l++) { keys[l] = Read(file[dataStart..], Cartridge.KeysName(l)); values[l] = Read(file[dataStart..], Cartridge.ValuesName(l)); }
        return (new KvPrefix(layers, kvHeads, headDim, p, keys, values), meta);
    }
}
