using Cas.Engine;

namespace Cas.Training.Tests.Trainer;

public class OptimizationTests
{
    static readonly float[] P0 = [0.5f, -1.25f, 2.0f, 0.0f, 3.5f, -0.75f];
    static readonly float[][] Grads =
    [
        [0.1f, -0.2f, 0.3f, -0.4f, 0.5f, 1e-6f],
        [-0.05f, 0.4f, 0.0f, 0.2f, -0.7f, 2.0f],
        [0.3f, 0.3f, -0.3f, 0.3f, 0.0f, -1.5f],
    ];
    static readonly float[] Lrs = [0.01f, 0.02f, 0.005f];

    // From Reference/adamw_reference.py (torch 1.13 torch.optim.AdamW, fp32).
    static readonly float[][] TorchNoDecay =
    [
        [0.49000001f, -1.24000001f, 1.99000001f, 0.00999999978f, 3.49000001f, -0.759900987f],
        [0.484673262f, -1.24732208f, 1.97659886f, 0.0153267402f, 3.49432588f, -0.774783731f],
        [0.481320769f, -1.25027704f, 1.97702825f, 0.0144008929f, 3.49516177f, -0.775167167f],
    ];
    static readonly float[][] TorchDecay01 =
    [
        [0.489500016f, -1.23874998f, 1.98800004f, 0.00999999978f, 3.48650002f, -0.759150982f],
        [0.483194292f, -1.24359453f, 1.9706229f, 0.015306741f, 3.48385286f, -0.772515416f],
        [0.479600191f, -1.24592769f, 1.97006691f, 0.0143732401f, 3.48294663f, -0.772512555f],
    ];
    static readonly float[] TorchExpAvg = [0.0336000025f, 0.0498000011f, -0.00570000196f, 0.0156000005f, -0.0225000009f, 0.0300000794f];
    static readonly float[] TorchExpAvgSq = [0.000102477519f, 0.000289760064f, 0.000179820112f, 0.000289640186f, 0.000739010284f, 0.00624600006f];

    [Theory]
    [InlineData(0f)]
    [InlineData(0.1f)]
    public void AdamWMatchesTorch(float wd)
    {
        var p = (float[])P0.Clone();
        var opt = new AdamW([6], [new ParameterRange(0, 0, 6)], weightDecay: wd);
        var expected = wd == 0 ? TorchNoDecay : TorchDecay01;
        for (int s = 0; s < 3; s++)
        {
            opt.Update([p], [(float[])Grads[s].Clone()], Lrs[s]);
            Assert.Equal(s + 1, opt.Step);
            for (int i = 0; i < 6; i++) Assert.Equal(expected[s][i], p[i], 2e-7f * Math.Max(1f, Math.Abs(expected[s][i])) + 2e-8f);
        }
        for (int i = 0; i < 6; i++)
        {
            // fp32 rounding differs slightly (torch fuses multiply-adds): relative 1e-6.
            Assert.Equal(TorchExpAvg[i], opt.M[0][i], 1e-6f * Math.Abs(TorchExpAvg[i]));
            Assert.Equal(TorchExpAvgSq[i], opt.V[0][i], 1e-6f * Math.Abs(TorchExpAvgSq[i]));
        }
    }

    [Fact]
    public void FirstStepByHandIsLrTimesSignOfTheGradient()
    {
        // t = 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + ε) (bias corrections cancel).
        var p = new float[] { 1f, 1f, 1f };
        var g = new float[] { 0.5f, -2f, 1e-6f };
        new AdamW([3], [new ParameterRange(0, 0, 3)]).Update([p], [g], 0.1f);
        Assert.Equal(1f - 0.1f, p[0], 1e-6f);
        Assert.Equal(1f + 0.1f, p[1], 1e-6f);
        Assert.Equal(1f - 0.1f * 1e-6f / (1e-6f + 1e-8f), p[2], 1e-6f);
    }

    [Fact]
    public void ElementsOutsideTheTrainableRangesNeverChange()
    {
        var p = Enumerable.Range(0, 20).Select(i => i * 0.1f).ToArray();
        var before = (float[])p.Clone();
        var opt = new AdamW([20], [new ParameterRange(0, 4, 6), new ParameterRange(0, 14, 3)], weightDecay: 0.5f);
        for (int s = 0; s < 5; s++) opt.Update([p], [Enumerable.Repeat(1f, 20).ToArray()], 0.05f);
        for (int i = 0; i < 20; i++)
        {
            bool trainable = (i >= 4 && i < 10) || (i >= 14 && i < 17);
            if (trainable) Assert.NotEqual(before[i], p[i]);
            else { Assert.Equal(before[i], p[i]); Assert.Equal(0f, opt.M[0][i]); Assert.Equal(0f, opt.V[0][i]); }
        }
        Assert.Throws<ArgumentException>(() => new AdamW([5], [new ParameterRange(0, 3, 3)]));
        Assert.Throws<InvalidRequestException>(() => new AdamW([5], [], beta1: 1f));
    }

