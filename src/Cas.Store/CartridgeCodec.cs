using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;

namespace Cas.Store;

/// <summary>
/// A cartridge's stored bytes are exactly a cartridge file (safetensors: 8-byte header length, JSON header with the
/// cas.* metadata, then layers.{l}.keys/values in BF16 or F32), so `cas store export` is a plain copy and
/// `Cartridge.Load` reads the export. Both directions are the engine's cartridge format code
/// (<see cref="Cartridge.ToBytes"/>, <see cref="Cartridge.Read(SafeTensorsFile)"/> over <see cref="SafeTensorsFile.FromBytes"/>) in memory: the store only picks the dtype.
/// </summary>
public static class CartridgeCodec
{
    /// <summary>The file bytes of <paramref name="cartridge"/> with K/V as <paramref name="dtype"/>; refuses NaN/Inf.</summary>
    public static byte[] Encode(Cartridge cartridge, StoredDType dtype)
    {
        ArgumentNullException.ThrowIfNull(cartridge);
        return cartridge.ToBytes(dtype == StoredDType.BF16 ? SafeTensorDType.BF16 : SafeTensorDType.F32);
    }

    /// <summary>Decodes file bytes written by <see cref="Encode"/> to fp32 K/V and the metadata strings.</summary>
    public static (KvPrefix Prefix, Dictionary<string, string> Metadata) Decode(ReadOnlyMemory<byte> file, string what)
    {
        SafeTensorsFile st;
        try { st = SafeTensorsFile.FromBytes(file, what); }
        catch (ModelFormatException e) { throw new CartridgeFormatException($"{what} is not a readable cartridge: {e.Message}", e); }
        using (st) return (Cartridge.Read(st).Prefix, new Dictionary<string, string>(st.Metadata, StringComparer.Ordinal));
    }
}
