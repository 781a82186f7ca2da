namespace Cas.Engine.Models;

/// <summary>
/// Weights of one decoder layer, row-major, PyTorch nn.Linear layout [out, in] (so y = x @ W.T). The matrices are
/// <see cref="WeightTensor"/>s (fp32, or bf16/fp16 kept from the file); norms and biases are fp32.
/// </summary>
public sealed class LayerWeights
{
    public required float[] AttnNorm { get; init; }   // [dim]
    public required WeightTensor Wq { get; init; }         // [heads*head_dim, dim]
    public required WeightTensor Wk { get; init; }         // [kv_heads*head_dim, dim]
    public required WeightTensor Wv { get; init; }         // [kv_heads*head_dim, dim]
    public required WeightTensor Wo { get; init; }         // [dim, heads*head_dim]
    /// <summary>o_proj bias [dim]: only Llama/Qwen3 configs with attention_bias = true (<see cref="ModelConfig.AttnOutBias"/>).</summary>
    public float[]? Bo { get; init; }
    public float[]? Bq { get; init; }                 // [heads*head_dim]    (Qwen2)
    public float[]? Bk { get; init; }                 // [kv_heads*head_dim] (Qwen2)
    public float[]? Bv { get; init; }                 // [kv_heads*head_dim] (Qwen2)
    public float[]? QNorm { get; init; }              // [head_dim]          (Qwen3)
    public float[]? KNorm { get; init; }              // [head_dim]          (Qwen3)
    public required float[] FfnNorm { get; init; }    // [dim]
    public required WeightTensor WGate { get; init; }      // [hidden, dim]  (w1 / gate_proj)
    public required WeightTensor WUp { get; init; }        // [hidden, dim]  (w3 / up_proj)
    public required WeightTensor WDown { get; init; }      // [dim, hidden]  (w2 / down_proj)

    /// <summary>The seven weight matrices (q, k, v, o, gate, up, down).</summary>
    public WeightTensor[] Matrices => [Wq, Wk, Wv, Wo, WGate, WUp, WDown];
}

/// <summary>All weights of a model: matrices fp32 or 16-bit (<see cref="WeightTensor"/>), norms and biases fp32.</summary>
public sealed class ModelWeights
{
    public required WeightTensor TokenEmbedding { get; init; } // [vocab, dim]
    public required LayerWeights[] Layers { get; init; }
    public required float[] FinalNorm { get; init; }      // [dim]
    /// <summary>[vocab, dim]; the same array as <see cref="TokenEmbedding"/> when embeddings are tied.</summary>
    public required WeightTensor LmHead { get; init; }

    /// <summary>Bytes held by the weight matrices (embedding, projections, MLP, LM head; a tied head counted once).</summary>
    public long MatrixBytes
    {
        get
        {
            long n = TokenEmbedding.Bytes + (LmHead.SameStorage(TokenEmbedding) ? 0 : LmHead.Bytes);
            foreach (var l in Layers) foreach (var m in l.Matrices) n += m.Bytes;
            return n;
        }
    }

    /// <summary>The same weights with every matrix stored in <paramref name="precision"/> (rounded to nearest even when
    /// narrowing; a tied LM head stays tied). Norms and biases are shared, not copied.</summary>
    public ModelWeights ToPrecision(WeightPrecision precision)
    {
        var emb = TokenEmbedding.ToPrecision(precision);
        var layers = new LayerWeights[Layers.Length];
        for (int i = 0; i < layers.Length; i++)
        {
            var l = Layers[i];
            layers[i] = new LayerWeights
            {
                AttnNorm = l.AttnNorm, FfnNorm = l.FfnNorm, Bq = l.Bq, Bk = l.Bk, Bv = l.Bv, Bo = l.Bo, QNorm = l.QNorm, KNorm = l.KNorm,
                Wq = l.Wq.ToPrecision(precision), Wk = l.Wk.ToPrecision(precision), Wv = l.Wv.ToPrecision(precision),
                Wo = l.Wo.ToPrecision(precision), WGate = l.WGate.ToPrecision(precision), WUp = l.WUp.ToPrecision(precision),
                WDown = l.WDown.ToPrecision(precision),
            };
        }
        var head = LmHead.SameStorage(TokenEmbedding) ? emb : LmHead.ToPrecision(precision);
        return new ModelWeights { TokenEmbedding = emb, Layers = layers, FinalNorm = FinalNorm, LmHead = head };
    }
}

/// <summary>Precision a weight matrix is held in.</summary>
public enum WeightPrecision { Float32, BFloat16, Float16 }

