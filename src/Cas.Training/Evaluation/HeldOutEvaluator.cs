using System.Numerics.Tensors;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;

namespace Cas.Training.Evaluation;

/// <summary>One held-out example: the student's tokens with the teacher's targets, and which context the teacher read before them.</summary>
/// <param name="Sequence">Student tokens (they follow the context, or a cartridge that stands in for it) and teacher targets.</param>
/// <param name="Context">Index into <see cref="EvalSet.Contexts"/>.</param>
public sealed record EvalExample(TrainingSequence Sequence, int Context);

/// <summary>
/// Held-out examples with the contexts their teacher read: context = start tokens (BOS for llama2.c models) + chunk.
/// The evaluation conditions put different things where that context was: only the start tokens, the context's first
/// tokens, the whole context, or a cartridge.
/// </summary>
public sealed class EvalSet
{
    /// <param name="contexts">Per context, the tokens the teacher read before the student tokens (start tokens + chunk).</param>
    /// <param name="startTokens">The start tokens every context begins with (kept by the no-context condition).</param>
    /// <param name="examples">The examples; each names its context.</param>
    /// <param name="description">What the set is, for messages.</param>
    public EvalSet(IReadOnlyList<int[]> contexts, int[] startTokens, IReadOnlyList<EvalExample> examples, string description)
    {
        ArgumentNullException.ThrowIfNull(contexts); ArgumentNullException.ThrowIfNull(startTokens); ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new InvalidRequestException($"the evaluation set is empty ({description}); there is nothing to measure.");
        foreach (var c in contexts)
            if (c.Length < startTokens.Length || !c.AsSpan(0, startTokens.Length).SequenceEqual(startTokens))
                throw new ArgumentException("every context must begin with the start tokens.", nameof(contexts));
        foreach (var e in examples)
        {
            if ((uint)e.Context >= (uint)contexts.Count) throw new ArgumentException($"an example names context {e.Context} but there are {contexts.Count}.", nameof(examples));
            TargetPositions += e.Sequence.Targets.TargetPositions;
        }
        Contexts = contexts; StartTokens = startTokens; Examples = examples; Description = description;
    }

    public IReadOnlyList<int[]> Contexts { get; }
    public int[] StartTokens { get; }
    public IReadOnlyList<EvalExample> Examples { get; }
    public string Description { get; }
    public long TargetPositions { get; }

    /// <summary>Document probes: one context per chunk (start tokens + chunk).</summary>
    public static EvalSet FromProbes(DocumentProbeSet probes)
    {
        ArgumentNullException.ThrowIfNull(probes);
        var contexts = new int[probes.Chunks.Count][];
        for (int c = 0; c < contexts.Length; c++) contexts[c] = [.. probes.StartTokens, .. probes.Chunks[c]];
        var examples = new EvalExample[probes.Examples.Count];
        for (int i = 0; i < examples.Length; i++) examples[i] = new EvalExample(probes.Examples[i], probes.ChunkOf[i]);
        return new EvalSet(contexts, probes.StartTokens, examples, probes.Examples.Description);
    }

