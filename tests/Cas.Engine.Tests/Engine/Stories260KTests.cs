using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Engine;

/// <summary>The real pretrained checkpoint reproduces its documented greedy sample.</summary>
public class Stories260KTests
{
    // From ../shared/models/README.md (the reference implementation's documented sample).
    const string Known = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
                         "One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

    [Fact]
    public void GreedyFromBosReproducesTheKnownStory()
    {
        var model = ModelLoader.Load(TestPaths.RequireShared("models/stories260K/stories260K.bin"));
        var tok = TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin"));
        var gen = new Generator(new Transformer(model));
        var r = gen.Generate([new GenerationRequest([tok.BosId!.Value]) { MaxTokens = 200 }]);
        var text = tok.Decode(r[0].Tokens);
        Assert.StartsWith(Known, text);
    }

    [Fact]
    public void BatchedDecodingMatchesSequentialOnTheRealModel()
    {
        var model = ModelLoader.Load(TestPaths.RequireShared("models/stories260K/stories260K.bin"));
        var tok = TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin"));
        var gen = new Generator(new Transformer(model));
        string[] prompts = ["Once upon a time", "Tom had a red", "The cat", "One day, Lily went to the park and"];
        var reqs = prompts.Select((p, i) => new GenerationRequest([1, .. tok.Encode(p)])
        {
            MaxTokens = 40, Sampling = i % 2 == 0 ? SamplingOptions.Greedy : new SamplingOptions { Temperature = 1f, Seed = (ulong)i },
        }).ToList();
        var batched = gen.Generate(reqs);
        for (int i = 0; i < reqs.Count; i++) Assert.Equal(gen.Generate([reqs[i]])[0].Tokens, batched[i].Tokens);
    }
}
