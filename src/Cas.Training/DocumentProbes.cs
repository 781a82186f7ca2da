using System.Numerics.Tensors;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;

namespace Cas.Training;

/// <summary>Which probes to draw: the training ones, or the disjoint held-out ones an evaluation uses.</summary>
public enum ProbeSplit { Train, HeldOut }

/// <summary>Settings of <see cref="DocumentProbes.Build"/>.</summary>
public sealed record DocumentProbeOptions
{
    /// <summary>Largest chunk (window of document tokens) the teacher sees; shrunk to fit the model's context.</summary>
    public int ChunkTokens { get; init; } = 400;
    public int ExamplesPerChunk { get; init; } = 32;
    /// <summary>Length range of a probe cut from the chunk at a sentence start.</summary>
    public int MinProbeTokens { get; init; } = 4;
    public int MaxProbeTokens { get; init; } = 16;
    /// <summary>Most tokens the teacher writes after a probe (fewer when it ends the text with EOS).</summary>
    public int ContinuationTokens { get; init; } = 64;
    /// <summary>Sampling temperature of the teacher's continuation (its targets are its untempered distribution).</summary>
    public float Temperature { get; init; } = 0.7f;
    /// <summary>Teacher entries kept per position: at most TopK, cut once their probability reaches <see cref="CumulativeProbability"/>.</summary>
    public int TopK { get; init; } = 20;
    public float CumulativeProbability { get; init; } = 0.99f;
    /// <summary>Share of examples that start from a generic opener instead of a sentence of the chunk.</summary>
    public double OpenerFraction { get; init; } = 0.25;
    /// <summary>Text between the chunk and the probe (the first tokens of every student input).</summary>
    public string Separator { get; init; } = "\n";
    /// <summary>One sentence start in this many (by document position) is reserved for the held-out split.</summary>
    public int HeldOutEvery { get; init; } = 8;
    public ulong Seed { get; init; } = 1;
    public ProbeSplit Split { get; init; } = ProbeSplit.Train;
    /// <summary>Teacher continuations generated together.</summary>
    public int GenerationBatch { get; init; } = 16;

    public void Validate()
    {
        static void Pos(int v, string name) { if (v <= 0) throw new InvalidRequestException($"{name} must be positive, got {v}."); }
        Pos(ChunkTokens, "chunk tokens"); Pos(ExamplesPerChunk, "examples per chunk"); Pos(MinProbeTokens, "minimum probe tokens");
        Pos(ContinuationTokens, "continuation tokens"); Pos(GenerationBatch, "generation batch"); Pos(HeldOutEvery, "held-out spacing");
        if (MaxProbeTokens < MinProbeTokens) throw new InvalidRequestException($"the probe length range [{MinProbeTokens}, {MaxProbeTokens}] is empty.");
        if (TopK < 1 || TopK > 255) throw new InvalidRequestException($"teacher top-k must lie in [1, 255], got {TopK}.");
        if (!(CumulativeProbability > 0 && CumulativeProbability <= 1)) throw new InvalidRequestException($"the cumulative-probability cut must lie in (0, 1], got {CumulativeProbability}.");
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new InvalidRequestException($"the teacher temperature must be ≥ 0, got {Temperature}.");
        if (!(OpenerFraction >= 0 && OpenerFraction <= 1)) throw new InvalidRequestException($"the opener fraction must lie in [0, 1], got {OpenerFraction}.");
    }
}

/// <summary>
/// Probe examples together with the chunks they were made from: example i's teacher read
/// <see cref="StartTokens"/> + <c>Chunks[ChunkOf[i]]</c> and then the example's tokens.
/// </summary>
/// <param name="Examples">The examples (student tokens and teacher targets).</param>
/// <param name="Chunks">The document's chunks (token windows, without start tokens).</param>
/// <param name="ChunkOf">Per example (same order as <paramref name="Examples"/>), the index of its chunk.</param>
/// <param name="StartTokens">The tokens the teacher read before the chunk (BOS for llama2.c models).</param>
public sealed record DocumentProbeSet(TrainingExamples Examples, IReadOnlyList<int[]> Chunks, int[] ChunkOf, int[] StartTokens)
{
    /// <summary>Start tokens + chunk: everything the teacher of example <paramref name="example"/> read before its tokens.</summary>
    public int[] TeacherContext(int example) => [.. StartTokens, .. Chunks[ChunkOf[example]]];
}

