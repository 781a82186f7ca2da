namespace Cas.Engine.Tests.Engine;

public class SamplerTests
{
    static readonly float[] Logits = [0.1f, 2.0f, -1f, 1.5f, 0.3f, 1.9f, -3f, 0.0f];

    [Fact]
    public void GreedyPicksArgMax() => Assert.Equal(1, new Sampler(SamplingOptions.Greedy, Logits.Length).Sample(Logits));

    [Fact]
    public void TopKOneIsGreedyAtAnyTemperature()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 5f, TopK = 1, Seed = 3 }, Logits.Length);
        for (int i = 0; i < 100; i++) Assert.Equal(1, s.Sample(Logits));
    }

    [Fact]
    public void TopKSamplesOnlyAmongTheKLargest()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 3f, TopK = 3, Seed = 9 }, Logits.Length);
        var seen = new HashSet<int>();
        for (int i = 0; i < 2000; i++) seen.Add(s.Sample(Logits));
        Assert.Equal(new HashSet<int> { 1, 5, 3 }, seen);
    }

    [Fact]
    public void TopPKeepsTheSmallestNucleus()
    {
        // Probabilities at T=1: p(1)≈0.30, p(5)≈0.27, p(3)≈0.18, ... → nucleus for p=0.5 is {1, 5}.
        var s = new Sampler(new SamplingOptions { Temperature = 1f, TopP = 0.5f, Seed = 11 }, Logits.Length);
        var seen = new HashSet<int>();
        for (int i = 0; i < 2000; i++) seen.Add(s.Sample(Logits));
        Assert.Equal(new HashSet<int> { 1, 5 }, seen);
    }

    [Fact]
    public void FrequenciesFollowTheSoftmax()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 1f, Seed = 5 }, Logits.Length);
        var counts = new int[Logits.Length];
        const int N = 200_000;
        for (int i = 0; i < N; i++) counts[s.Sample(Logits)]++;
        double z = Logits.Sum(l => Math.Exp(l));
        for (int i = 0; i < Logits.Length; i++)
        {
            double p = Math.Exp(Logits[i]) / z;
            // 5 standard deviations of a binomial frequency.
            Assert.InRange(counts[i] / (double)N, p - 5 * Math.Sqrt(p * (1 - p) / N), p + 5 * Math.Sqrt(p * (1 - p) / N));
        }
    }

    [Fact]
    public void SameSeedSameDraws()
    {
        var o = new SamplingOptions { Temperature = 1.2f, TopP = 0.9f, Seed = 77 };
        var a = new Sampler(o, Logits.Length); var b = new Sampler(o, Logits.Length);
        for (int i = 0; i < 200; i++) Assert.Equal(a.Sample(Logits), b.Sample(Logits));
    }

    [Theory]
    [InlineData(-1f, 0, 1f)]
    [InlineData(1f, -2, 1f)]
    [InlineData(1f, 0, 0f)]
    [InlineData(1f, 0, 1.5f)]
    public void BadOptionsAreRejected(float t, int k, float p) =>
        Assert.Throws<InvalidRequestException>(() => new Sampler(new SamplingOptions { Temperature = t, TopK = k, TopP = p }, 8));
}