    [Fact]
    public void ClippingMatchesTorchAndIgnoresFrozenElements()
    {
        // torch.nn.utils.clip_grad_norm_([3, 4, 0, 12], 6.5) → norm 13, grads × 6.5/(13 + 1e-6).
        var g = new float[] { 3, 4, 0, 12 };
        double norm = GradientClipping.Clip([g], [new ParameterRange(0, 0, 4)], 6.5);
        Assert.Equal(13.0, norm, 1e-9);
        float[] torch = [1.49999988f, 1.99999988f, 0f, 5.99999952f];
        for (int i = 0; i < 4; i++) Assert.Equal(torch[i], g[i], 1e-6f);

        // Below the limit: untouched. Disabled (≤ 0): untouched.
        var small = new float[] { 0.3f, 0.4f };
        Assert.Equal(0.5, GradientClipping.Clip([small], [new ParameterRange(0, 0, 2)], 1.0), 1e-7);
        Assert.Equal([0.3f, 0.4f], small);
        var big = new float[] { 30f, 40f };
        Assert.Equal(50, GradientClipping.Clip([big], [new ParameterRange(0, 0, 2)], 0), 1e-9);
        Assert.Equal([30f, 40f], big);

        // Only the trainable ranges count and get scaled.
        var two = new[] { new float[] { 100f, 3f }, new float[] { 4f, 100f } };
        var ranges = new[] { new ParameterRange(0, 1, 1), new ParameterRange(1, 0, 1) };
        Assert.Equal(5.0, GradientClipping.Clip(two, ranges, 1.0), 1e-6);
        Assert.Equal(100f, two[0][0]); Assert.Equal(100f, two[1][1]);
        Assert.Equal(0.6f, two[0][1], 1e-6f); Assert.Equal(0.8f, two[1][0], 1e-6f);
    }

    [Fact]
    public void ScheduleWarmsUpLinearlyThenDecaysToTheFloorAtTheLastStep()
    {
        var lin = new LrSchedule(1f, 10, 2, LrScheduleKind.Linear, 0.02f);
        float[] expected = [0.5f, 1f, 0.8775f, 0.755f, 0.6325f, 0.51f, 0.3875f, 0.265f, 0.1425f, 0.02f];
        for (int s = 0; s < 10; s++) Assert.Equal(expected[s], lin.At(s), 1e-6f);

        var cos = new LrSchedule(2f, 10, 2, LrScheduleKind.Cosine, 0.02f);
        Assert.Equal(1f, cos.At(0), 1e-6f);
        Assert.Equal(2f, cos.At(1), 1e-6f);
        Assert.Equal(0.04f + 1.96f * 0.5f * (1 + MathF.Cos(MathF.PI / 8)), cos.At(2), 1e-5f);
        Assert.Equal(0.04f + 1.96f * 0.5f, cos.At(5), 1e-5f); // halfway: f = 4/8
        Assert.Equal(0.04f, cos.At(9), 1e-6f);

        Assert.Equal(5, LrSchedule.WarmupFor(100, 0.05));
        Assert.Equal(1, LrSchedule.WarmupFor(10, 0.05));
        Assert.Equal(1, LrSchedule.WarmupFor(3, 0));
        Assert.Equal(7, LrSchedule.WarmupFor(7, 1));
        // All warmup: the last step reaches the peak.
        Assert.Equal(3f, new LrSchedule(3f, 4, 4).At(3), 1e-6f);

        Assert.Throws<InvalidRequestException>(() => new LrSchedule(0f, 10, 1));
        Assert.Throws<InvalidRequestException>(() => new LrSchedule(-1f, 10, 1));
        Assert.Throws<InvalidRequestException>(() => new LrSchedule(1f, 0, 1));
        Assert.Throws<InvalidRequestException>(() => new LrSchedule(1f, 10, 0));
    }

    [Fact]
    public void DataOrderVisitsEveryExampleOncePerEpochDeterministically()
    {
        var order = new DataOrder(7, seed: 3);
        var cursor = new DataCursor(0, 0);
        var seen = new List<int>();
        for (int i = 0; i < 21; i++) seen.Add(order.Next(ref cursor));
        Assert.Equal(new DataCursor(3, 0), cursor);
        for (int e = 0; e < 3; e++) Assert.Equal(Enumerable.Range(0, 7), seen.Skip(7 * e).Take(7).Order());
        Assert.NotEqual(seen.Take(7), seen.Skip(7).Take(7));
        // A fresh order from a saved cursor continues identically.
        var again = new DataOrder(7, seed: 3);
        var c2 = new DataCursor(1, 4);
        Assert.Equal(seen.Skip(11).Take(10), Enumerable.Range(0, 10).Select(_ => again.Next(ref c2)));
        Assert.NotEqual(new DataOrder(7, 4).Permutation(0), new DataOrder(7, 3).Permutation(0));
    }

    [Fact]
    public void OptionsValidationNamesTheBadFlag()
    {
        var ok = new TrainingOptions();
        ok.Validate(8);
        Assert.Contains("--lr", Assert.Throws<InvalidRequestException>(() => (ok with { LearningRate = 0 }).Validate(8)).Message);
        Assert.Contains("--lr", Assert.Throws<InvalidRequestException>(() => (ok with { LearningRate = -1e-3f }).Validate(8)).Message);
        Assert.Contains("--steps", Assert.Throws<InvalidRequestException>(() => (ok with { Steps = 0 }).Validate(8)).Message);
        Assert.Contains("--batch", Assert.Throws<InvalidRequestException>(() => (ok with { BatchSize = 0 }).Validate(8)).Message);
        Assert.Contains("--accumulate", Assert.Throws<InvalidRequestException>(() => (ok with { Accumulate = -2 }).Validate(8)).Message);
        Assert.Contains("--frozen-slots", Assert.Throws<InvalidRequestException>(() => (ok with { FrozenSlots = 8 }).Validate(8)).Message);
        Assert.Contains("--warmup", Assert.Throws<InvalidRequestException>(() => (ok with { WarmupFraction = 1.5 }).Validate(8)).Message);
        Assert.Equal(25, TrainingOptions.StepsForEpochs(2, 50, 4, 1));
        Assert.Equal(13, TrainingOptions.StepsForEpochs(1, 50, 2, 2));
        Assert.Throws<InvalidRequestException>(() => TrainingOptions.StepsForEpochs(0, 50, 2, 2));
    }
}
