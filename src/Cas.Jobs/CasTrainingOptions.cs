using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Cas.Data;
using Cas.Engine;
using Cas.SelfStudy;
using Cas.Training;

namespace Cas.Jobs;

/// <summary>
/// Settings of a CAS training job (`cas collection train`). Everything except <see cref="ResidentBudgetBytes"/> decides
/// the cartridges, and is recorded with the job: a rerun with the same settings resumes it.
/// </summary>
public sealed record CasTrainingOptions
{
    /// <summary>p = document tokens / compression (floor <see cref="MinCartridgeTokens"/>).</summary>
    public double Compression { get; init; } = 20;
    public int MinCartridgeTokens { get; init; } = 16;
    /// <summary>B: cartridges resident with their gradients and AdamW moments.</summary>
    public int Resident { get; init; } = 20;
    /// <summary>R: global steps between rotations.</summary>
    public int RotateEvery { get; init; } = 10;
    /// <summary>φ: fraction of the resident set rotated out at each rotation (most-trained out, least-trained in).</summary>
    public double RotateFraction { get; init; } = 0.5;
    /// <summary>P_iso: probability that an example sees its gold cartridge alone.</summary>
    public double PIso { get; init; } = 0.75;
    /// <summary>K: otherwise k ~ U(1, K) distractors (fewer when fewer other cartridges are resident or the context is full).</summary>
    public int MaxDistractors { get; init; } = 10;
    /// <summary>Whether distractors receive gradients (and AdamW updates) from the examples they appear in.</summary>
    public bool DistractorGradients { get; init; } = true;
    /// <summary>
    /// Whether distractors are also drawn from the collection's finished cartridges in the store (this job's finished
    /// documents and fresh cartridges of earlier jobs), not only from the other resident ones: k is drawn over both
    /// alike. A store distractor is leased read-only through the budget manager for one step, frozen (no gradient, no
    /// optimizer state) and counted in the resident budget; a draw that does not fit the room the budget has left is
    /// dropped (never waited for).
    /// </summary>
    public bool StoreDistractors { get; init; } = true;
    /// <summary>
    /// Where an example's tokens start relative to its gold and distractor cartridges: after all of them
    /// (<see cref="Cas.Engine.Placement.Concat"/>, the reference's choice and what the service composes today) or at the
    /// distance from each that it has alone (<see cref="Cas.Engine.Placement.Aligned"/>, measured in
    /// eval/reports/CAS_COMPOSE_PLACEMENT.md; the service does not compose that way yet).
    /// </summary>
    public Cas.Engine.Placement Placement { get; init; } = Cas.Engine.Placement.Concat;
    /// <summary>Per document: training steps, each one <see cref="BatchSize"/> of its gold examples. Null: from <see cref="Epochs"/>.</summary>
    public int? Steps { get; init; }
    /// <summary>Per document: passes over its examples (default <see cref="DefaultEpochs"/>: 4 for probes, 8 for self-study).</summary>
    public double? Epochs { get; init; }
    /// <summary>Sequences per global step (one engine call; golds taken round-robin from the resident set).</summary>
    public int BatchSize { get; init; } = 8;
    public float LearningRate { get; init; } = TrainingRunOptions.DefaultLearningRate;
    public double WarmupFraction { get; init; } = 0.05;
    /// <summary>Steps of linear lr warmup for a cartridge re-entering the resident set.</summary>
    public int ReentryWarmup { get; init; } = 20;
    public float ClipNorm { get; init; } = 1f;
    public int FrozenSlots { get; init; } = 1;
    public ulong Seed { get; init; } = 1;
    /// <summary>Where each document's teacher data comes from: document probes (default) or self-study conversations.</summary>
    public CasDataSource Data { get; init; } = CasDataSource.Probes;
    /// <summary>How the self-study data of each document is made (<see cref="CasDataSource.SelfStudy"/> only; part of the job's identity either way).</summary>
    public CasSelfStudyOptions SelfStudy { get; init; } = new();
    /// <summary>How the teacher data of each document is made (probes per chunk, continuation, …; the chunk size is derived when 0).</summary>
    public DocumentProbeOptions Probes { get; init; } = new() { ExamplesPerChunk = TrainingRunOptions.DefaultProbesPerChunk, ChunkTokens = 0 };

    /// <summary>Not part of the job's identity: the resident budget in bytes handed to the budget manager by the caller.</summary>
    [JsonIgnore] public long ResidentBudgetBytes { get; init; }

