using Cas.Engine;
using Cas.Engine.Cartridges;

namespace Cas.Store.Tests;

/// <summary>Temporary folders and deterministic cartridges for the store tests.</summary>
static class StoreTestUtil
{
    public const string Fingerprint = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "cas-store-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>A cartridge whose every value is a function of <paramref name="seed"/> (finite, bf16-exact when <paramref name="bf16Exact"/>).</summary>
    public static Cartridge Make(int seed, int p = 16, int layers = 3, int kvHeads = 2, int headDim = 8, bool bf16Exact = true)
    {
        var rng = new Random(seed);
        var k = new float[layers][]; var v = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            k[l] = new float[kvHeads * p * headDim]; v[l] = new float[k[l].Length];
            for (int i = 0; i < k[l].Length; i++) { k[l][i] = Val(rng, bf16Exact); v[l][i] = Val(rng, bf16Exact); }
        }
        return new Cartridge(new KvPrefix(layers, kvHeads, headDim, p, k, v), Fingerprint)
        {
            ModelSource = "test-model", SourceDocuments = [$"doc-{seed}"], StepsTrained = seed,
            CreatedUtc = new DateTime(2025, 1, 2, 3, 4, 5, DateTimeKind.Utc),
        };
    }

    static float Val(Random rng, bool bf16Exact)
    {
        float f = (float)(rng.NextDouble() * 4 - 2);
        return bf16Exact ? BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(f) & 0xFFFF0000u) : f;
    }

    public static void AssertSamePrefix(KvPrefix a, KvPrefix b)
    {
        Assert.Equal((a.Layers, a.KvHeads, a.Length, a.HeadDim), (b.Layers, b.KvHeads, b.Length, b.HeadDim));
        for (int l = 0; l < a.Layers; l++)
        {
            Assert.True(a.Keys[l].AsSpan().SequenceEqual(b.Keys[l]), $"keys of layer {l} differ");
            Assert.True(a.Values[l].AsSpan().SequenceEqual(b.Values[l]), $"values of layer {l} differ");
        }
    }
}
