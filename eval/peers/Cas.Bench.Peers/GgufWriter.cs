using System.Text;
using System.Text.Json;
using Cas.Engine.Models;

namespace Cas.Bench.Peers;

/// <summary>
/// Writes one of our models as a GGUF v3 file that llama.cpp loads as a Llama ("llama" architecture), in F32 or F16,
/// with a byte-level BPE vocabulary taken from a Hugging Face tokenizer.json (llama.cpp refuses a GGUF without one).
/// Written from the format's published description (header, typed key/values, tensor infos, aligned data; dims listed
/// innermost first); no other project's code. Only what the benchmark needs: plain Llama (no biases, q/k norms or
/// RoPE scaling), weights of <see cref="Model"/> exactly as our engine holds them.
/// </summary>
static class GgufWriter
{
    const uint Magic = 0x46554747; // "GGUF" read as a little-endian uint32
    const uint Version = 3;
    const int Alignment = 32;

    enum ValueType : uint { UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9 }
    public enum TensorType : uint { F32 = 0, F16 = 1 }

    /// <summary>Throws when llama.cpp's "llama" architecture cannot represent this config exactly.</summary>
    public static void CheckSupported(ModelConfig c)
    {
        if (c.Architecture != Architecture.Llama) throw new NotSupportedException($"the llama.cpp peer needs a Llama config, got {c.Architecture}.");
        if (c.QkvBias || c.AttnOutBias || c.QkNorm) throw new NotSupportedException("the llama.cpp peer supports Llama without attention biases or q/k norms.");
        if (c.RopeScaling != null) throw new NotSupportedException("the llama.cpp peer does not write rope_scaling (llama3) frequency factors; use a config without it.");
    }

