using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Cas.Engine.Models;

/// <summary>
/// A content hash identifying a model: lowercase hex SHA-256 over a canonical description of the
/// config and the fp32 little-endian bytes of every weight, in a fixed order. It does not depend on
/// where the model was stored (path, file names, sharding), only on what the forward pass computes
/// with; the same values stored as F32 or BF16 give the same fingerprint. Cartridges record it so
/// they are only used with the model they were trained on.
/// </summary>
public static class ModelFingerprint
{
    public static string Compute(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(CanonicalConfig(model.Config)));

        var w = model.Weights;
        Append(hash, "token_embedding", w.TokenEmbedding);
        for (int i = 0; i < w.Layers.Length; i++)
        {
            var l = w.Layers[i];
            string p = $"layers.{i}.";
            Append(hash, p + "attn_norm", l.AttnNorm);
            Append(hash, p + "wq", l.Wq);
            Append(hash, p + "wk", l.Wk);
            Append(hash, p + "wv", l.Wv);
            Append(hash, p + "wo", l.Wo);
            Append(hash, p + "bq", l.Bq);
            Append(hash, p + "bk", l.Bk);
            Append(hash, p + "bv", l.Bv);
            Append(hash, p + "bo", l.Bo);
            Append(hash, p + "q_norm", l.QNorm);
            Append(hash, p + "k_norm", l.KNorm);
            Append(hash, p + "ffn_norm", l.FfnNorm);
            Append(hash, p + "w_gate", l.WGate);
            Append(hash, p + "w_up", l.WUp);
            Append(hash, p + "w_down", l.WDown);
        }
        Append(hash, "final_norm", w.FinalNorm);
        // A tied head is the embedding itself: already hashed, and recorded in the config string.
        if (!w.LmHead.SameStorage(w.TokenEmbedding)) Append(hash, "lm_head", w.LmHead);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>Every field that changes the forward pass, in a fixed order and invariant format.</summary>
    public static string CanonicalConfig(ModelConfig c)
    {
        static string F(float f) => BitConverter.SingleToUInt32Bits(f).ToString("x8", CultureInfo.InvariantCulture);
        var sb = new StringBuilder("cas-model-v1;");
        sb.Append(CultureInfo.InvariantCulture,
            $"arch={c.Architecture};dim={c.Dim};hidden={c.HiddenDim};layers={c.Layers};heads={c.Heads};kv_heads={c.KvHeads};head_dim={c.HeadDim};");
        sb.Append(CultureInfo.InvariantCulture,
            $"vocab={c.VocabSize};max_seq={c.MaxSeqLen};rope_theta={F(c.RopeTheta)};norm_eps={F(c.NormEps)};rope={c.Rope};");
        if (c.RopeScaling is { } s)
            sb.Append(CultureInfo.InvariantCulture,
                $"llama3_scaling={F(s.Factor)},{F(s.LowFreqFactor)},{F(s.HighFreqFactor)},{s.OriginalMaxPositionEmbeddings};");
        sb.Append(CultureInfo.InvariantCulture,
            $"tied={c.TiedEmbeddings};qkv_bias={c.QkvBias};o_bias={c.AttnOutBias};qk_norm={c.QkNorm};");
        return sb.ToString();
    }

    /// <summary>A matrix hashes its fp32 values whatever precision it is held in (widening is exact), so a bf16 file
    /// loaded as fp32 or kept in bf16 has one fingerprint.</summary>
    static void Append(IncrementalHash hash, string name, WeightTensor data)
    {
        if (data.Precision == WeightPrecision.Float32) { Append(hash, name, data.Floats); return; }
        hash.AppendData(Encoding.UTF8.GetBytes($"{name}:{data.Length};"));
        var tmp = new float[Math.Min(data.Length, 1 << 16)];
        var tmpBits = new uint[tmp.Length];
        for (int i = 0; i < data.Length; i += tmp.Length)
        {
            int n = Math.Min(tmp.Length, data.Length - i);
            data.Widen(i, tmp.AsSpan(0, n));
            if (BitConverter.IsLittleEndian) hash.AppendData(MemoryMarshal.AsBytes(tmp.AsSpan(0, n)));
            else
            {
                System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(MemoryMarshal.Cast<float, uint>(tmp.AsSpan(0, n)), tmpBits.AsSpan(0, n));
                hash.AppendData(MemoryMarshal.AsBytes(tmpBits.AsSpan(0, n)));
            }
        }
    }

    static void Append(IncrementalHash hash, string name, float[]? data)
    {
        // Name and length frame each array so that no two weight layouts hash the same bytes.
        hash.AppendData(Encoding.UTF8.GetBytes($"{name}:{(data is null ? -1 : data.Length)};"));
        if (data is null) return;
        if (BitConverter.IsLittleEndian)
        {
            hash.AppendData(MemoryMarshal.AsBytes(data.AsSpan()));
            return;
        }
        var tmp = new uint[Math.Min(data.Length, 1 << 16)];
        for (int i = 0; i < data.Length; i += tmp.Length)
        {
            int n = Math.Min(tmp.Length, data.Length - i);
            System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(MemoryMarshal.Cast<float, uint>(data.AsSpan(i, n)), tmp.AsSpan(0, n));
            hash.AppendData(MemoryMarshal.AsBytes(tmp.AsSpan(0, n)));
        }
    }
}