/// <summary>
/// Training data made from a plain document, without a dataset: the document is cut into chunks; for each example
/// a probe (a few tokens starting at a sentence boundary of the chunk, or a generic opener) is given to the TEACHER —
/// the model reading start tokens + chunk + separator + probe — which continues it by sampling. The teacher's top-k
/// log-probs at every continuation position become the targets. The STUDENT input is separator + probe +
/// continuation: the cartridge stands in for start tokens + chunk (its frozen slot 0 is the start token), exactly as
/// in self-study datasets, whose conversations also follow the cartridge directly. Deterministic for a seed.
/// The held-out split draws its probes from sentence starts and openers the training split never uses (which
/// sentence starts are held out depends only on their document position, not on the seed), so an evaluation with
/// another seed measures generalisation rather than recall of training probes.
/// </summary>
public static class DocumentProbes
{
    /// <summary>Openers of the training split (written for this project).</summary>
    public static readonly string[] TrainOpeners =
    [
        "Once upon a time", "This is a story about", "Here is what happened.", "Let me tell you what happened.",
        "The main character", "It began when", "Tell me the story again.", "What happened first?",
    ];

    /// <summary>Openers of the held-out split (never used for training).</summary>
    public static readonly string[] HeldOutOpeners =
    [
        "One day,", "In the end,", "Here is a summary of the story:", "The most important thing is",
        "What did they do next?", "Remember that",
    ];

    /// <summary>
    /// Builds the examples. <paramref name="progress"/> receives (examples done, total).
    /// </summary>
    public static TrainingExamples Build(Model model, ITokenizer tokenizer, string text, string documentId, DocumentProbeOptions options,
        Action<int, int>? progress = null, CancellationToken cancel = default) =>
        BuildSet(model, tokenizer, text, documentId, options, progress, cancel).Examples;

