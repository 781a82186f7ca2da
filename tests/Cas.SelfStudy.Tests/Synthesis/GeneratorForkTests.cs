using Cas.Engine;
using Cas.Engine.Models;

namespace Cas.SelfStudy.Tests.Synthesis;

/// <summary>
/// The generator features self-study relies on: forking a prefilled cache, stopping from a callback, batch-independent prefill.
/// All run on the managed kernels: the tiny model needs no BLAS library, and native BLAS thread pools spinning next to
/// .NET's on two busy cores made these millisecond tests take seconds.
/// </summary>
[Collection(GlobalBlasCollection.Name)]
public class GeneratorForkTests
{
    static int[] Tokens(int n, int vocab, int seed)
    {
        var r = new DeterministicRng((ulong)seed);
        var a = new int[n];
        for (int i = 0; i < n; i++) a[i] = r.NextInt(vocab);
        return a;
    }

    /// <summary>Runs the requests and records every callback's logits per request.</summary>
    static (IReadOnlyList<GenerationResult> Results, List<float[]>[] Logits) Generate(Model model, IReadOnlyList<GenerationRequest> requests)
    {
        var logits = new List<float[]>[requests.Count];
        for (int i = 0; i < logits.Length; i++) logits[i] = [];
        var results = new Generator(new Transformer(model)).Generate(requests, (r, _, l) => logits[r].Add(l.ToArray()));
        return (results, logits);
    }

    [Fact]
    public void ForkingAPrefilledPrefixGivesTheSameTokensAsTheWholePrompt()
    {
        using var blas = new ManagedBlas();
        var model = Kit.TinyChatModel;
        var prefix = Tokens(300, 259, 1); // longer than one transformer chunk
        var shared = new KvCache(model.Config, prefix.Length);
        new Transformer(model).Forward([shared], [prefix], default);

        var suffixes = new[] { Tokens(5, 259, 2), Tokens(40, 259, 3), Tokens(1, 259, 4) };
        var forked = suffixes.Select(s => new GenerationRequest(s) { Fork = shared, MaxTokens = 12 }).ToList();
        var whole = suffixes.Select(s => new GenerationRequest([.. prefix, .. s]) { MaxTokens = 12 }).ToList();
        var (a, la) = Generate(model, forked);
        var (b, lb) = Generate(model, whole);
        for (int i = 0; i < suffixes.Length; i++)
        {
            Assert.Equal(b[i].Tokens, a[i].Tokens);
            Assert.Equal(b[i].Finish, a[i].Finish);
            for (int t = 0; t < la[i].Count; t++)
                for (int v = 0; v < la[i][t].Length; v++) Assert.True(Math.Abs(lb[i][t][v] - la[i][t][v]) <= 1e-4 * (1 + Math.Abs(lb[i][t][v])), $"request {i} step {t} logit {v}");
        }
        // The shared cache is only read.
        Assert.Equal(prefix.Length, shared.Length);
    }

    [Fact]
    public void PrefillDoesNotDependOnTheOtherPromptsInTheBatch()
    {
        // With row-independent kernels, a request's logits are bit-identical alone and inside any batch.
        using var blas = new ManagedBlas();
        var model = Kit.TinyChatModel;
        var prompts = new[] { Tokens(100, 259, 5), Tokens(200, 259, 6), Tokens(30, 259, 7), Tokens(260, 259, 8), Tokens(9, 259, 9) };
        GenerationRequest Req(int[] p) => new(p) { MaxTokens = 6, Sampling = new SamplingOptions { Temperature = 0.8f, Seed = (ulong)p.Length } };
        var (batch, batchLogits) = Generate(model, prompts.Select(Req).ToList());
        for (int i = 0; i < prompts.Length; i++)
        {
            var (alone, aloneLogits) = Generate(model, [Req(prompts[i])]);
            Assert.Equal(alone[0].Tokens, batch[i].Tokens);
            Assert.Equal(aloneLogits[0].Count, batchLogits[i].Count);
            for (int t = 0; t < aloneLogits[0].Count; t++) Assert.Equal(aloneLogits[0][t], batchLogits[i][t]);
        }
    }

    [Fact]
    public void StopAfterEndsTheRequestKeepingTheToken()
    {
        using var blas = new ManagedBlas();
        var model = Kit.TinyChatModel;
        var free = new Generator(new Transformer(model)).Generate([new GenerationRequest(Tokens(8, 259, 10)) { MaxTokens = 10 }], cancel: TestContext.Current.CancellationToken)[0];
        Assert.Equal(10, free.Tokens.Length);
        int stopAt = free.Tokens[3];
        int firstIndex = Array.IndexOf(free.Tokens, stopAt);
        var stopped = new Generator(new Transformer(model)).Generate(
            [new GenerationRequest(Tokens(8, 259, 10)) { MaxTokens = 10, StopAfter = t => t[^1] == stopAt }], cancel: TestContext.Current.CancellationToken)[0];
        Assert.Equal(FinishReason.Stop, stopped.Finish);
        Assert.Equal(free.Tokens[..(firstIndex + 1)], stopped.Tokens);
    }

    [Fact]
    public void RefusesForkWithPrefixAndForksOfAnotherModel()
    {
        using var blas = new ManagedBlas();
        var model = Kit.TinyChatModel;
        var shared = new KvCache(model.Config, 4);
        new Transformer(model).Forward([shared], [[1, 2, 3, 4]], default);
        var g = new Generator(new Transformer(model));
        var e = Assert.Throws<InvalidRequestException>(() => g.Generate([new GenerationRequest([5], KvPrefix.Zeros(model.Config, 2)) { Fork = shared }], cancel: TestContext.Current.CancellationToken));
        Assert.Contains("fork", e.Message);
        var other = RandomWeights.Create(model.Config with { KvHeads = 4 }, seed: 1);
        var foreign = new KvCache(other.Config, 4);
        Assert.Throws<InvalidRequestException>(() => g.Generate([new GenerationRequest([5]) { Fork = foreign }], cancel: TestContext.Current.CancellationToken));
        // A fork that leaves no room for the prompt is refused with the context size.
        var full = new KvCache(model.Config, model.Config.MaxSeqLen);
        new Transformer(model).Forward([full], [Tokens(model.Config.MaxSeqLen, 259, 3)], default);
        var e2 = Assert.Throws<InvalidRequestException>(() => g.Generate([new GenerationRequest([5]) { Fork = full }], cancel: TestContext.Current.CancellationToken));
        Assert.Contains("context", e2.Message);
    }
}