    public static void Write(string path, Model model, TensorType weightType, HfVocabulary vocab)
    {
        var c = model.Config;
        CheckSupported(c);
        if (vocab.Tokens.Length != c.VocabSize)
            throw new InvalidDataException($"the tokenizer has {vocab.Tokens.Length} tokens but the config's vocab_size is {c.VocabSize}; pass a tokenizer.json that belongs to the config.");
        var w = model.Weights;

        // Tensors in llama.cpp's names. Matrices are [out, in] row-major = GGUF dims (in, out).
        var tensors = new List<(string Name, long[] Dims, TensorType Type, float[] Data)>
        {
            ("token_embd.weight", [c.Dim, c.VocabSize], weightType, w.TokenEmbedding),
            ("output_norm.weight", [c.Dim], TensorType.F32, w.FinalNorm),
        };
        if (!c.TiedEmbeddings) tensors.Add(("output.weight", [c.Dim, c.VocabSize], weightType, w.LmHead));
        for (int l = 0; l < c.Layers; l++)
        {
            var L = w.Layers[l];
            string p = $"blk.{l}.";
            // llama.cpp's Llama rotates adjacent pairs (2i, 2i+1); HF checkpoints rotate (i, i + head_dim/2). Reordering
            // the rows of Wq and Wk inside each head maps one onto the other (q·k is unchanged: both get the same order).
            bool permute = c.Rope == RopeStyle.Halves;
            tensors.Add((p + "attn_norm.weight", [c.Dim], TensorType.F32, L.AttnNorm));
            tensors.Add((p + "attn_q.weight", [c.Dim, c.QDim], weightType, permute ? HalvesToInterleavedRows(L.Wq, c.Heads, c.HeadDim, c.Dim) : L.Wq));
            tensors.Add((p + "attn_k.weight", [c.Dim, c.KvDim], weightType, permute ? HalvesToInterleavedRows(L.Wk, c.KvHeads, c.HeadDim, c.Dim) : L.Wk));
            tensors.Add((p + "attn_v.weight", [c.Dim, c.KvDim], weightType, L.Wv));
            tensors.Add((p + "attn_output.weight", [c.QDim, c.Dim], weightType, L.Wo));
            tensors.Add((p + "ffn_norm.weight", [c.Dim], TensorType.F32, L.FfnNorm));
            tensors.Add((p + "ffn_gate.weight", [c.Dim, c.HiddenDim], weightType, L.WGate));
            tensors.Add((p + "ffn_up.weight", [c.Dim, c.HiddenDim], weightType, L.WUp));
            tensors.Add((p + "ffn_down.weight", [c.HiddenDim, c.Dim], weightType, L.WDown));
        }

        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        using (var bw = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true))
        {
            bw.Write(Magic); bw.Write(Version);
            bw.Write((ulong)tensors.Count);
            bw.Write(0UL); // key/value count, patched below
            var kv = new MetadataWriter(bw);
            kv.String("general.architecture", "llama");
            kv.String("general.name", $"cas {model.Source}");
            kv.UInt32("general.alignment", Alignment);
            kv.UInt32("general.file_type", weightType == TensorType.F32 ? 0u : 1u); // ALL_F32 / MOSTLY_F16
            kv.UInt32("llama.vocab_size", (uint)c.VocabSize);
            kv.UInt32("llama.context_length", (uint)c.MaxSeqLen);
            kv.UInt32("llama.embedding_length", (uint)c.Dim);
            kv.UInt32("llama.block_count", (uint)c.Layers);
            kv.UInt32("llama.feed_forward_length", (uint)c.HiddenDim);
            kv.UInt32("llama.rope.dimension_count", (uint)c.HeadDim);
            kv.UInt32("llama.attention.head_count", (uint)c.Heads);
            kv.UInt32("llama.attention.head_count_kv", (uint)c.KvHeads);
            kv.UInt32("llama.attention.key_length", (uint)c.HeadDim);
            kv.UInt32("llama.attention.value_length", (uint)c.HeadDim);
            kv.Float32("llama.attention.layer_norm_rms_epsilon", c.NormEps);
            kv.Float32("llama.rope.freq_base", c.RopeTheta);
            kv.String("tokenizer.ggml.model", "gpt2"); // byte-level BPE
            kv.String("tokenizer.ggml.pre", vocab.PreTokenizer);
            kv.StringArray("tokenizer.ggml.tokens", vocab.Tokens);
            kv.Int32Array("tokenizer.ggml.token_type", vocab.TokenTypes);
            kv.StringArray("tokenizer.ggml.merges", vocab.Merges);
            if (c.BosTokenId is int bos) kv.UInt32("tokenizer.ggml.bos_token_id", (uint)bos);
            if (c.EosTokenIds.Length > 0) kv.UInt32("tokenizer.ggml.eos_token_id", (uint)c.EosTokenIds[0]);
            kv.Bool("tokenizer.ggml.add_bos_token", false);
            // The key/value count sits in the header before the pairs: patch it in now that we know it.
            long afterKv = fs.Position;
            fs.Position = 16; bw.Write((ulong)kv.Count); fs.Position = afterKv;

            ulong offset = 0;
            foreach (var t in tensors)
            {
                WriteString(bw, t.Name);
                bw.Write((uint)t.Dims.Length);
                foreach (long d in t.Dims) bw.Write((ulong)d);
                bw.Write((uint)t.Type);
                bw.Write(offset);
                offset = Align(offset + (ulong)t.Data.Length * (t.Type == TensorType.F32 ? 4ul : 2ul));
            }
            Pad(bw, fs.Position);
            long dataStart = fs.Position;
            var buf = new byte[1 << 20];
            foreach (var t in tensors)
            {
                WriteData(fs, t.Data, t.Type, buf);
                Pad(bw, fs.Position - dataStart);
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>
    /// Rows of a [heads·head_dim, cols] projection reordered inside each head so that output (h, 2i) is input row
    /// (h, i) and output (h, 2i+1) is input row (h, i + head_dim/2): the rotate-half layout becomes the adjacent-pairs one.
    /// </summary>
    public static float[] HalvesToInterleavedRows(float[] w, int heads, int headDim, int cols)
    {
        var r = new float[w.Length];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                    Array.Copy(w, ((long)h * headDim + j * half + i) * cols, r, ((long)h * headDim + 2 * i + j) * cols, cols);
        return r;
    }

    static void WriteData(Stream s, float[] data, TensorType type, byte[] buf)
    {
        int per = type == TensorType.F32 ? 4 : 2, n = buf.Length / per;
        for (int i = 0; i < data.Length; i += n)
        {
            int m = Math.Min(n, data.Length - i);
            var src = data.AsSpan(i, m);
            if (type == TensorType.F32)
                System.Runtime.InteropServices.MemoryMarshal.AsBytes(src).CopyTo(buf);
            else
            {
                var dst = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(buf.AsSpan(0, m * 2));
                for (int k = 0; k < m; k++) dst[k] = (Half)src[k]; // round to nearest even
            }
            s.Write(buf, 0, m * per);
        }
    }

    static ulong Align(ulong x) => (x + Alignment - 1) / Alignment * Alignment;

    static void Pad(BinaryWriter bw, long position)
    {
        long pad = (long)Align((ulong)position) - position;
        for (long i = 0; i < pad; i++) bw.Write((byte)0);
    }

    static void WriteString(BinaryWriter bw, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        bw.Write((ulong)bytes.Length); bw.Write(bytes);
    }

    sealed class MetadataWriter(BinaryWriter bw)
    {
        public int Count { get; private set; }
        void Key(string key, ValueType t) { WriteString(bw, key); bw.Write((uint)t); Count++; }
        public void UInt32(string k, uint v) { Key(k, ValueType.UInt32); bw.Write(v); }
        public void Float32(string k, float v) { Key(k, ValueType.Float32); bw.Write(v); }
        public void Bool(string k, bool v) { Key(k, ValueType.Bool); bw.Write((byte)(v ? 1 : 0)); }
        public void String(string k, string v) { Key(k, ValueType.String); WriteString(bw, v); }
        public void StringArray(string k, string[] v)
        {
            Key(k, ValueType.Array); bw.Write((uint)ValueType.String); bw.Write((ulong)v.Length);
            foreach (var s in v) WriteString(bw, s);
        }
        public void Int32Array(string k, int[] v)
        {
            Key(k, ValueType.Array); bw.Write((uint)ValueType.Int32); bw.Write((ulong)v.Length);
            foreach (int x in v) bw.Write(x);
        }
    }
}

/// <summary>A byte-level BPE vocabulary read from a Hugging Face tokenizer.json, in the shape GGUF stores it.</summary>
sealed record HfVocabulary(string[] Tokens, int[] TokenTypes, string[] Merges, string PreTokenizer)
{
    // GGUF token types: 1 normal, 3 control (special added tokens), 4 user-defined (other added tokens).
    public static HfVocabulary Load(string tokenizerJson)
    {
        if (!File.Exists(tokenizerJson)) throw new FileNotFoundException($"{tokenizerJson} not found: llama.cpp needs a vocabulary in the GGUF; pass --tokenizer PATH/tokenizer.json.");
        using var doc = JsonDocument.Parse(File.ReadAllBytes(tokenizerJson));
        // llama.cpp names its pre-tokenizers; SmolLM2's (single digits, then byte-level) is "smollm". The benchmark feeds
        // token ids directly, so only loading depends on it.
        string pre = doc.RootElement.TryGetProperty("pre_tokenizer", out var pt) && pt.GetRawText().Replace(" ", "").Contains("\"individual_digits\":true") ? "smollm" : "gpt2";
        var model = doc.RootElement.GetProperty("model");
        if (model.GetProperty("type").GetString() != "BPE")
            throw new InvalidDataException($"{tokenizerJson}: the llama.cpp peer needs a BPE tokenizer.");
        var vocab = model.GetProperty("vocab");
        int n = 0;
        foreach (var e in vocab.EnumerateObject()) n = Math.Max(n, e.Value.GetInt32() + 1);
        var added = doc.RootElement.TryGetProperty("added_tokens", out var a) ? a : default;
        if (added.ValueKind == JsonValueKind.Array)
            foreach (var t in added.EnumerateArray()) n = Math.Max(n, t.GetProperty("id").GetInt32() + 1);
        var tokens = new string[n]; var types = new int[n];
        Array.Fill(types, 1);
        foreach (var e in vocab.EnumerateObject()) tokens[e.Value.GetInt32()] = e.Name;
        if (added.ValueKind == JsonValueKind.Array)
            foreach (var t in added.EnumerateArray())
            {
                int id = t.GetProperty("id").GetInt32();
                tokens[id] = t.GetProperty("content").GetString()!;
                types[id] = t.TryGetProperty("special", out var sp) && sp.GetBoolean() ? 3 : 4;
            }
        for (int i = 0; i < n; i++)
            if (tokens[i] == null) { tokens[i] = $"[PAD{i}]"; types[i] = 5; } // unused id: GGUF needs every slot named
        var merges = new List<string>();
        foreach (var m in model.GetProperty("merges").EnumerateArray())
            merges.Add(m.ValueKind == JsonValueKind.String ? m.GetString()! : $"{m[0].GetString()} {m[1].GetString()}");
        return new HfVocabulary(tokens, types, merges.ToArray(), pre);
    }
}
