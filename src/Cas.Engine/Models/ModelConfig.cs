namespace Cas.Engine.Models;

public enum Architecture { Llama, Qwen2, Qwen3 }

/// <summary>How rotary pairs are formed inside a head.</summary>
public enum RopeStyle
{
    /// <summary>llama2.c / GPT-J: pairs (0,1), (2,3), ... rotate together.</summary>
    Interleaved,
    /// <summary>Hugging Face / NeoX: pairs (i, i + head_dim/2) rotate together.</summary>
    Halves,
}

/// <summary>Llama 3.1-style frequency scaling (`rope_scaling.rope_type == "llama3"`).</summary>
public sealed record Llama3RopeScaling(float Factor, float LowFreqFactor, float HighFreqFactor, int OriginalMaxPositionEmbeddings);

/// <summary>Shape and hyper-parameters of a decoder-only transformer. Sizes are element counts.</summary>
public sealed record ModelConfig
{
    public required Architecture Architecture { get; init; }
    /// <summary>Residual width (hidden_size).</summary>
    public required int Dim { get; init; }
    /// <summary>MLP width (intermediate_size).</summary>
    public required int HiddenDim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>Longest sequence (prefix + tokens) the model accepts (max_position_embeddings).</summary>
    public required int MaxSeqLen { get; init; }
    public float RopeTheta { get; init; } = 10000f;
    public float NormEps { get; init; } = 1e-5f;
    public RopeStyle Rope { get; init; } = RopeStyle.Halves;
    public Llama3RopeScaling? RopeScaling { get; init; }
    public bool TiedEmbeddings { get; init; }
    /// <summary>q/k/v projections carry biases (Qwen2 always; Llama/Qwen3 when attention_bias = true).</summary>
    public bool QkvBias { get; init; }
    /// <summary>Llama/Qwen3 with attention_bias = true: o_proj carries a bias too (<see cref="LayerWeights.Bo"/>).</summary>
    public bool AttnOutBias { get; init; }
    /// <summary>Qwen3: per-head RMSNorm on q and k before RoPE.</summary>
    public bool QkNorm { get; init; }
    public int? BosTokenId { get; init; }
    public int[] EosTokenIds { get; init; } = [];

    public int QDim => Heads * HeadDim;
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Throws <see cref="ModelFormatException"/> naming the first inconsistent field.</summary>
    public void Validate()
    {
        static void Positive(int v, string name) { if (v <= 0) throw new ModelFormatException($"config field '{name}' must be positive, got {v}."); }
        Positive(Dim, "hidden_size"); Positive(HiddenDim, "intermediate_size"); Positive(Layers, "num_hidden_layers");
        Positive(Heads, "num_attention_heads"); Positive(KvHeads, "num_key_value_heads"); Positive(HeadDim, "head_dim");
        Positive(VocabSize, "vocab_size"); Positive(MaxSeqLen, "max_position_embeddings");
        if (Heads % KvHeads != 0) throw new ModelFormatException($"num_attention_heads ({Heads}) must be a multiple of num_key_value_heads ({KvHeads}).");
        if (HeadDim % 2 != 0) throw new ModelFormatException($"head_dim must be even for rotary embeddings, got {HeadDim}.");
        if (!(NormEps > 0)) throw new ModelFormatException($"rms_norm_eps must be positive, got {NormEps}.");
        if (!(RopeTheta > 0)) throw new ModelFormatException($"rope_theta must be positive, got {RopeTheta}.");
    }
}