    /// <summary>
    /// As <see cref="Build"/>, keeping what an evaluation needs besides the examples: the chunks the teacher read and,
    /// per example, which chunk it was made from (so held-out metrics can be taken with no context, a truncated
    /// context, the full chunk in context, or a cartridge).
    /// </summary>
    public static DocumentProbeSet BuildSet(Model model, ITokenizer tokenizer, string text, string documentId, DocumentProbeOptions options,
        Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var o = options;
        var c = model.Config;
        int[] start = [.. tokenizer.StartTokens];
        int[] sep = Prompting.EncodeContinuation(tokenizer, o.Separator);
        int room = ChunkRoom(c, tokenizer, o);
        int chunkTokens = Math.Min(o.ChunkTokens, room);
        if (chunkTokens < 8)
            throw new InvalidRequestException(
                $"the model's context ({c.MaxSeqLen}) leaves only {room} tokens for a chunk after the probe ({o.MaxProbeTokens}) and continuation ({o.ContinuationTokens}); shorten them.");
        var body = tokenizer.Encode(text);
        if (body.Length < o.MinProbeTokens)
            throw new InvalidRequestException($"the document {documentId} has {body.Length} tokens; it is too short to make training data from.");
        var chunks = Chunk(body, chunkTokens);
        string[] openers = o.Split == ProbeSplit.Train ? TrainOpeners : HeldOutOpeners;
        int[][] openerTokens = openers.Select(tokenizer.Encode).ToArray();
        ulong salt = o.Split == ProbeSplit.Train ? 0x7452A1E5UL : 0x4E1D0C7AUL;

        // Plan every example first (probe tokens and sampling seed), then generate in fixed batches.
        var plans = new List<(int Chunk, int[] Probe, ulong Seed)>(chunks.Count * o.ExamplesPerChunk);
        int chunkStart = 0;
        for (int ci = 0; ci < chunks.Count; ci++)
        {
            var chunk = chunks[ci];
            var eligible = new List<int>();
            foreach (int b in SentenceStarts(tokenizer, chunk))
            {
                if (b + o.MinProbeTokens > chunk.Length) continue;
                bool heldOut = SplitMix64.Mix((ulong)(chunkStart + b) ^ 0x5851F42D4C957F2DUL) % (ulong)o.HeldOutEvery == 0;
                if (heldOut == (o.Split == ProbeSplit.HeldOut)) eligible.Add(b);
            }
            for (int e = 0; e < o.ExamplesPerChunk; e++)
            {
                var rng = new SplitMix64(SplitMix64.Mix(o.Seed ^ SplitMix64.Mix(salt + ((ulong)ci << 32) + (ulong)e)));
                int[] probe;
                if (eligible.Count == 0 || rng.NextDouble() < o.OpenerFraction)
                    probe = openerTokens[(int)rng.NextBelow((ulong)openerTokens.Length)];
                else
                {
                    int b = eligible[(int)rng.NextBelow((ulong)eligible.Count)];
                    int len = o.MinProbeTokens + (int)rng.NextBelow((ulong)(o.MaxProbeTokens - o.MinProbeTokens + 1));
                    probe = chunk.AsSpan(b, Math.Min(len, chunk.Length - b)).ToArray();
                }
                plans.Add((ci, probe, rng.Next()));
            }
            chunkStart += chunk.Length;
        }

        var generator = new Generator(new Transformer(model));
        IReadOnlyList<int> stops = tokenizer.EosId is int eos ? [eos] : [];
        var examples = new List<TrainingSequence>(plans.Count);
        var chunkOf = new List<int>(plans.Count);
        var topIds = new int[o.TopK]; var topLps = new float[o.TopK];
        for (int i0 = 0; i0 < plans.Count; i0 += o.GenerationBatch)
        {
            cancel.ThrowIfCancellationRequested();
            int n = Math.Min(o.GenerationBatch, plans.Count - i0);
            var requests = new GenerationRequest[n];
            var targets = new List<(int[] Ids, float[] Lps)>[n];
            for (int j = 0; j < n; j++)
            {
                var (ci, probe, seed) = plans[i0 + j];
                requests[j] = new GenerationRequest([.. start, .. chunks[ci], .. sep, .. probe])
                {
                    MaxTokens = o.ContinuationTokens, StopTokens = stops,
                    Sampling = new SamplingOptions { Temperature = o.Temperature, Seed = seed },
                };
                targets[j] = new List<(int[], float[])>(o.ContinuationTokens + 1);
            }
            var results = generator.Generate(requests, (r, _, logits) =>
            {
                int k = TeacherTopK.Select(logits, o.TopK, o.CumulativeProbability, topIds, topLps);
                targets[r].Add((topIds[..k], topLps[..k]));
            }, cancel);
            for (int j = 0; j < n; j++)
            {
                var probe = plans[i0 + j].Probe;
                var cont = results[j].Tokens;
                int s0 = sep.Length + probe.Length;
                int[] tokens = [.. sep, .. probe, .. cont];
                // Continuation token j was drawn from the logits after token s0+j-1, so that position predicts it;
                // a final EOS draw (if any) becomes the target of the last position.
                var b = new SparseTargets.Builder(tokens.Length);
                for (int t = 0; t < targets[j].Count && s0 - 1 + t < tokens.Length; t++)
                    b.Add(s0 - 1 + t, targets[j][t].Ids, targets[j][t].Lps);
                var sequence = new TrainingSequence(tokens, b.Build());
                if (sequence.Targets.TargetPositions == 0) continue; // TrainingExamples drops these too; keep chunkOf aligned
                examples.Add(sequence);
                chunkOf.Add(plans[i0 + j].Chunk);
            }
            progress?.Invoke(i0 + n, plans.Count);
        }
        var set = new TrainingExamples(examples, [documentId],
            $"{documentId}: {examples.Count} teacher continuations of probes from {chunks.Count} chunk(s) (seed {o.Seed}, {o.Split.ToString().ToLowerInvariant()} split)");
        return new DocumentProbeSet(set, chunks, chunkOf.ToArray(), start);
    }

    /// <summary>
    /// The largest chunk the model's context holds for these options: the teacher reads start tokens + chunk +
    /// separator + the longest probe or opener + the continuation.
    /// </summary>
    public static int ChunkRoom(ModelConfig config, ITokenizer tokenizer, DocumentProbeOptions options)
    {
        ArgumentNullException.ThrowIfNull(config); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(options);
        int longestOpener = Math.Max(TrainOpeners.Max(t => tokenizer.Encode(t).Length), HeldOutOpeners.Max(t => tokenizer.Encode(t).Length));
        return config.MaxSeqLen - tokenizer.StartTokens.Count - Prompting.EncodeContinuation(tokenizer, options.Separator).Length
            - Math.Max(options.MaxProbeTokens, longestOpener) - options.ContinuationTokens;
    }

    /// <summary>The largest chunk the teacher reads when the caller gives none and the context allows it.</summary>
    public const int DefaultChunkTokens = 400;