    /// <summary>
    /// A self-study dataset (.casds): each conversation's context is exactly what its teacher (agent B) read before the
    /// conversation — the chunk text kept in the record, framed as the dataset's `framing` metadata says (base-model text
    /// or a chat system turn; start tokens + chunk when a dataset does not say) — so the in-context condition reproduces
    /// the teacher. Conversations of the same chunk share it. Conversations are cut so that the full context plus the
    /// conversation fits the model; ones left without a target are skipped.
    /// </summary>
    public static EvalSet FromDataset(string path, ITokenizer tokenizer, ModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(path); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(config);
        int[] start = [.. tokenizer.StartTokens];
        var contexts = new List<int[]>();
        var byText = new Dictionary<string, int>(StringComparer.Ordinal);
        var examples = new List<EvalExample>();
        var docs = new HashSet<string>(StringComparer.Ordinal);
        int conversations = 0;
        using var reader = DatasetReader.Open(path, new DatasetReadOptions(StopAtTornTail: true));
        var framing = TeacherFraming(reader.Metadata, tokenizer);
        foreach (var conv in reader.ReadAll())
        {
            conversations++;
            if (string.IsNullOrEmpty(conv.ChunkText))
                throw new InvalidRequestException($"{path}: conversation {conv.Id} does not keep its chunk text, so the in-context and truncated conditions cannot be built; evaluate on a dataset written with chunk text, or on the document itself.");
            if (!byText.TryGetValue(conv.ChunkText, out int ci))
            {
                int[] ctx = framing != null ? framing.TeacherPrefix(conv.ChunkText) : [.. start, .. tokenizer.Encode(conv.ChunkText)];
                foreach (int t in ctx) CheckId(t, conv.Id);
                if (ctx.Length >= config.MaxSeqLen)
                    throw new InvalidRequestException($"{path}: the chunk of conversation {conv.Id} is {ctx.Length} tokens with its start tokens, which leaves no room in the model's context of {config.MaxSeqLen}.");
                ci = contexts.Count; contexts.Add(ctx); byText.Add(conv.ChunkText, ci);
            }
            var seq = DatasetExamples.FromConversation(conv, config.MaxSeqLen - contexts[ci].Length);
            foreach (int t in seq.Tokens) CheckId(t, conv.Id);
            foreach (int t in seq.Targets.Ids) CheckId(t, conv.Id);
            if (seq.Targets.TargetPositions == 0) continue;
            examples.Add(new EvalExample(seq, ci));
            docs.Add(conv.Chunk.DocumentId);
        }
        if (examples.Count == 0) throw new InvalidRequestException($"the dataset {path} holds no conversation with teacher targets; there is nothing to evaluate.");
        return new EvalSet(contexts, start, examples,
            $"{Path.GetFileName(path)}: {examples.Count} of {conversations} conversations, {contexts.Count} chunk(s) from {docs.Count} document(s)");

        SynthesisFraming? TeacherFraming(IReadOnlyDictionary<string, string> metadata, ITokenizer tokenizer) =>
            metadata.TryGetValue("framing", out var f) ? f.ToLowerInvariant() switch
            {
                "base" => SynthesisFraming.Create(null, tokenizer),
                "chatml" => SynthesisFraming.Create(ChatFormatKind.ChatML, tokenizer),
                "llama3" => SynthesisFraming.Create(ChatFormatKind.Llama3, tokenizer),
                _ => throw new InvalidRequestException($"{path}: unknown framing '{f}' in the dataset's metadata (known: base, chatml, llama3)."),
            } : null;

        void CheckId(int id, ulong conversation)
        {
            if ((uint)id >= (uint)config.VocabSize)
                throw new InvalidRequestException($"{path}: conversation {conversation} uses token id {id}, outside this model's vocabulary of {config.VocabSize}; the dataset was made with another tokenizer or model.");
        }
    }
}

/// <summary>Metrics of one condition over an <see cref="EvalSet"/>.</summary>
/// <param name="Name">none | truncated | icl | cartridge (or the caller's name).</param>
/// <param name="Perplexity">exp(<paramref name="MeanNll"/>).</param>
/// <param name="MeanNll">Mean −log q(actual next token) over target positions whose next token is in the sequence.</param>
/// <param name="Kl">Mean over target positions of Σ_j p_j (log p_j − log q_j) on the teacher's kept support.</param>
/// <param name="KvSlots">Mean KV slots in front of the student tokens (start tokens, context tokens or cartridge slots).</param>
/// <param name="NllPositions">Positions the perplexity averages over.</param>
/// <param name="KlPositions">Positions the KL averages over (all target positions).</param>
/// <param name="Examples">Examples evaluated.</param>
public sealed record ConditionResult(string Name, double Perplexity, double MeanNll, double Kl, double KvSlots, long NllPositions, long KlPositions, int Examples);

