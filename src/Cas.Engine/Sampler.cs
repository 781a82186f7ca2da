using System.Numerics.Tensors;

namespace Cas.Engine;

/// <summary>How to pick the next token. Temperature 0 is greedy (arg-max).</summary>
public sealed record SamplingOptions
{
    /// <summary>Softmax temperature; 0 = greedy.</summary>
    public float Temperature { get; init; }
    /// <summary>Keep only the k most likely tokens; 0 = off.</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus sampling: keep the smallest set whose probability reaches p; 1 = off.</summary>
    public float TopP { get; init; } = 1f;
    public ulong Seed { get; init; } = 42;

    public static SamplingOptions Greedy { get; } = new();

    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new InvalidRequestException($"temperature must be ≥ 0, got {Temperature}.");
        if (TopK < 0) throw new InvalidRequestException($"top-k must be ≥ 0 (0 = off), got {TopK}.");
        if (!(TopP > 0 && TopP <= 1)) throw new InvalidRequestException($"top-p must be in (0, 1], got {TopP}.");
    }
}

/// <summary>Draws tokens from logits. Scratch sized once for the vocabulary; deterministic for a seed.</summary>
public sealed class Sampler
{
    readonly SamplingOptions _o;
    readonly float[] _probs;   // [vocab]
    readonly int[] _order;     // [vocab] candidate ids
    readonly Comparison<int> _byProbDesc; // ties broken by id, so results do not depend on sort stability
    ulong _state;

    public Sampler(SamplingOptions options, int vocabSize)
    {
        options.Validate();
        _o = options;
        _probs = new float[vocabSize];
        _order = new int[vocabSize];
        _byProbDesc = (a, b) => _probs[b].CompareTo(_probs[a]) is var c && c != 0 ? c : a.CompareTo(b);
        _state = options.Seed ^ 0x9E3779B97F4A7C15UL;
        if (_state == 0) _state = 1;
    }

    /// <summary>xorshift64* → uniform float in [0, 1).</summary>
    float NextUniform()
    {
        _state ^= _state >> 12; _state ^= _state << 25; _state ^= _state >> 27;
        return ((_state * 0x2545F4914F6CDD1DUL) >> 40) / 16777216f;
    }

    public int Sample(ReadOnlySpan<float> logits)
    {
        if (_o.Temperature == 0) return TensorPrimitives.IndexOfMax(logits);
        int n = logits.Length;
        var p = _probs.AsSpan(0, n);
        TensorPrimitives.Multiply(logits, 1f / _o.Temperature, p);
        Compute.Ops.Softmax(p);

        // Candidates: all ids, cut to the top-k, then to the top-p nucleus.
        int count = n;
        for (int i = 0; i < n; i++) _order[i] = i;
        if (_o.TopK > 0 && _o.TopK < n)
        {
            // Partial selection: move the k largest to the front (order among them fixed below).
            SelectTop(_order, _probs, _o.TopK, _byProbDesc);
            count = _o.TopK;
        }
        if (_o.TopP < 1f)
        {
            if (count == n)
            {
                // Tokens below (1-p)/(n-1) can never be in the nucleus (llama2.c's observation): filter first.
                float cutoff = (1f - _o.TopP) / (n - 1);
                count = 0;
                for (int i = 0; i < n; i++) if (p[i] >= cutoff) _order[count++] = i;
            }
            var ids = _order.AsSpan(0, count);
            ids.Sort(_byProbDesc);
            float cum = 0; int keep = count;
            for (int i = 0; i < count; i++) { cum += p[ids[i]]; if (cum >= _o.TopP) { keep = i + 1; break; } }
            count = keep;
        }
        float total = 0;
        for (int i = 0; i < count; i++) total += p[_order[i]];
        float r = NextUniform() * total, acc = 0;
        for (int i = 0; i < count; i++) { acc += p[_order[i]]; if (r < acc) return _order[i]; }
        return _order[count - 1];
    }

    /// <summary>Reorders ids so the k with largest p come first (quickselect).</summary>
    static void SelectTop(int[] ids, float[] p, int k, Comparison<int> byProbDesc)
    {
        int lo = 0, hi = ids.Length - 1;
        while (lo < hi)
        {
            float pivot = p[ids[(lo + hi) >>> 1]];
            int i = lo, j = hi;
            while (i <= j)
            {
                while (p[ids[i]] > pivot) i++;
                while (p[ids[j]] < pivot) j--;
                if (i <= j) { (ids[i], ids[j]) = (ids[j], ids[i]); i++; j--; }
            }
            if (k - 1 <= j) hi = j; else if (k - 1 >= i) lo = i; else break;
        }
        // Stable order among the k kept: by probability, ties by id.
        ids.AsSpan(0, k).Sort(byProbDesc);
    }
}
