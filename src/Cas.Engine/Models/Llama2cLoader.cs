using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Cas.Engine.Models;

/// <summary>
/// Loads a llama2.c "v0" (legacy) checkpoint: a header of 7 little-endian int32
/// (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
/// means the classifier is not shared and follows at the end), then fp32 weights:
/// token_embedding [vocab, dim]; rms_att [L, dim]; wq [L, dim, dim]; wk [L, kv_dim, dim];
/// wv [L, kv_dim, dim]; wo [L, dim, dim]; rms_ffn [L, dim]; w1 [L, hidden, dim];
/// w2 [L, dim, hidden]; w3 [L, hidden, dim]; rms_final [dim]; freq_cis_real and freq_cis_imag
/// [seq_len, head_dim/2] (legacy, skipped); then wcls [vocab, dim] when unshared.
/// Matrices are [out, in], the nn.Linear layout used by <see cref="LayerWeights"/>.
/// </summary>
public static class Llama2cLoader
{
    public const int HeaderBytes = 7 * sizeof(int);
    const int VersionedMagic = 0x616b3432; // "ak42": the header of llama2.c's later (v1+) export formats

    public static Model Load(string binPath)
    {
        ArgumentNullException.ThrowIfNull(binPath);
        string path = Path.GetFullPath(binPath);
        FileStream fs;
        try
        {
            fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ModelFormatException($"llama2.c checkpoint not found: {path}", e);
        }
        using (fs)
        {
            long fileLength = fs.Length;
            if (fileLength < HeaderBytes)
                throw new ModelFormatException($"{path} is {fileLength} bytes; a llama2.c checkpoint starts with a {HeaderBytes}-byte header.");
            var h = new byte[HeaderBytes];
            fs.ReadExactly(h);
            int Hdr(int i) => BinaryPrimitives.ReadInt32LittleEndian(h.AsSpan(4 * i));
            int dim = Hdr(0), hidden = Hdr(1), layers = Hdr(2), heads = Hdr(3), kvHeads = Hdr(4), rawVocab = Hdr(5), seqLen = Hdr(6);
            if (dim == VersionedMagic)
                throw new ModelFormatException($"{path} is a versioned llama2.c export (magic 'ak42'); only the legacy v0 format is supported (export with --version 0).");
            string header = $"dim={dim}, hidden_dim={hidden}, n_layers={layers}, n_heads={heads}, n_kv_heads={kvHeads}, vocab_size={rawVocab}, seq_len={seqLen}";
            if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kvHeads <= 0 || rawVocab == 0 || rawVocab == int.MinValue || seqLen <= 0
                || dim % heads != 0 || heads % kvHeads != 0 || (dim / heads) % 2 != 0)
                throw new ModelFormatException($"{path}: implausible llama2.c header ({header}); not a llama2.c v0 checkpoint.");

            bool shared = rawVocab > 0;
            int vocab = Math.Abs(rawVocab);
            int headDim = dim / heads;
            long kvDim = (long)kvHeads * headDim;
            long perLayer = 2L * dim + 2L * dim * dim + 2L * kvDim * dim + 3L * hidden * dim;
            long floats = (long)vocab * dim + layers * perLayer + dim + (long)seqLen * headDim + (shared ? 0 : (long)vocab * dim);
            long expected = HeaderBytes + 4 * floats;

            var r = new Reader(fs, path, fileLength, expected, header);
            WeightTensor embedding = r.Read("token_embedding", (long)vocab * dim);
            float[][] PerLayer(string name, long count)
            {
                var a = new float[layers][];
                for (int l = 0; l < layers; l++) a[l] = r.Read($"{name}[layer {l}]", count);
                return a;
            }
            var rmsAtt = PerLayer("rms_att", dim);
            var wq = PerLayer("wq", (long)dim * dim);
            var wk = PerLayer("wk", kvDim * dim);
            var wv = PerLayer("wv", kvDim * dim);
            var wo = PerLayer("wo", (long)dim * dim);
            var rmsFfn = PerLayer("rms_ffn", dim);
            var w1 = PerLayer("w1", (long)hidden * dim);
            var w2 = PerLayer("w2", (long)dim * hidden);
            var w3 = PerLayer("w3", (long)hidden * dim);
            var rmsFinal = r.Read("rms_final", dim);
            r.Skip("freq_cis_real", (long)seqLen * headDim / 2);
            r.Skip("freq_cis_imag", (long)seqLen * headDim / 2);
            var wcls = shared ? embedding : (WeightTensor)r.Read("wcls", (long)vocab * dim);
            if (fileLength != expected)
                throw new ModelFormatException(
                    $"{path} has {fileLength - expected} bytes after the last tensor (expected {expected} bytes for {header}, found {fileLength}); the header does not match the weights.");

            var layerWeights = new LayerWeights[layers];
            for (int l = 0; l < layers; l++)
                layerWeights[l] = new LayerWeights
                {
                    AttnNorm = rmsAtt[l], Wq = wq[l], Wk = wk[l], Wv = wv[l], Wo = wo[l],
                    FfnNorm = rmsFfn[l], WGate = w1[l], WDown = w2[l], WUp = w3[l],
                };
            var config = new ModelConfig
            {
                Architecture = Architecture.Llama,
                Dim = dim,
                HiddenDim = hidden,
                Layers = layers,
                Heads = heads,
                KvHeads = kvHeads,
                HeadDim = headDim,
                VocabSize = vocab,
                MaxSeqLen = seqLen,
                RopeTheta = 10000f,
                NormEps = 1e-5f,
                Rope = RopeStyle.Interleaved,
                TiedEmbeddings = shared,
                BosTokenId = 1,
                EosTokenIds = [2],
            };
            var weights = new ModelWeights { TokenEmbedding = embedding, Layers = layerWeights, FinalNorm = rmsFinal, LmHead = wcls };
            return new Model(config, weights, path);
        }
    }

    /// <summary>Sequential fp32 reads with truncation messages that name the tensor.</summary>
    sealed class Reader(FileStream fs, string path, long fileLength, long expected, string header)
    {
        long position = HeaderBytes;

        void Need(string name, long bytes)
        {
            if (position + bytes > fileLength)
                throw new ModelFormatException(
                    $"{path} is truncated: reading '{name}' needs bytes {position}..{position + bytes} but the file has only {fileLength} bytes " +
                    $"(expected {expected} bytes for {header}).");
        }

        public float[] Read(string name, long count)
        {
            if (count > Array.MaxLength)
                throw new ModelFormatException($"{path}: tensor '{name}' has {count} elements, more than one array can hold ({header}).");
            Need(name, 4 * count);
            var a = WeightMemory.Allocate<float>((int)count);
            fs.ReadExactly(MemoryMarshal.AsBytes(a.AsSpan()));
            if (!BitConverter.IsLittleEndian)
            {
                var u = MemoryMarshal.Cast<float, uint>(a.AsSpan());
                BinaryPrimitives.ReverseEndianness(u, u);
            }
            position += 4 * count;
            return a;
        }

        public void Skip(string name, long count)
        {
            Need(name, 4 * count);
            position += 4 * count;
            fs.Seek(position, SeekOrigin.Begin);
        }
    }
}