/// <summary>The four conditions of a cartridge evaluation and the share of the no-context → in-context gap the cartridge closes.</summary>
public sealed record EvaluationReport(ConditionResult None, ConditionResult Truncated, ConditionResult Icl, ConditionResult Cartridge)
{
    /// <summary>(ppl_none − ppl_cartridge) / (ppl_none − ppl_icl); NaN when the context does not help at all.</summary>
    public double GapClosed => HeldOutEvaluator.GapClosed(None.Perplexity, Icl.Perplexity, Cartridge.Perplexity);
    public IEnumerable<ConditionResult> All => [None, Truncated, Icl, Cartridge];
}

/// <summary>
/// Held-out metrics of a frozen model with something in front of the student tokens: no context (start tokens only),
/// a truncated context (the context's first tokens, as many as the cartridge has slots), the full context (what the
/// teacher saw: in-context learning), or a cartridge. Every condition is "a KV prefix + the student tokens": the prefix
/// is put in a <see cref="KvCache"/> and the tokens run through <see cref="Transformer.ForwardAll"/>, so all conditions
/// share one forward pass (the engine's). At a target position t:
/// NLL = −log q(tokens[t+1]) when t+1 is inside the sequence (a final position whose target is the teacher's
/// end-of-text draw has no actual next token and only counts for KL), and KL = Σ_j p_j (log p_j − log q_j) over the
/// teacher's kept entries j (p_j = exp(teacher log-prob), not renormalised), q = the model's full softmax.
/// Means are per position over the whole set (longer examples weigh more). Not thread-safe.
/// </summary>
public sealed class HeldOutEvaluator
{
    readonly Model _model;
    readonly Transformer _transformer;
    float[] _logits = [];

    public HeldOutEvaluator(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _transformer = new Transformer(model);
    }

    public Model Model => _model;

    /// <summary>All four conditions; the truncated one gets as many slots as <paramref name="cartridge"/> has.</summary>
    public EvaluationReport Run(EvalSet set, KvPrefix cartridge, Action<string, int, int>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(cartridge);
        var none = None(set, P("none"), cancel);
        var truncated = Truncated(set, cartridge.Length, P("truncated"), cancel);
        var icl = Icl(set, P("icl"), cancel);
        var cart = WithPrefix(set, cartridge, "cartridge", P("cartridge"), cancel);
        return new EvaluationReport(none, truncated, icl, cart);

        Action<int, int>? P(string name) => progress is null ? null : (d, n) => progress(name, d, n);
    }

    /// <summary>Only the start tokens (BOS) in front: the model without the document.</summary>
    public ConditionResult None(EvalSet set, Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(set);
        KvPrefix? start = set.StartTokens.Length > 0 ? CartridgeInit.Prefill(_model, set.StartTokens) : null;
        return Evaluate(set, "none", _ => start, progress, cancel);
    }

    /// <summary>The first <paramref name="slots"/> tokens of each context (start tokens included; the whole context when shorter).</summary>
    public ConditionResult Truncated(EvalSet set, int slots, Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(set);
        if (slots <= 0) throw new InvalidRequestException($"the truncated context needs at least 1 slot, got {slots}.");
        return Evaluate(set, "truncated", c => CartridgeInit.Prefill(_model, set.Contexts[c][..Math.Min(slots, set.Contexts[c].Length)]), progress, cancel);
    }

    /// <summary>The whole context: what the teacher read.</summary>
    public ConditionResult Icl(EvalSet set, Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(set);
        return Evaluate(set, "icl", c => CartridgeInit.Prefill(_model, set.Contexts[c]), progress, cancel);
    }

    /// <summary>The same prefix (a cartridge, or several composed) in front of every example; null = nothing at all.</summary>
    public ConditionResult WithPrefix(EvalSet set, KvPrefix? prefix, string name = "cartridge", Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(set);
        return Evaluate(set, name, _ => prefix, progress, cancel);
    }

