namespace Cas.Engine.Tokenizers;

/// <summary>Text to token ids and back. Encode never adds BOS/EOS; special tokens written in the text are recognised.</summary>
public interface ITokenizer
{
    int VocabSize { get; }
    /// <summary>Beginning-of-sequence id, when the tokenizer has one.</summary>
    int? BosId { get; }
    /// <summary>End-of-sequence id, when the tokenizer has one.</summary>
    int? EosId { get; }
    /// <summary>Ids put before a single sequence by the tokenizer's post-processor (BOS for llama2.c and Llama; empty for SmolLM2/Qwen).</summary>
    IReadOnlyList<int> StartTokens { get; }
    int[] Encode(string text);
    string Decode(ReadOnlySpan<int> ids);
    /// <summary>The id of a special/added token by its content (e.g. "&lt;|im_end|&gt;"), or null.</summary>
    int? SpecialTokenId(string content);
}