    /// <summary>
    /// The chunk size to use: <paramref name="given"/> when it fits the context (else an error naming the largest that
    /// does), or <see cref="DefaultChunkTokens"/> shrunk to the room the context leaves (<see cref="ChunkRoom"/>).
    /// </summary>
    public static int ChooseChunkTokens(ModelConfig config, ITokenizer tokenizer, DocumentProbeOptions options, int? given)
    {
        int room = ChunkRoom(config, tokenizer, options);
        if (given is int g)
        {
            if (g > room)
                throw new InvalidRequestException($"chunks of {g} tokens do not fit: the model's context of {config.MaxSeqLen} leaves room for {room} " +
                    $"(after the probe and {options.ContinuationTokens} continuation tokens); give --chunk-tokens {Math.Max(room, 1)} or less, or leave it out.");
            return g;
        }
        if (room < 8)
            throw new InvalidRequestException($"the model's context ({config.MaxSeqLen}) leaves only {room} tokens for a chunk after the probe and {options.ContinuationTokens} continuation tokens; give fewer --continuation-tokens.");
        return Math.Min(DefaultChunkTokens, room);
    }

    /// <summary>
    /// The next-token baseline: each chunk of the document (at most <paramref name="chunkTokens"/> tokens, following the
    /// cartridge directly) trained on its own next tokens.
    /// </summary>
    public static TrainingExamples NextToken(ITokenizer tokenizer, string text, string documentId, int chunkTokens)
    {
        ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(text);
        if (chunkTokens <= 0) throw new InvalidRequestException($"chunk tokens must be positive, got {chunkTokens}.");
        var body = tokenizer.Encode(text);
        if (body.Length == 0) throw new InvalidRequestException($"the document {documentId} is empty; there is nothing to train on.");
        var chunks = Chunk(body, chunkTokens);
        var examples = new List<TrainingSequence>(chunks.Count);
        foreach (var ch in chunks) examples.Add(TrainingSequence.NextToken(ch));
        return new TrainingExamples(examples, [documentId], $"{documentId}: next-token prediction over {chunks.Count} chunk(s)");
    }

    /// <summary>Cuts tokens into ⌈n/max⌉ consecutive windows of near-equal length (each ≤ max).</summary>
    public static List<int[]> Chunk(ReadOnlySpan<int> tokens, int maxTokens)
    {
        if (maxTokens <= 0) throw new ArgumentOutOfRangeException(nameof(maxTokens));
        int n = tokens.Length, count = (n + maxTokens - 1) / maxTokens;
        var chunks = new List<int[]>(count);
        for (int i = 0; i < count; i++)
        {
            int a = (int)((long)n * i / count), b = (int)((long)n * (i + 1) / count);
            chunks.Add(tokens[a..b].ToArray());
        }
        return chunks;
    }

    /// <summary>
    /// Indices of tokens that start a sentence: 0, and every token with visible text whose preceding text ends with
    /// sentence-final punctuation (optionally closed by quotes or brackets) and whitespace, or with a line break.
    /// Text per token is taken from decoding it together with its predecessor, so tokenizers that drop a leading
    /// space at the start of a decode still show it.
    /// </summary>
    public static List<int> SentenceStarts(ITokenizer tokenizer, ReadOnlySpan<int> tokens)
    {
        var starts = new List<int>();
        if (tokens.Length == 0) return starts;
        starts.Add(0);
        string tail = tokenizer.Decode(tokens[..1]);
        for (int i = 1; i < tokens.Length; i++)
        {
            string single = tokenizer.Decode(tokens.Slice(i - 1, 1));
            string pair = tokenizer.Decode(tokens.Slice(i - 1, 2));
            string piece = pair.StartsWith(single, StringComparison.Ordinal) ? pair[single.Length..] : tokenizer.Decode(tokens.Slice(i, 1));
            int lead = 0;
            while (lead < piece.Length && char.IsWhiteSpace(piece[lead])) lead++;
            if (lead < piece.Length && EndsSentence(tail + piece[..lead])) starts.Add(i);
            tail = tail + piece;
            if (tail.Length > 16) tail = tail[^16..];
        }
        return starts;
    }

    static bool EndsSentence(string s)
    {
        int end = s.Length;
        bool space = false, newline = false;
        while (end > 0 && char.IsWhiteSpace(s[end - 1])) { space = true; newline |= s[end - 1] == '\n'; end--; }
        if (newline) return true;
        if (!space) return false;
        while (end > 0 && s[end - 1] is '"' or '\'' or '”' or '’' or ')' or ']') end--;
        return end > 0 && s[end - 1] is '.' or '!' or '?' or '…';
    }
}
