namespace Cas.SelfStudy;

/// <summary>
/// A small, fully specified pseudo-random generator (xoshiro256** seeded through SplitMix64), so
/// that chunk and prompt sampling give the same results on every machine and .NET version.
/// <see cref="ForIndex"/> gives an independent generator per (seed, sample index, purpose): sample i
/// can be recomputed without replaying samples 0..i-1, which is what lets a resumed run skip work.
/// Not thread-safe; create one per thread or per sample.
/// </summary>
public sealed class DeterministicRng
{
    ulong s0, s1, s2, s3;

    public DeterministicRng(ulong seed)
    {
        ulong x = seed;
        s0 = SplitMix64(ref x); s1 = SplitMix64(ref x); s2 = SplitMix64(ref x); s3 = SplitMix64(ref x);
    }

    /// <summary>
    /// The generator for sample <paramref name="index"/> of a run seeded with <paramref name="seed"/>;
    /// <paramref name="purpose"/> separates streams (e.g. chunk choice vs. prompt choice) for the same sample.
    /// </summary>
    public static DeterministicRng ForIndex(ulong seed, long index, ulong purpose = 0)
        => new(Mix(Mix(seed ^ Mix(purpose + 0x5851F42D4C957F2Dul)) + (ulong)index));

    /// <summary>The SplitMix64 finalizer: a bijection on 64-bit values that scrambles all bits.</summary>
    public static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15ul;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
        return z ^ (z >> 31);
    }

    static ulong SplitMix64(ref ulong x)
    {
        ulong r = Mix(x);
        x += 0x9E3779B97F4A7C15ul;
        return r;
    }

    /// <summary>Next 64 uniformly random bits.</summary>
    public ulong NextUInt64()
    {
        ulong result = RotL(s1 * 5, 7) * 9;
        ulong t = s1 << 17;
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3;
        s2 ^= t;
        s3 = RotL(s3, 45);
        return result;
    }

    static ulong RotL(ulong x, int k) => (x << k) | (x >> (64 - k));

    /// <summary>Uniform integer in [0, <paramref name="maxExclusive"/>), without modulo bias.</summary>
    public long NextInt64(long maxExclusive)
    {
        if (maxExclusive <= 0) throw new ArgumentOutOfRangeException(nameof(maxExclusive), "must be positive");
        ulong n = (ulong)maxExclusive;
        ulong threshold = (0 - n) % n; // 2^64 mod n: values below it would bias the result
        while (true)
        {
            ulong r = NextUInt64();
            ulong hi = Math.BigMul(r, n, out ulong lo);
            if (lo >= threshold) return (long)hi;
        }
    }

    /// <summary>Uniform integer in [0, <paramref name="maxExclusive"/>).</summary>
    public int NextInt(int maxExclusive) => (int)NextInt64(maxExclusive);

    /// <summary>Uniform integer in [<paramref name="min"/>, <paramref name="maxInclusive"/>].</summary>
    public int NextInt(int min, int maxInclusive)
    {
        if (maxInclusive < min) throw new ArgumentOutOfRangeException(nameof(maxInclusive), "must be >= min");
        return min + (int)NextInt64((long)maxInclusive - min + 1);
    }

    /// <summary>Uniform double in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1ul << 53));
}

/// <summary>Deterministic, unique conversation ids for the dataset format.</summary>
public static class ConversationIds
{
    /// <summary>
    /// The id of conversation <paramref name="index"/> in a run seeded with <paramref name="runSeed"/>.
    /// For a fixed seed, distinct indices always give distinct ids (the mapping is a bijection on
    /// 64-bit values), so a resumed run recomputes exactly the ids it wrote before and can skip them.
    /// </summary>
    public static ulong For(ulong runSeed, long index)
        => DeterministicRng.Mix(DeterministicRng.Mix(runSeed) + (ulong)index);
}
