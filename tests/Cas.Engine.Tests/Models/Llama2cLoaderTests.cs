using System.Buffers.Binary;
using System.Text.Json.Nodes;
using Cas.Engine.Models;
using Cas.Tests.Common;
using static Cas.Engine.Tests.Models.ModelTestUtil;

namespace Cas.Engine.Tests.Models;

public class Llama2cLoaderTests
{
    /// <summary>
    /// A tiny checkpoint (dim 4, hidden 6, 2 layers, 2 heads, 1 KV head, vocab 5, seq_len 3) whose
    /// i-th weight float is the number i, so each tensor's first value is its offset in floats:
    /// embedding 0, rms_att 20/24, wq 28/44, wk 60/68, wv 76/84, wo 92/108, rms_ffn 124/128,
    /// w1 132/156, w2 180/204, w3 228/252, rms_final 276, freq_cis 280..286, wcls 286 (unshared).
    /// </summary>
    static string WriteTiny(TempDir dir, bool sharedClassifier, int? cutToBytes = null, int extraBytes = 0)
    {
        int floats = sharedClassifier ? 286 : 306;
        var bytes = new byte[28 + 4 * floats + extraBytes];
        int[] header = [4, 6, 2, 2, 1, sharedClassifier ? 5 : -5, 3];
        for (int i = 0; i < 7; i++) BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(4 * i), header[i]);
        for (int i = 0; i < floats; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(28 + 4 * i), i);
        string path = dir.File(sharedClassifier ? "tiny.bin" : "tiny_unshared.bin");
        File.WriteAllBytes(path, cutToBytes is int n ? bytes[..n] : bytes);
        return path;
    }

    [Fact]
    public void TinyCheckpointTensorsLandInTheRightPlaces()
    {
        using var dir = new TempDir();
        var m = Llama2cLoader.Load(WriteTiny(dir, sharedClassifier: true));
        var c = m.Config;
        Assert.Equal((4, 6, 2, 2, 1, 2, 5, 3), (c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.HeadDim, c.VocabSize, c.MaxSeqLen));
        Assert.Equal(RopeStyle.Interleaved, c.Rope);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.Equal(1e-5f, c.NormEps);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal([2], c.EosTokenIds);
        Assert.True(c.TiedEmbeddings);
        Assert.Null(c.RopeScaling);

        var w = m.Weights;
        Assert.Equal(Enumerable.Range(0, 20).Select(i => (float)i), w.TokenEmbedding.Floats);
        Assert.Same(w.TokenEmbedding, w.LmHead);
        Assert.Equal(Enumerable.Range(276, 4).Select(i => (float)i), w.FinalNorm);
        (string, Func<LayerWeights, float[]>, int, int, int)[] expect =
        [
            ("rms_att", l => l.AttnNorm, 20, 24, 4), ("wq", l => l.Wq, 28, 44, 16), ("wk", l => l.Wk, 60, 68, 8),
            ("wv", l => l.Wv, 76, 84, 8), ("wo", l => l.Wo, 92, 108, 16), ("rms_ffn", l => l.FfnNorm, 124, 128, 4),
            ("w1", l => l.WGate, 132, 156, 24), ("w2", l => l.WDown, 180, 204, 24), ("w3", l => l.WUp, 228, 252, 24),
        ];
        foreach (var (name, get, first0, first1, length) in expect)
        {
            Assert.True(Enumerable.Range(first0, length).Select(i => (float)i).SequenceEqual(get(w.Layers[0])), name + " layer 0");
            Assert.True(Enumerable.Range(first1, length).Select(i => (float)i).SequenceEqual(get(w.Layers[1])), name + " layer 1");
        }
        Assert.All(w.Layers, l => Assert.True(l.Bq is null && l.Bo is null && l.QNorm is null));
    }

    [Fact]
    public void NegativeVocabSizeReadsTheClassifierAfterTheLegacyFreqCis()
    {
        using var dir = new TempDir();
        var m = Llama2cLoader.Load(WriteTiny(dir, sharedClassifier: false));
        Assert.False(m.Config.TiedEmbeddings);
        Assert.Equal(5, m.Config.VocabSize);
        Assert.NotSame(m.Weights.TokenEmbedding, m.Weights.LmHead);
        Assert.Equal(Enumerable.Range(286, 20).Select(i => (float)i), m.Weights.LmHead.Floats);
    }

    [Fact]
    public void TruncatedFileNamesTheTensorAndTheSizes()
    {
        using var dir = new TempDir();
        // 28 + 4*200 bytes ends inside layer 0's w2 (floats 180..204)
        var e = Assert.Throws<ModelFormatException>(() => Llama2cLoader.Load(WriteTiny(dir, true, cutToBytes: 28 + 4 * 200)));
        Assert.Contains("truncated", e.Message);
        Assert.Contains("'w2[layer 0]'", e.Message);
        Assert.Contains("only 828 bytes", e.Message);
        Assert.Contains("expected 1172 bytes", e.Message);

        // cut inside the unshared classifier
        var e2 = Assert.Throws<ModelFormatException>(() => Llama2cLoader.Load(WriteTiny(dir, false, cutToBytes: 1200)));
        Assert.Contains("'wcls'", e2.Message);
        Assert.Contains("expected 1252 bytes", e2.Message);
    }

    [Fact]
    public void BadHeadersAndTrailingBytes()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("short.bin"), new byte[10]);
        Assert.Contains("28-byte header", Assert.Throws<ModelFormatException>(() => Llama2cLoader.Load(dir.File("short.bin"))).Message);

        var zeros = new byte[64];
        File.WriteAllBytes(dir.File("zeros.bin"), zeros);
        Assert.Contains("implausible llama2.c header", Assert.Throws<ModelFormatException>(() => Llama2cLoader.Load(dir.File("zeros.bin"))).Message);

        var v1 = new byte[256];
        BinaryPrimitives.WriteInt32LittleEndian(v1, 0x616b3432);
        File.WriteAllBytes(dir.File("v1.bin"), v1);
        Assert.Contains("versioned llama2.c export", Assert.Throws<ModelFormatException>(() => Llama2cLoader.Load(dir.File("v1.bin"))).Message);

        var e = Assert.Throws<ModelFormatException>(() => Llama2cLoader.Load(WriteTiny(dir, true, extraBytes: 12)));
        Assert.Contains("12 bytes after the last tensor", e.Message);

        Assert.Contains(dir.File("missing.bin"), Assert.Throws<ModelFormatException>(() => Llama2cLoader.Load(dir.File("missing.bin"))).Message);
    }

    static float[] ByGoldenName(Model m, string name)
    {
        var w = m.Weights;
        var parts = name.Split('.');
        if (parts.Length == 1)
            return name switch
            {
                "token_embedding" => w.TokenEmbedding,
                "rms_final" => w.FinalNorm,
                "wcls" => w.LmHead,
                _ => throw new InvalidOperationException(name),
            };
        var l = w.Layers[int.Parse(parts[1])];
        return parts[0] switch
        {
            "rms_att" => l.AttnNorm, "wq" => l.Wq, "wk" => l.Wk, "wv" => l.Wv, "wo" => l.Wo,
            "rms_ffn" => l.FfnNorm, "w1" => l.WGate, "w2" => l.WDown, "w3" => l.WUp,
            _ => throw new InvalidOperationException(name),
        };
    }

    /// <summary>Checked against tests/reference/read_llama2c.py's independent reading of the file.</summary>
    [Fact]
    public void Stories260KMatchesThePythonReading()
    {
        string bin = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        var golden = JsonNode.Parse(File.ReadAllText(Path.Combine(GoldenModels, "stories260K.json")))!;
        var m = ModelLoader.Load(bin);
        var c = m.Config;
        var h = golden["header"]!;
        Assert.Equal((int)h["dim"]!, c.Dim);
        Assert.Equal((int)h["hidden_dim"]!, c.HiddenDim);
        Assert.Equal((int)h["n_layers"]!, c.Layers);
        Assert.Equal((int)h["n_heads"]!, c.Heads);
        Assert.Equal((int)h["n_kv_heads"]!, c.KvHeads);
        Assert.Equal((int)h["vocab_size"]!, c.VocabSize);
        Assert.Equal((int)h["seq_len"]!, c.MaxSeqLen);
        Assert.Equal((bool)h["shared_classifier"]!, c.TiedEmbeddings);
        Assert.Equal((64, 172, 5, 8, 4, 8, 512), (c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.HeadDim, c.VocabSize));
        Assert.Same(m.Weights.TokenEmbedding, m.Weights.LmHead);

        var tensors = golden["tensors"]!.AsObject();
        Assert.Equal(2 + 9 * c.Layers, tensors.Count);
        foreach (var (name, t) in tensors)
        {
            var data = ByGoldenName(m, name);
            long count = t!["shape"]!.AsArray().Aggregate(1L, (acc, d) => acc * (int)d!);
            Assert.Equal(count, data.Length);
            foreach (var s in t["samples"]!.AsArray())
                Assert.Equal((float)(double)s![1]!, data[(int)s[0]!]);
            double sum = 0;
            foreach (var x in data) sum += x;
            double expected = (double)t["sum"]!;
            Assert.True(Math.Abs(sum - expected) <= 1e-9 * Math.Max(1, data.Length) , $"{name}: sum {sum} vs python {expected}");
        }
    }
}
