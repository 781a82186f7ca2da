using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Training.Tests;

/// <summary>The real stories260K checkpoint and tokenizer from ../shared (the test skips when absent).</summary>
static class Stories260K
{
    public static (Model Model, ITokenizer Tok, string ModelPath, string TokPath) Load()
    {
        string mp = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        string tp = TestPaths.RequireShared("models/stories260K/tok512.bin");
        return (ModelLoader.Load(mp), TokenizerLoader.Load(tp), mp, tp);
    }

    /// <summary>A story the model samples itself from BOS (temperature 0.8): a document it can read but has not seen.</summary>
    public static string SampledStory(Model model, ITokenizer tok, int tokens = 300, ulong seed = 7)
    {
        var r = new Generator(new Transformer(model)).Generate([new GenerationRequest([tok.BosId!.Value])
        {
            MaxTokens = tokens, Sampling = new SamplingOptions { Temperature = 0.8f, Seed = seed },
        }]);
        return tok.Decode(r[0].Tokens);
    }
}
