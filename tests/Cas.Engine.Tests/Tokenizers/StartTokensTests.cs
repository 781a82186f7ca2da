using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>What the tokenizer's post-processor puts before a sequence decides whether generation prepends BOS.</summary>
public class StartTokensTests
{
    [Fact]
    public void Llama2cStartsWithBos() =>
        Assert.Equal([1], TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin")).StartTokens);

    [Fact]
    public void SmolLM2AddsNothing() =>
        Assert.Empty(TokenizerLoader.Load(TestPaths.RequireShared("models/smollm2-135m-instruct-tokenizer/tokenizer.json")).StartTokens);

    [Fact]
    public void TemplateProcessingSpecialTokensBeforeTheSequenceAreStartTokens()
    {
        const string json = """
        {"model":{"type":"BPE","vocab":{"<s>":0,"a":1,"</s>":2},"merges":[]},
         "added_tokens":[{"id":0,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}],
         "post_processor":{"type":"TemplateProcessing",
           "single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"</s>","type_id":0}}],
           "special_tokens":{}}}
        """;
        var tok = HfTokenizer.FromJson(json);
        Assert.Equal([0], tok.StartTokens);
        Assert.Equal([1], tok.Encode("a"));
    }
}