    /// <summary>Throws <see cref="InvalidRequestException"/> naming the first bad value.</summary>
    public void Validate()
    {
        static string S(double v) => v.ToString(CultureInfo.InvariantCulture);
        if (!(Compression >= 1) || double.IsInfinity(Compression)) throw new InvalidRequestException($"--compression must be ≥ 1, got {S(Compression)}.");
        if (MinCartridgeTokens < 2) throw new InvalidRequestException($"the smallest cartridge must have ≥ 2 slots, got {MinCartridgeTokens}.");
        if (Resident < 1) throw new InvalidRequestException($"--resident must be ≥ 1, got {Resident}.");
        if (RotateEvery < 1) throw new InvalidRequestException($"--rotate-every must be ≥ 1, got {RotateEvery}.");
        if (!(RotateFraction >= 0 && RotateFraction <= 1)) throw new InvalidRequestException($"--rotate-fraction must lie in [0, 1], got {S(RotateFraction)}.");
        if (!(PIso >= 0 && PIso <= 1)) throw new InvalidRequestException($"--p-iso must lie in [0, 1], got {S(PIso)}.");
        if (MaxDistractors < 0) throw new InvalidRequestException($"--max-distractors must be ≥ 0, got {MaxDistractors}.");
        if (Steps is not null && Epochs is not null) throw new InvalidRequestException("give --steps or --epochs, not both.");
        if (Steps is int s && s <= 0) throw new InvalidRequestException($"--steps must be positive, got {s}.");
        if (Epochs is double e && !(e > 0 && double.IsFinite(e))) throw new InvalidRequestException($"--epochs must be positive, got {S(e)}.");
        if (BatchSize < 1) throw new InvalidRequestException($"--batch must be ≥ 1, got {BatchSize}.");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new InvalidRequestException($"--lr must be positive, got {S(LearningRate)}.");
        if (!(WarmupFraction >= 0 && WarmupFraction <= 1)) throw new InvalidRequestException($"--warmup must lie in [0, 1], got {S(WarmupFraction)}.");
        if (ReentryWarmup < 0) throw new InvalidRequestException($"the re-entry warmup must be ≥ 0 steps, got {ReentryWarmup}.");
        if (FrozenSlots < 0 || FrozenSlots >= MinCartridgeTokens) throw new InvalidRequestException($"frozen slots must lie in [0, {MinCartridgeTokens - 1}], got {FrozenSlots}.");
        if (ResidentBudgetBytes < 0) throw new InvalidRequestException($"the resident budget must be ≥ 0 bytes, got {ResidentBudgetBytes}.");
        if (!Enum.IsDefined(Data)) throw new InvalidRequestException($"--data-source must be probes or selfstudy, got {(int)Data}.");
        (Probes with { ChunkTokens = Math.Max(1, Probes.ChunkTokens) }).Validate();
        ArgumentNullException.ThrowIfNull(SelfStudy);
        SelfStudy.Validate();
    }

    /// <summary>p for a document of <paramref name="documentTokens"/> tokens (start tokens excluded).</summary>
    public int CartridgeTokensFor(int documentTokens) => Math.Max(MinCartridgeTokens, (int)(documentTokens / Compression));

    /// <summary>Gold examples a document trains on: steps × batch, or ⌈epochs × examples⌉.</summary>
    public long TargetExamples(int examples) => Steps is int s ? (long)s * BatchSize
        : Math.Max(1, (long)Math.Ceiling((Epochs ?? DefaultEpochs()) * examples));

    /// <summary>Epochs when neither <see cref="Steps"/> nor <see cref="Epochs"/> is given: <see cref="TrainingRunOptions.DefaultEpochs"/> (4) for probes, <see cref="CasSelfStudyOptions.DefaultEpochs"/> (8) for self-study.</summary>
    public double DefaultEpochs() => Data == CasDataSource.SelfStudy ? CasSelfStudyOptions.DefaultEpochs : TrainingRunOptions.DefaultEpochs;

    /// <summary>
    /// The job's identity: every setting that decides the cartridges, as JSON. A probe job's leaves out the data source and
    /// the self-study settings (they decide nothing there), so it is the identity it had before self-study existed and an
    /// unfinished probe job resumes across that upgrade.
    /// </summary>
    public string SettingsJson()
    {
        var node = JsonSerializer.SerializeToNode(this, Json)!.AsObject();
        if (Data == CasDataSource.Probes) { node.Remove(nameof(Data)); node.Remove(nameof(SelfStudy)); }
        if (Placement == Cas.Engine.Placement.Concat) node.Remove(nameof(Placement)); // jobs from before the option keep their identity
        return node.ToJsonString(Json);
    }

    internal static readonly JsonSerializerOptions Json = new() { Converters = { new JsonStringEnumConverter() } };
}

/// <summary>Where a CAS job's per-document teacher data comes from.</summary>
public enum CasDataSource
{
    /// <summary><see cref="DocumentProbes"/>: the teacher (model + chunk) continues probes cut from the document.</summary>
    Probes,
    /// <summary>Self-study: the synthesizer (<see cref="SelfStudySynthesizer"/>) run on the document alone, conversations proportional to its length.</summary>
    SelfStudy,
}

