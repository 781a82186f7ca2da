using System.Globalization;
using Cas.Engine;

namespace Cas.SelfStudy;

/// <summary>
/// How one agent generates. Self-study uses the same record twice: <see cref="SelfStudyOptions.UserAgent"/>
/// (agent A, writes the user messages) and <see cref="SelfStudyOptions.AnswerAgent"/> (agent B, the teacher).
/// </summary>
public sealed record AgentOptions
{
    /// <summary>Softmax temperature for sampling; 0 is greedy (arg-max).</summary>
    public float Temperature { get; init; }
    /// <summary>Most tokens the agent generates per turn.</summary>
    public int MaxTokens { get; init; } = 256;
    /// <summary>Nucleus sampling threshold (1 = off). Ignored when greedy.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Agent A's defaults: temperature 0.6 (as in the reference), up to 128 tokens, no nucleus cut.</summary>
    public static AgentOptions UserDefaults { get; } = new() { Temperature = 0.6f, MaxTokens = 128 };
    /// <summary>Agent B's defaults: greedy, up to 256 tokens.</summary>
    public static AgentOptions AnswerDefaults { get; } = new() { Temperature = 0f, MaxTokens = 256 };

    /// <summary>Throws <see cref="InvalidRequestException"/> naming <paramref name="agent"/> for a bad value.</summary>
    public void Validate(string agent)
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature))
            throw new InvalidRequestException($"{agent}: temperature must be a finite number >= 0 (0 = greedy), got {Temperature}.");
        if (MaxTokens < 1)
            throw new InvalidRequestException($"{agent}: max tokens must be at least 1, got {MaxTokens}.");
        if (!(TopP > 0 && TopP <= 1))
            throw new InvalidRequestException($"{agent}: top-p must be in (0, 1], got {TopP}.");
    }

    /// <summary>"temperature=0.6,max_tokens=128,top_p=1" (invariant culture), for dataset metadata.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"temperature={Temperature:R},max_tokens={MaxTokens},top_p={TopP:R}");
}

/// <summary>
/// Settings of a self-study run (<see cref="SelfStudySynthesizer"/>). Every setting that changes what is
/// generated is recorded in the dataset's metadata, so a resumed run must use the same ones;
/// <see cref="Concurrency"/> and <see cref="Conversations"/> are not (they change how much and how fast,
/// not what conversation i is).
/// </summary>
public sealed record SelfStudyOptions
{
    /// <summary>Conversations to generate: indices 0 .. Conversations-1. Required, at least 1.</summary>
    public long Conversations { get; init; } = 1;

    /// <summary>Run seed: chunk choice, seed prompt choice, sampling seeds and conversation ids all derive from (Seed, index).</summary>
    public ulong Seed { get; init; } = 1;

    /// <summary>Smallest chunk in tokens (default 512; a shorter document is one whole chunk).</summary>
    public int MinChunkTokens { get; init; } = 512;

    /// <summary>Largest chunk in tokens (default 2048). Chunk, prompts and answers must fit the model's context.</summary>
    public int MaxChunkTokens { get; init; } = 2048;

    /// <summary>Weights of the seed prompt kinds (default: all six equally).</summary>
    public SeedPromptMix SeedPrompts { get; init; } = SeedPromptMix.Uniform;

    /// <summary>User/answer exchanges per conversation (default 1).</summary>
    public int Rounds { get; init; } = 1;

    /// <summary>Agent A, who writes the user messages (default temperature 0.6, 128 tokens).</summary>
    public AgentOptions UserAgent { get; init; } = AgentOptions.UserDefaults;

    /// <summary>Agent B, who answers with the chunk in context and whose log-probs are the targets (default greedy, 256 tokens).</summary>
    public AgentOptions AnswerAgent { get; init; } = AgentOptions.AnswerDefaults;

    /// <summary>Most teacher entries kept per answer token (default 20; at most <see cref="SparseTargets.MaxK"/>).</summary>
    public int TopK { get; init; } = TeacherTopK.DefaultMaxK;

    /// <summary>Entries are kept, most probable first, until their cumulative probability reaches this (default 0.99).</summary>
    public double TopKMass { get; init; } = TeacherTopK.DefaultMass;

    /// <summary>
    /// Consecutive conversations that use the same chunk (default 8): conversation i uses chunk number
    /// i / ConversationsPerChunk, whose prompt prefix is prefilled once and forked for each of them.
    /// </summary>
    public int ConversationsPerChunk { get; init; } = 8;

    /// <summary>Conversations generated together in one batched prefill/decode (default 16). Does not change the output.</summary>
    public int Concurrency { get; init; } = 16;

    /// <summary>
    /// Prefill each chunk once and fork its KV into every conversation on it (default true). False prefills
    /// every prompt whole: the same tokens, slower; kept for checking that sharing changes nothing.
    /// </summary>
    public bool SharePrefix { get; init; } = true;

    /// <summary>Store the chunk text in each record (default true); the student never sees it either way.</summary>
    public bool KeepChunkText { get; init; } = true;

