namespace Cas.Engine.Models;

/// <summary>
/// Weights of one decoder layer, fp32, row-major, PyTorch nn.Linear layout [out, in]
/// (so y = x @ W.T).
/// </summary>
public sealed class LayerWeights
{
    public required float[] AttnNorm { get; init; }   // [dim]
    public required float[] Wq { get; init; }         // [heads*head_dim, dim]
    public required float[] Wk { get; init; }         // [kv_heads*head_dim, dim]
    public required float[] Wv { get; init; }         // [kv_heads*head_dim, dim]
    public required float[] Wo { get; init; }         // [dim, heads*head_dim]
    /// <summary>o_proj bias [dim]: only Llama/Qwen3 configs with attention_bias = true (<see cref="ModelConfig.AttnOutBias"/>).</summary>
    public float[]? Bo { get; init; }
    public float[]? Bq { get; init; }                 // [heads*head_dim]    (Qwen2)
    public float[]? Bk { get; init; }                 // [kv_heads*head_dim] (Qwen2)
    public float[]? Bv { get; init; }                 // [kv_heads*head_dim] (Qwen2)
    public float[]? QNorm { get; init; }              // [head_dim]          (Qwen3)
    public float[]? KNorm { get; init; }              // [head_dim]          (Qwen3)
    public required float[] FfnNorm { get; init; }    // [dim]
    public required float[] WGate { get; init; }      // [hidden, dim]  (w1 / gate_proj)
    public required float[] WUp { get; init; }        // [hidden, dim]  (w3 / up_proj)
    public required float[] WDown { get; init; }      // [dim, hidden]  (w2 / down_proj)
}

/// <summary>All weights of a model, fp32 in memory whatever the file's dtype.</summary>
public sealed class ModelWeights
{
    public required float[] TokenEmbedding { get; init; } // [vocab, dim]
    public required LayerWeights[] Layers { get; init; }
    public required float[] FinalNorm { get; init; }      // [dim]
    /// <summary>[vocab, dim]; the same array as <see cref="TokenEmbedding"/> when embeddings are tied.</summary>
    public required float[] LmHead { get; init; }
}

/// <summary>A loaded model: its configuration and weights.</summary>
public sealed class Model
{
    public Model(ModelConfig config, ModelWeights weights, string source)
    {
        config.Validate();
        Config = config;
        Weights = weights;
        Source = source;
    }

    public ModelConfig Config { get; }
    public ModelWeights Weights { get; }
    /// <summary>Where it was loaded from (path), for messages.</summary>
    public string Source { get; }
}
