using Cas.Engine;
using Cas.Engine.Cartridges;

namespace Cas.Store;

/// <summary>
/// Deterministic cartridges for the store's benchmark and crash tests: every value is a function of the seed (and
/// exactly representable in BF16, so a BF16 round trip is lossless and a survivor can be checked byte for byte).
/// </summary>
public static class SyntheticCartridges
{
    public const string Fingerprint = "5e1f0000000000000000000000000000000000000000000000000000000000aa";

    public static Cartridge Make(long seed, int p, int layers, int kvHeads, int headDim)
    {
        var keys = new float[layers][]; var values = new float[layers][];
        ulong state = (ulong)seed * 0x9E3779B97F4A7C15UL + 1;
        for (int l = 0; l < layers; l++)
        {
            keys[l] = GC.AllocateUninitializedArray<float>(kvHeads * p * headDim);
            values[l] = GC.AllocateUninitializedArray<float>(keys[l].Length);
            Fill(keys[l], ref state); Fill(values[l], ref state);
        }
        return new Cartridge(new KvPrefix(layers, kvHeads, headDim, p, keys, values), Fingerprint)
        {
            ModelSource = "synthetic", SourceDocuments = [$"synthetic-{seed}"], CreatedUtc = new DateTime(2025, 1, 1, 0, 0, 0, DateTimeKind.Utc),
        };
    }

    static void Fill(float[] a, ref ulong s)
    {
        for (int i = 0; i < a.Length; i++)
        {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17; // xorshift64
            // sign, a small exponent range and 7 mantissa bits: finite and BF16-exact
            uint bits = (uint)((s >> 63) << 31) | (uint)(120 + (int)((s >> 40) % 12)) << 23 | (uint)((s >> 20) & 0x7F) << 16;
            a[i] = BitConverter.UInt32BitsToSingle(bits);
        }
    }
}