    /// <summary>Throws <see cref="InvalidRequestException"/> with the offending setting and what to do.</summary>
    public void Validate()
    {
        if (Conversations < 1)
            throw new InvalidRequestException($"the number of conversations must be at least 1, got {Conversations}.");
        if (MinChunkTokens < 1 || MaxChunkTokens < MinChunkTokens)
            throw new InvalidRequestException($"chunk sizes {MinChunkTokens}:{MaxChunkTokens} are invalid; need 1 <= MIN <= MAX tokens.");
        if (Rounds < 1)
            throw new InvalidRequestException($"rounds must be at least 1, got {Rounds}.");
        if (TopK < 1 || TopK > SparseTargets.MaxK)
            throw new InvalidRequestException($"top-k must be in 1..{SparseTargets.MaxK}, got {TopK}.");
        if (!(TopKMass > 0 && TopKMass <= 1))
            throw new InvalidRequestException($"top-k probability mass must be in (0, 1], got {TopKMass}.");
        if (ConversationsPerChunk < 1)
            throw new InvalidRequestException($"conversations per chunk must be at least 1, got {ConversationsPerChunk}.");
        if (Concurrency < 1)
            throw new InvalidRequestException($"concurrency must be at least 1, got {Concurrency}.");
        ArgumentNullException.ThrowIfNull(SeedPrompts);
        ArgumentNullException.ThrowIfNull(UserAgent);
        ArgumentNullException.ThrowIfNull(AnswerAgent);
        UserAgent.Validate("agent A (user messages)");
        AnswerAgent.Validate("agent B (answers)");
    }
}

/// <summary>Where a run stands, reported while it works (see <see cref="SelfStudySynthesizer.Run"/>).</summary>
public sealed record SynthesisProgress
{
    /// <summary>Conversations the run is asked for (indices 0 .. Total-1).</summary>
    public long Total { get; init; }
    /// <summary>Conversations that were already in the dataset and were skipped.</summary>
    public long AlreadyPresent { get; init; }
    /// <summary>Conversations finished in this run (written plus dropped).</summary>
    public long Done { get; init; }
    /// <summary>Tokens generated by both agents so far in this run.</summary>
    public long GeneratedTokens { get; init; }
    public TimeSpan Elapsed { get; init; }

    /// <summary>Conversations this run still has to do.</summary>
    public long Remaining => Math.Max(0, Total - AlreadyPresent - Done);
    public double TokensPerSecond => Elapsed.TotalSeconds > 0 ? GeneratedTokens / Elapsed.TotalSeconds : 0;

    /// <summary>Estimated time left from the conversation rate so far (null before the first conversation is done).</summary>
    public TimeSpan? Eta => Done == 0 ? null : TimeSpan.FromSeconds(Elapsed.TotalSeconds / Done * Remaining);
}

/// <summary>What a run did. Every conversation asked for is either already present, written, or dropped with a reason counted here.</summary>
public sealed record SynthesisSummary
{
    public long Requested { get; init; }
    /// <summary>Already in the dataset (resume), skipped.</summary>
    public long AlreadyPresent { get; init; }
    /// <summary>Handed to the sink (written).</summary>
    public long Written { get; init; }
    /// <summary>Dropped because agent A wrote nothing usable for the first user message.</summary>
    public long DroppedEmptyMessage { get; init; }
    /// <summary>Dropped because agent B's first answer was empty (cut at a stop string before any token).</summary>
    public long DroppedEmptyAnswer { get; init; }
    /// <summary>Dropped because the first round's prompt did not fit the model's context.</summary>
    public long DroppedNoRoom { get; init; }
    /// <summary>Written with fewer rounds than asked: a later round had an empty user message or no room left in the context.</summary>
    public long CutShort { get; init; }
    /// <summary>Answers that ended because they reached the answer token limit or the context (not a stop).</summary>
    public long AnswersTruncated { get; init; }
    /// <summary>Chunk prefixes prefilled (once per chunk and agent prompt style when prefixes are shared; again only when a chunk's conversations are more than a wave apart).</summary>
    public long ChunkPrefills { get; init; }
    /// <summary>Tokens generated by agent A and agent B.</summary>
    public long UserTokens { get; init; }
    public long AnswerTokens { get; init; }
    public long GeneratedTokens => UserTokens + AnswerTokens;
    /// <summary>Teacher top-k entries written (sum of k over answer positions).</summary>
    public long TargetEntries { get; init; }
    public TimeSpan Elapsed { get; init; }
    public double TokensPerSecond => Elapsed.TotalSeconds > 0 ? GeneratedTokens / Elapsed.TotalSeconds : 0;
    /// <summary>Time spent prefilling chunk prefixes.</summary>
    public TimeSpan ChunkPrefillTime { get; init; }
    /// <summary>Time spent prefilling the agents' prompts after the chunk prefix (up to each batch's first sampled token).</summary>
    public TimeSpan PromptPrefillTime { get; init; }
    /// <summary>Time spent decoding (from each batch's first sampled token to its end).</summary>
    public TimeSpan DecodeTime { get; init; }
}