/// <summary>How a loader keeps weight matrices: widened to fp32, or in the file's precision (bf16/fp16 files stay 16-bit).</summary>
public enum WeightStorage { Float32, File }

/// <summary>
/// A weight matrix's values, flat and row-major, in their stored precision: fp32, or bf16/fp16 bit patterns that the
/// kernels widen as they read them (<see cref="Compute.WeightProduct"/>), so a 16-bit model reads and holds half the bytes.
/// An fp32 array converts implicitly.
/// </summary>
public sealed class WeightTensor
{
    readonly float[]? _floats;
    readonly ushort[]? _bits;

    public WeightTensor(float[] values)
    {
        _floats = values ?? throw new ArgumentNullException(nameof(values));
        Precision = WeightPrecision.Float32; Length = values.Length;
    }

    /// <summary>16-bit values as raw bit patterns (<paramref name="precision"/> BFloat16 or Float16).</summary>
    public WeightTensor(ushort[] bits, WeightPrecision precision)
    {
        if (precision == WeightPrecision.Float32) throw new ArgumentException("16-bit patterns need BFloat16 or Float16.", nameof(precision));
        _bits = bits ?? throw new ArgumentNullException(nameof(bits));
        Precision = precision; Length = bits.Length;
    }

    public static implicit operator WeightTensor(float[] values) => new(values);

    /// <summary>The fp32 array, for code written when every matrix was a float[] (throws for a 16-bit matrix, like
    /// <see cref="Floats"/>).</summary>
    public static implicit operator float[](WeightTensor tensor) => tensor.Floats;

    /// <summary>Whether both hold the very same array (a tied LM head made from the embedding's float[] twice).</summary>
    public bool SameStorage(WeightTensor other) =>
        ReferenceEquals(this, other) || _floats != null && ReferenceEquals(_floats, other._floats) || _bits != null && ReferenceEquals(_bits, other._bits);

    public WeightPrecision Precision { get; }
    public int Length { get; }
    public long Bytes => Precision == WeightPrecision.Float32 ? 4L * Length : 2L * Length;

    /// <summary>The fp32 array (fp32 tensors only).</summary>
    public float[] Floats => _floats ?? throw new InvalidOperationException($"this weight matrix is held as {Precision}; use Widen or ToFloatArray, or load the model with fp32 weights.");

    /// <summary>Value i as fp32 (widened when 16-bit).</summary>
    public float this[int i] => _floats != null ? _floats[i]
        : Precision == WeightPrecision.BFloat16 ? HalfPrecision.BF16ToFloat(_bits![i]) : HalfPrecision.F16ToFloat(_bits![i]);

    /// <summary>The 16-bit patterns (16-bit tensors only).</summary>
    public ushort[] Bits => _bits ?? throw new InvalidOperationException("this weight matrix is held as fp32.");

    /// <summary>dst = values[start .. start + dst.Length) as fp32 (exact).</summary>
    public void Widen(int start, Span<float> dst)
    {
        if (_floats != null) { _floats.AsSpan(start, dst.Length).CopyTo(dst); return; }
        var src = _bits.AsSpan(start, dst.Length);
        if (Precision == WeightPrecision.BFloat16) HalfPrecision.BF16ToFloat(src, dst); else HalfPrecision.F16ToFloat(src, dst);
    }

    public float[] ToFloatArray()
    {
        var a = WeightMemory.Allocate<float>(Length);
        Widen(0, a);
        return a;
    }

    /// <summary>This tensor in <paramref name="precision"/> (itself when it already is).</summary>
    public WeightTensor ToPrecision(WeightPrecision precision)
    {
        if (precision == Precision) return this;
        var f = _floats ?? ToFloatArray();
        if (precision == WeightPrecision.Float32) return new WeightTensor(f);
        var bits = WeightMemory.Allocate<ushort>(Length);
        if (precision == WeightPrecision.BFloat16) HalfPrecision.FloatToBF16(f, bits); else HalfPrecision.FloatToF16(f, bits);
        return new WeightTensor(bits, precision);
    }
}

/// <summary>A loaded model: its configuration and weights.</summary>
public sealed class Model
{
    public Model(ModelConfig config, ModelWeights weights, string source)
    {
        config.Validate();
        Config = config;
        Weights = weights;
        WeightMemory.Collapse(weights);
        Source = source;
    }

    public ModelConfig Config { get; }
    public ModelWeights Weights { get; }
    /// <summary>Where it was loaded from (path), for messages.</summary>
    public string Source { get; }
}
