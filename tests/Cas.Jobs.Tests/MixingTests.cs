namespace Cas.Jobs.Tests;

/// <summary>Distractor mixing, the frozen-distractor grouping and rotation: pure functions, checked exactly or statistically.</summary>
public class MixingTests
{
    static readonly int[] Twenty = Enumerable.Range(1, 20).ToArray();

    [Fact]
    public void Mixing_matches_p_iso_and_draws_k_uniformly_from_1_to_K_with_the_gold_once_in_a_shuffled_order()
    {
        const int N = 40_000, K = 10;
        int isolated = 0;
        var kCount = new int[K + 1];
        var goldAt = new int[K + 1];
        for (int n = 0; n < N; n++)
        {
            var order = DistractorMixing.Plan(0, Twenty, _ => 16, 10_000, pIso: 0.75, maxDistractors: K, seed: 5, step: n / 8, slot: n % 8);
            Assert.Equal(1, order.Count(c => c == 0));                       // gold always present, once
            Assert.Equal(order.Length, order.Distinct().Count());           // distinct distractors
            Assert.All(order, c => Assert.True(c == 0 || Twenty.Contains(c)));
            if (order.Length == 1) { isolated++; continue; }
            int k = order.Length - 1;
            Assert.InRange(k, 1, K);
            kCount[k]++;
            goldAt[Array.IndexOf(order, 0)]++;
        }
        // P_iso: binomial sd = sqrt(0.75·0.25/N) ≈ 0.0022; allow 5 sd.
        Assert.InRange(isolated / (double)N, 0.75 - 0.011, 0.75 + 0.011);
        // k ~ U(1, K): each of the ~10,000 mixed examples' k values has probability 1/10 (sd ≈ 30 of 1,000); allow 5 sd.
        int mixed = N - isolated;
        for (int k = 1; k <= K; k++) Assert.InRange(kCount[k], mixed / K - 150, mixed / K + 150);
        // Shuffled: the gold is sometimes first, sometimes last, and in the middle (never always at slot 0).
        Assert.True(goldAt[0] > 0 && goldAt[0] < mixed / 2, $"gold first in {goldAt[0]} of {mixed} mixed examples");
        Assert.True(goldAt.Skip(1).Sum() > mixed / 2);
    }

    [Fact]
    public void Mixing_is_deterministic_and_respects_the_room_and_the_candidates()
    {
        var a = DistractorMixing.Plan(3, [1, 2, 4, 5], _ => 10, 1000, 0.0, 10, 9, 17, 2);
        var b = DistractorMixing.Plan(3, [1, 2, 4, 5], _ => 10, 1000, 0.0, 10, 9, 17, 2);
        Assert.Equal(a, b);
        Assert.InRange(a.Length, 2, 5);                                     // k capped by 4 candidates
        // Room for the gold and two more: never more than 2 distractors however many are drawn.
        for (int s = 0; s < 500; s++)
        {
            var o = DistractorMixing.Plan(0, Twenty, _ => 16, 48, 0.0, 10, 1, s, 0);
            Assert.InRange(o.Length, 2, 3);
            Assert.Contains(0, o);
        }
        Assert.Equal([7], DistractorMixing.Plan(7, [], _ => 16, 1000, 0.0, 10, 1, 0, 0));   // nobody to mix with
        Assert.Equal([7], DistractorMixing.Plan(7, Twenty, _ => 16, 1000, 1.0, 10, 1, 0, 0)); // p_iso = 1
        Assert.Equal([7], DistractorMixing.Plan(7, Twenty, _ => 16, 1000, 0.0, 0, 1, 0, 0));  // K = 0
    }

    [Fact]
    public void Frozen_distractor_groups_never_put_a_gold_beside_a_sequence_that_uses_it_as_a_distractor()
    {
        var rng = new Random(3);
        for (int trial = 0; trial < 300; trial++)
        {
            int n = rng.Next(1, 12);
            var golds = new List<int>(); var orders = new List<int[]>();
            for (int s = 0; s < n; s++)
            {
                int g = rng.Next(6);
                golds.Add(g);
                orders.Add(DistractorMixing.Plan(g, Enumerable.Range(0, 6).Where(c => c != g).ToList(), _ => 1, 100, 0.3, 5, (ulong)trial, s, 0));
            }
            var groups = DistractorMixing.FrozenDistractorGroups(golds, orders);
            Assert.Equal(Enumerable.Range(0, n), groups.SelectMany(g => g).Order());   // every sequence once
            foreach (var g in groups)
            {
                var gs = g.Select(s => golds[s]).ToHashSet();
                foreach (int s in g)
                    Assert.DoesNotContain(orders[s], c => c != golds[s] && gs.Contains(c));
            }
        }
    }

    [Fact]
    public void Rotation_sends_the_most_trained_out_and_brings_the_least_trained_in_within_capacity()
    {
        TrainingProgressOf P(int d, long seen, long target = 100) => new(d, seen, target);
        var resident = new[] { P(0, 50), P(1, 90), P(2, 10), P(3, 90), P(4, 70) };
        var waiting = new[] { P(5, 30), P(6, 0, 0), P(7, 5), P(8, 0) };
        var (outs, ins) = Rotation.Choose(resident, waiting, capacity: 5, fraction: 0.5);
        Assert.Equal([1, 3, 4], outs);            // round(2.5) = 3: 90, 90 (tie: lower index first), 70
        Assert.Equal([6, 8, 7], ins);             // 0 (data not made), 0, 0.05
        // Fewer waiting than the fraction: only as many swap as can come in.
        (outs, ins) = Rotation.Choose(resident, [P(9, 0)], 5, 0.5);
        Assert.Equal([1], outs); Assert.Equal([9], ins);
        // Free slots are filled without sending anyone out; never more than the capacity.
        (outs, ins) = Rotation.Choose([P(0, 10)], waiting, 3, 0);
        Assert.Empty(outs); Assert.Equal([6, 8], ins);
        (outs, ins) = Rotation.Choose([P(0, 10), P(1, 20)], waiting, 3, 1);
        Assert.Equal(3, 2 - outs.Length + ins.Length);
    }
}