/// <summary>
/// Self-study per document (<see cref="CasDataSource.SelfStudy"/>): the existing synthesis run (<see cref="SynthesisRun"/>)
/// on one document, <see cref="ConversationsFor"/> conversations, written to a dataset under the data folder
/// (<see cref="CasTrainer.SelfStudyDatasetPath"/>) so that a resumed job continues it and a later job with the same
/// self-study settings reuses it. Sizes left null are derived from the model's context as `cas synthesize`
/// derives them (on stories260K: user messages 32, answers 64 tokens, chunks of 96–192 tokens). The defaults are the recipe measured in eval/reports/SELFSTUDY_PER_DOC.md.
/// </summary>
public sealed record CasSelfStudyOptions
{
    /// <summary>Epochs a self-study job trains when it is given neither steps nor epochs (measured: eval/reports/SELFSTUDY_PER_DOC.md).</summary>
    public const double DefaultEpochs = 8;

    /// <summary>Conversations per document token (the count is proportional to the document's length).</summary>
    public double ConversationsPerToken { get; init; } = 1;
    /// <summary>Fewest conversations for any document, however short.</summary>
    public int MinConversations { get; init; } = 64;
    /// <summary>Largest chunk agent A and B read (null: derived from the context).</summary>
    public int? ChunkTokens { get; init; }
    /// <summary>Smallest chunk (null: derived: half the largest).</summary>
    public int? MinChunkTokens { get; init; }
    /// <summary>Most tokens per user message (null: min(128, context / 16)).</summary>
    public int? MaxUserTokens { get; init; }
    /// <summary>Most tokens per answer (null: min(256, context / 8)).</summary>
    public int? MaxAnswerTokens { get; init; }
    /// <summary>Agent A's sampling temperature.</summary>
    public float UserTemperature { get; init; } = AgentOptions.UserDefaults.Temperature;
    /// <summary>Teacher entries kept per answer token.</summary>
    public int TopK { get; init; } = TeacherTopK.DefaultMaxK;
    /// <summary>The seed prompt mix, kind=weight,… (<see cref="SeedPromptMix.Parse"/>).</summary>
    public string SeedPrompts { get; init; } = SeedPromptMix.Uniform.ToString();
    /// <summary>Consecutive conversations sharing one chunk.</summary>
    public int ConversationsPerChunk { get; init; } = 8;
    /// <summary>Conversations generated together (does not change the data, so not part of the job's identity).</summary>
    [JsonIgnore] public int Concurrency { get; init; } = 16;

    /// <summary>Conversations for a document of <paramref name="documentTokens"/> tokens.</summary>
    public long ConversationsFor(int documentTokens) => Math.Max(MinConversations, (long)Math.Ceiling(documentTokens * ConversationsPerToken));

    /// <summary>Throws <see cref="InvalidRequestException"/> naming the first bad value (the synthesizer checks the rest against the model).</summary>
    public void Validate()
    {
        static string S(double v) => v.ToString(CultureInfo.InvariantCulture);
        if (!(ConversationsPerToken > 0) || double.IsInfinity(ConversationsPerToken))
            throw new InvalidRequestException($"--conversations-per-token must be positive, got {S(ConversationsPerToken)}.");
        if (MinConversations < 1) throw new InvalidRequestException($"the fewest self-study conversations per document must be ≥ 1, got {MinConversations}.");
        if (ChunkTokens is int c && c < 1) throw new InvalidRequestException($"self-study chunks must have ≥ 1 token, got {c}.");
        if (MinChunkTokens is int mc && (mc < 1 || (ChunkTokens is int c2 && mc > c2)))
            throw new InvalidRequestException($"the smallest self-study chunk ({mc}) must lie in [1, the largest ({S(ChunkTokens ?? double.PositiveInfinity)})].");
        if (MaxUserTokens is int u && u < 1) throw new InvalidRequestException($"self-study user messages need ≥ 1 token, got {u}.");
        if (MaxAnswerTokens is int a && a < 1) throw new InvalidRequestException($"self-study answers need ≥ 1 token, got {a}.");
        if (!(UserTemperature >= 0) || float.IsInfinity(UserTemperature)) throw new InvalidRequestException($"agent A's temperature must be ≥ 0, got {S(UserTemperature)}.");
        if (TopK < 1 || TopK > SparseTargets.MaxK) throw new InvalidRequestException($"--teacher-top-k must lie in [1, {SparseTargets.MaxK}], got {TopK}.");
        if (ConversationsPerChunk < 1) throw new InvalidRequestException($"conversations per chunk must be ≥ 1, got {ConversationsPerChunk}.");
        if (Concurrency < 1) throw new InvalidRequestException($"the synthesis concurrency must be ≥ 1, got {Concurrency}.");
        SeedPromptMix.Parse(SeedPrompts);
    }

    /// <summary>The synthesizer's settings for one document (seed, sizes and count filled in by the caller's plan).</summary>
    public SelfStudyOptions Settings(ulong seed) => new()
    {
        Seed = seed,
        SeedPrompts = SeedPromptMix.Parse(SeedPrompts),
        UserAgent = AgentOptions.UserDefaults with { Temperature = UserTemperature },
        TopK = TopK,
        ConversationsPerChunk = ConversationsPerChunk,
        Concurrency = Concurrency,
    };
}