    /// <summary>
    /// The metrics with <paramref name="prefixOfContext"/>(c) in front of the examples of context c (asked once per
    /// context that has examples).
    /// </summary>
    public ConditionResult Evaluate(EvalSet set, string name, Func<int, KvPrefix?> prefixOfContext, Action<int, int>? progress = null,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(set); ArgumentNullException.ThrowIfNull(prefixOfContext);
        var c = _model.Config;
        int vocab = c.VocabSize;
        var byContext = new List<int>[set.Contexts.Count];
        for (int i = 0; i < set.Examples.Count; i++) (byContext[set.Examples[i].Context] ??= new List<int>()).Add(i);

        double nllSum = 0, klSum = 0, slotSum = 0;
        long nllPositions = 0, klPositions = 0;
        int done = 0;
        for (int ci = 0; ci < byContext.Length; ci++)
        {
            var members = byContext[ci];
            if (members is null) continue;
            var prefix = prefixOfContext(ci);
            int p = prefix?.Length ?? 0;
            int longest = 0;
            foreach (int i in members) longest = Math.Max(longest, set.Examples[i].Sequence.Tokens.Length);
            if (p + longest > c.MaxSeqLen)
                throw new InvalidRequestException(
                    $"condition {name}: a prefix of {p} slots and an example of {longest} tokens need {p + longest} positions, more than the model's context of {c.MaxSeqLen}; use shorter chunks or examples, or a smaller cartridge.");
            if (longest == 0) continue;
            var cache = new KvCache(c, p + longest, prefix);
            if (_logits.Length < longest * vocab) _logits = GC.AllocateUninitializedArray<float>(longest * vocab);
            foreach (int i in members)
            {
                cancel.ThrowIfCancellationRequested();
                var (tokens, targets) = set.Examples[i].Sequence;
                cache.Reset();
                if (tokens.Length > 0) _transformer.ForwardAll(cache, tokens, _logits);
                for (int t = 0; t < tokens.Length; t++)
                {
                    if (!targets.HasTarget(t)) continue;
                    var row = _logits.AsSpan(t * vocab, vocab);
                    double logZ = LogSumExp(row);
                    klSum += Kl(row, logZ, targets.IdsAt(t), targets.LogProbsAt(t));
                    klPositions++;
                    if (t + 1 < tokens.Length) { nllSum += logZ - row[tokens[t + 1]]; nllPositions++; }
                }
                slotSum += p;
                done++;
                progress?.Invoke(done, set.Examples.Count);
            }
        }
        double meanNll = nllPositions > 0 ? nllSum / nllPositions : double.NaN;
        return new ConditionResult(name, Math.Exp(meanNll), meanNll, klPositions > 0 ? klSum / klPositions : double.NaN,
            slotSum / Math.Max(1, done), nllPositions, klPositions, done);
    }

    /// <summary>log Σ exp(logits), computed stably in double.</summary>
    public static double LogSumExp(ReadOnlySpan<float> logits)
    {
        float max = TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float x in logits) sum += Math.Exp(x - max);
        return max + Math.Log(sum);
    }

    /// <summary>
    /// Σ_j p_j (log p_j − log q_j) over the teacher's entries (ids, log-probs), q = softmax(logits) with log-normaliser
    /// <paramref name="logZ"/> (<see cref="LogSumExp"/> of the same logits).
    /// </summary>
    public static double Kl(ReadOnlySpan<float> logits, double logZ, ReadOnlySpan<int> ids, ReadOnlySpan<float> teacherLogProbs)
    {
        if (ids.Length != teacherLogProbs.Length) throw new ArgumentException("ids and log-probs must pair up.");
        double kl = 0;
        for (int j = 0; j < ids.Length; j++)
        {
            double lp = teacherLogProbs[j];
            kl += Math.Exp(lp) * (lp - (logits[ids[j]] - logZ));
        }
        return kl;
    }

    /// <summary>(none − x) / (none − icl): 1 when x matches the in-context perplexity, 0 when it matches no context.</summary>
    public static double GapClosed(double none, double icl, double x) => none == icl ? double.NaN : (none - x) / (none - icl);
}
