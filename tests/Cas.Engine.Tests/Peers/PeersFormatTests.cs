using System.Diagnostics;
using System.Text;
using Cas.Bench.Peers;
using Cas.Engine.Models;

namespace Cas.Engine.Tests.Peers;

/// <summary>
/// The two file-format pieces of `cas bench peers` (eval/peers, compiled in here so CI checks them without restoring
/// the peers' packages): the GGUF writer and the ELF version patch. The end-to-end proof of the GGUF writer is the
/// benchmark's own check (llama.cpp's logits equal ours to 1e-6 relative, printed by every `cas bench peers` run);
/// these tests pin the layout and the RoPE row order without llama.cpp.
/// </summary>
public class PeersFormatTests
{
    static readonly ModelConfig Tiny = new()
    {
        Architecture = Architecture.Llama, Dim = 8, HiddenDim = 16, Layers = 2, Heads = 2, KvHeads = 1, HeadDim = 4,
        VocabSize = 6, MaxSeqLen = 64, RopeTheta = 10000f, TiedEmbeddings = true, BosTokenId = 1, EosTokenIds = [2],
    };

    /// <summary>
    /// Rotating pairs (i, i + hd/2) of the original rows gives the same q·k as rotating adjacent pairs (2i, 2i+1) of the
    /// reordered rows, for every head and any two positions: the property llama.cpp's Llama needs from the Q/K weights.
    /// </summary>
    [Fact]
    public void ReorderedQkRows_GiveTheSameAttentionScoresUnderAdjacentPairRope()
    {
        int heads = 3, hd = 8, cols = 5;
        var rng = new Random(1);
        float[] R(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1); return a; }
        float[] wq = R(heads * hd * cols), wk = R(heads * hd * cols), x = R(cols), y = R(cols);
        var wq2 = GgufWriter.HalvesToInterleavedRows(wq, heads, hd, cols);
        var wk2 = GgufWriter.HalvesToInterleavedRows(wk, heads, hd, cols);
        Assert.NotEqual(wq, wq2);
        foreach (var (pq, pk) in new[] { (0, 0), (7, 3), (100, 41) })
            for (int h = 0; h < heads; h++)
            {
                double halves = Dot(Rope(MatVec(wq, x, h, hd, cols), pq, adjacent: false), Rope(MatVec(wk, y, h, hd, cols), pk, adjacent: false));
                double pairs = Dot(Rope(MatVec(wq2, x, h, hd, cols), pq, adjacent: true), Rope(MatVec(wk2, y, h, hd, cols), pk, adjacent: true));
                Assert.True(Math.Abs(halves - pairs) <= 1e-9 * Math.Max(1, Math.Abs(halves)), $"head {h}, positions {pq}/{pk}: {halves} vs {pairs}");
            }
    }

    static double[] MatVec(float[] w, float[] x, int head, int hd, int cols)
    {
        var r = new double[hd];
        for (int i = 0; i < hd; i++)
            for (int j = 0; j < cols; j++) r[i] += (double)w[(head * hd + i) * cols + j] * x[j];
        return r;
    }

    static double[] Rope(double[] v, int pos, bool adjacent)
    {
        int half = v.Length / 2;
        var r = new double[v.Length];
        for (int i = 0; i < half; i++)
        {
            double a = pos * Math.Pow(10000, -2.0 * i / v.Length), c = Math.Cos(a), s = Math.Sin(a);
            int i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
            r[i0] = v[i0] * c - v[i1] * s;
            r[i1] = v[i1] * c + v[i0] * s;
        }
        return r;
    }

    static double Dot(double[] a, double[] b) { double s = 0; for (int i = 0; i < a.Length; i++) s += a[i] * b[i]; return s; }

    [Theory]
    [InlineData(0)] // F32
    [InlineData(1)] // F16
    public void Gguf_HasTheHeaderMetadataAndAlignedTensorsLlamaCppReads(int typeCode)
    {
        var type = (GgufWriter.TensorType)typeCode;
        var model = RandomWeights.Create(Tiny, seed: 3);
        var vocab = new HfVocabulary(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab"], [3, 3, 3, 1, 1, 1], ["a b"], "smollm");
        string path = Path.Combine(Path.GetTempPath(), $"cas-gguf-test-{Guid.NewGuid():N}.gguf");
        try
        {
            GgufWriter.Write(path, model, type, vocab);
            var f = GgufFile.Read(path);
            Assert.Equal(3u, f.Version);
            Assert.Equal("llama", f.Metadata["general.architecture"]);
            Assert.Equal(2u, f.Metadata["llama.block_count"]);
            Assert.Equal(2u, f.Metadata["llama.attention.head_count"]);
            Assert.Equal(1u, f.Metadata["llama.attention.head_count_kv"]);
            Assert.Equal(4u, f.Metadata["llama.rope.dimension_count"]);
            Assert.Equal(10000f, f.Metadata["llama.rope.freq_base"]);
            Assert.Equal(type == GgufWriter.TensorType.F32 ? 0u : 1u, f.Metadata["general.file_type"]);
            Assert.Equal(vocab.Tokens, (string[])f.Metadata["tokenizer.ggml.tokens"]);
            Assert.Equal(vocab.TokenTypes, (int[])f.Metadata["tokenizer.ggml.token_type"]);
            Assert.Equal(vocab.Merges, (string[])f.Metadata["tokenizer.ggml.merges"]);
            // Tied embeddings: no output.weight; 2 + 9 per layer.
            Assert.Equal(2 + 9 * Tiny.Layers, f.Tensors.Count);
            Assert.DoesNotContain(f.Tensors, t => t.Name == "output.weight");
            Assert.Equal(0, f.DataStart % 32);
            foreach (var t in f.Tensors) Assert.Equal(0UL, t.Offset % 32);

            var emb = f.Tensors.Single(t => t.Name == "token_embd.weight");
            Assert.Equal([8L, 6L], emb.Dims); // innermost first: [dim, vocab]
            Assert.Equal((uint)type, emb.Type);
            Assert.Equal(Round(model.Weights.TokenEmbedding, type), f.Floats(emb));
            var norm = f.Tensors.Single(t => t.Name == "blk.1.attn_norm.weight");
            Assert.Equal(0u, norm.Type); // norms stay F32
            Assert.Equal(model.Weights.Layers[1].AttnNorm, f.Floats(norm));
            var q = f.Tensors.Single(t => t.Name == "blk.1.attn_q.weight");
            Assert.Equal(Round(GgufWriter.HalvesToInterleavedRows(model.Weights.Layers[1].Wq, 2, 4, 8), type), f.Floats(q));
            var down = f.Tensors.Single(t => t.Name == "blk.0.ffn_down.weight");
            Assert.Equal([16L, 8L], down.Dims);
            Assert.Equal(Round(model.Weights.Layers[0].WDown, type), f.Floats(down));
        }
        finally { File.Delete(path); }
    }

    static float[] Round(float[] a, GgufWriter.TensorType t) => t == GgufWriter.TensorType.F32 ? a : a.Select(x => (float)(Half)x).ToArray();

    [Fact]
    public void ElfVersionPatch_MarksTheRequirementWeak_AsReadelfReportsIt()
    {
        const string lib = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
        if (!File.Exists(lib)) Assert.Skip($"{lib} not found (Debian x86-64 layout expected).");
        if (Readelf(lib) is not string before) { Assert.Skip("readelf (binutils) is not installed."); return; }
        const string version = "GLIBC_2.2.5"; // libstdc++ needs it from libm/libc
        Assert.Matches($@"Name: {version.Replace(".", @"\.")}\s+Flags: none", before);
        string copy = Path.Combine(Path.GetTempPath(), $"cas-elf-test-{Guid.NewGuid():N}.so");
        File.Copy(lib, copy);
        long length = new FileInfo(copy).Length;
        try
        {
            int changed = ElfVersionPatch.MakeVersionWeak(copy, version);
            Assert.True(changed >= 1);
            string after = Readelf(copy)!;
            Assert.Matches($@"Name: {version.Replace(".", @"\.")}\s+Flags: WEAK", after);
            Assert.DoesNotMatch($@"Name: {version.Replace(".", @"\.")}\s+Flags: none", after);
            // Nothing else changed: readelf's listing differs in exactly the patched lines; a second patch changes nothing.
            string[] b = before.Split('\n'), a = after.Split('\n');
            Assert.Equal(b.Length, a.Length);
            Assert.Equal(changed, b.Zip(a).Count(l => l.First != l.Second));
            Assert.Equal(0, ElfVersionPatch.MakeVersionWeak(copy, version));
            Assert.Equal(length, new FileInfo(copy).Length);
        }
        finally { File.Delete(copy); }
    }

    static string? Readelf(string path)
    {
        try
        {
            var psi = new ProcessStartInfo("readelf", ["-V", path]) { RedirectStandardOutput = true, UseShellExecute = false };
            using var p = Process.Start(psi)!;
            string o = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return p.ExitCode == 0 ? o : null;
        }
        catch (System.ComponentModel.Win32Exception) { return null; }
    }

    /// <summary>A minimal GGUF reader for the test (header, scalar/array metadata, tensor infos, F32/F16 data).</summary>
    sealed class GgufFile
    {
        public uint Version;
        public Dictionary<string, object> Metadata = new();
        public List<(string Name, long[] Dims, uint Type, ulong Offset)> Tensors = new();
        public long DataStart;
        byte[] _bytes = [];

        public static GgufFile Read(string path)
        {
            var f = new GgufFile { _bytes = File.ReadAllBytes(path) };
            using var r = new BinaryReader(new MemoryStream(f._bytes));
            Assert.Equal(Encoding.ASCII.GetBytes("GGUF"), r.ReadBytes(4));
            f.Version = r.ReadUInt32();
            ulong tensors = r.ReadUInt64(), kvs = r.ReadUInt64();
            for (ulong i = 0; i < kvs; i++) { string k = Str(r); f.Metadata[k] = Value(r, r.ReadUInt32()); }
            for (ulong i = 0; i < tensors; i++)
            {
                string name = Str(r);
                var dims = new long[r.ReadUInt32()];
                for (int d = 0; d < dims.Length; d++) dims[d] = (long)r.ReadUInt64();
                f.Tensors.Add((name, dims, r.ReadUInt32(), r.ReadUInt64()));
            }
            uint align = f.Metadata.TryGetValue("general.alignment", out var a) ? (uint)a : 32;
            f.DataStart = (r.BaseStream.Position + align - 1) / align * align;
            return f;
        }

        public float[] Floats((string Name, long[] Dims, uint Type, ulong Offset) t)
        {
            long n = t.Dims.Aggregate(1L, (x, y) => x * y);
            var span = _bytes.AsSpan((int)(DataStart + (long)t.Offset));
            return t.Type == 0
                ? System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(span[..(int)(n * 4)]).ToArray()
                : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(span[..(int)(n * 2)]).ToArray().Select(h => (float)h).ToArray();
        }

        static string Str(BinaryReader r) => Encoding.UTF8.GetString(r.ReadBytes(checked((int)r.ReadUInt64())));

        static object Value(BinaryReader r, uint type) => type switch
        {
            4 => r.ReadUInt32(),
            5 => r.ReadInt32(),
            6 => r.ReadSingle(),
            7 => r.ReadByte() != 0,
            8 => Str(r),
            9 => Array(r),
            _ => throw new InvalidDataException($"metadata type {type} not expected in our files"),
        };

        static object Array(BinaryReader r)
        {
            uint t = r.ReadUInt32();
            int n = checked((int)r.ReadUInt64());
            if (t == 8) { var a = new string[n]; for (int i = 0; i < n; i++) a[i] = Str(r); return a; }
            if (t == 5) { var a = new int[n]; for (int i = 0; i < n; i++) a[i] = r.ReadInt32(); return a; }
            throw new InvalidDataException($"array of type {t} not expected in our files");
        }
    }
}
