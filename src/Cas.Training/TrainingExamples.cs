using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Cas.Engine;

namespace Cas.Training;

/// <summary>
/// The examples a cartridge trains on (in memory), with the ids of the documents they came from and a content
/// fingerprint, so a resumed run can prove it sees exactly the data the checkpoint was made with.
/// </summary>
public sealed class TrainingExamples
{
    readonly TrainingSequence[] _items;
    readonly double[] _entropy; // Σ over the example's target positions of −Σ p·log p

    /// <param name="items">Examples; ones without any target position are dropped (they teach nothing).</param>
    /// <param name="documentIds">Ids of the source documents (recorded in the cartridge).</param>
    /// <param name="description">What the data is, for messages (e.g. "doc.txt: 32 probes").</param>
    public TrainingExamples(IEnumerable<TrainingSequence> items, IReadOnlyList<string> documentIds, string description)
    {
        ArgumentNullException.ThrowIfNull(items);
        var list = new List<TrainingSequence>();
        foreach (var s in items) if (s.Targets.TargetPositions > 0) list.Add(s);
        if (list.Count == 0)
            throw new InvalidRequestException($"the training data is empty ({description}): no example has a target token. Give a longer document or a non-empty dataset.");
        _items = list.ToArray();
        DocumentIds = documentIds;
        Description = description;
        _entropy = new double[_items.Length];
        double entropy = 0;
        for (int i = 0; i < _items.Length; i++)
        {
            var s = _items[i];
            MaxLength = Math.Max(MaxLength, s.Tokens.Length);
            Tokens += s.Tokens.Length;
            TargetPositions += s.Targets.TargetPositions;
            double e = 0;
            foreach (float lp in s.Targets.LogProbs) e -= Math.Exp(lp) * lp;
            _entropy[i] = e;
            entropy += e;
        }
        LossFloor = entropy / TargetPositions;
        Fingerprint = ComputeFingerprint(_items);
    }

    public int Count => _items.Length;
    public TrainingSequence this[int index] => _items[index];
    public IReadOnlyList<string> DocumentIds { get; }
    public string Description { get; }
    /// <summary>Longest example in tokens.</summary>
    public int MaxLength { get; }
    public long Tokens { get; }
    public long TargetPositions { get; }
    /// <summary>
    /// The smallest mean loss any cartridge could reach on these examples: −Σ p·log p of the teacher's kept entries per
    /// target position (the loss is this plus the KL divergence to the teacher on its support); 0 for next-token data.
    /// </summary>
    public double LossFloor { get; }
    /// <summary>Σ over example <paramref name="index"/>'s target positions of −Σ p·log p (its part of the loss floor).</summary>
    public double EntropySum(int index) => _entropy[index];
    /// <summary>Hex SHA-256 over every example's tokens, target offsets, ids and log-prob bits, in order.</summary>
    public string Fingerprint { get; }

    static string ComputeFingerprint(TrainingSequence[] items)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var s in items)
        {
            Append(h, s.Tokens); Append(h, s.Targets.Offsets); Append(h, s.Targets.Ids);
            Append(h, MemoryMarshal.Cast<float, int>(s.Targets.LogProbs.AsSpan()));
        }
        return Convert.ToHexStringLower(h.GetHashAndReset());

        static void Append(IncrementalHash h, ReadOnlySpan<int> a)
        {
            Span<byte> len = stackalloc byte[4];
            System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(len, a.Length);
            h.AppendData(len);
            if (BitConverter.IsLittleEndian) { h.AppendData(MemoryMarshal.AsBytes(a)); return; }
            foreach (int v in a) { System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(len, v); h.AppendData(len); }
        }
    }
}

/// <summary>
/// The order examples are visited in: epoch e is a Fisher–Yates permutation drawn from (seed, e), so the whole stream
/// is a pure function of the seed and a cursor (epoch, position) is all a checkpoint needs to continue it exactly.
/// </summary>
public sealed class DataOrder
{
    readonly int _count;
    readonly ulong _seed;
    long _permEpoch = -1;
    int[] _perm = [];

    public DataOrder(int count, ulong seed)
    {
        if (count <= 0) throw new ArgumentOutOfRangeException(nameof(count), "there must be at least one example.");
        _count = count; _seed = seed;
    }

    /// <summary>The example at the cursor; advances it (wrapping into the next epoch).</summary>
    public int Next(ref DataCursor cursor)
    {
        if (cursor.Epoch != _permEpoch) { _perm = Permutation(cursor.Epoch); _permEpoch = cursor.Epoch; }
        int index = _perm[cursor.Position];
        cursor = cursor.Position + 1 < _count ? cursor with { Position = cursor.Position + 1 } : new DataCursor(cursor.Epoch + 1, 0);
        return index;
    }

    public int[] Permutation(long epoch)
    {
        var perm = new int[_count];
        for (int i = 0; i < _count; i++) perm[i] = i;
        var rng = new SplitMix64(SplitMix64.Mix(_seed ^ SplitMix64.Mix((ulong)epoch + 0x632BE59BD9B4E019UL)));
        for (int i = _count - 1; i > 0; i--)
        {
            int j = (int)rng.NextBelow((ulong)(i + 1));
            (perm[i], perm[j]) = (perm[j], perm[i]);
        }
        return perm;
    }
}

/// <summary>Position in the example stream: epoch and index into that epoch's permutation.</summary>
public readonly record struct DataCursor(long Epoch, int Position);

/// <summary>SplitMix64: tiny, seedable, identical on every platform.</summary>
public struct SplitMix64(ulong seed)
{
    ulong _s = seed;

    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong Next() => Mix(_s += 0x9E3779B97F4A7C15UL);

    /// <summary>Uniform in [0, n) without modulo bias (rejection).</summary>
    public ulong NextBelow(ulong n)
    {
        if (n == 0) throw new ArgumentOutOfRangeException(nameof(n));
        ulong limit = ulong.MaxValue - ulong.MaxValue % n;
        ulong x;
        do x = Next(); while (x >= limit);
        return x % n;
    }

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
}
