using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Resources;

namespace Cas.SelfStudy;

/// <summary>
/// Makes self-study training data: for conversation i of a run, chunk number i / ConversationsPerChunk
/// (<see cref="Chunker.SampleAt"/>: documents drawn in proportion to their length), a seed prompt
/// (<see cref="SeedPromptMix.SampleAt"/>), then for each round agent A (the model with the chunk and the seed
/// prompt) writes a user message and agent B (the model with the chunk in context) answers it. B's top-k
/// log-probs at every answer token (<see cref="TeacherTopK"/>) are the distillation targets.
/// <para><b>Student sequence.</b> A record's messages, concatenated, are the student's input after its
/// cartridge: each user message's <c>Tokens</c> hold that turn with its template framing (tokenized on its
/// own), each answer's <c>Tokens</c> are exactly the ids B generated (ending with B's end-of-turn token
/// when it stopped on one). The chunk is never part of it. B's prompt is the chunk prefix followed by
/// exactly these tokens, so position p of the targets is B's distribution for answer token p given the
/// chunk and the student's sequence before it.</para>
/// <para><b>Batching.</b> <see cref="SelfStudyOptions.Concurrency"/> conversations run as one wave: each
/// chunk of the wave is prefilled once (per agent prompt style) and forked into the conversations on it
/// (<see cref="GenerationRequest.Fork"/>); all of agent A's turns of the wave are one batched
/// <see cref="Generator.Generate"/> call, then all of B's. Rounds run one after the other.</para>
/// <para><b>Determinism.</b> What conversation i is depends only on (seed, i): its chunk, seed prompt,
/// sampling seeds (<see cref="SamplingSeed"/>) and id (<see cref="ConversationIds.For"/>); records are
/// handed over in index order. Chunk prefixes are prefilled alone and the generator never splits a
/// prompt at a point that depends on its batch, so with row-independent kernels (<c>CAS_BLAS=managed</c>)
/// the output is byte-identical at any concurrency; with the default per-shape BLAS choice the batch
/// size picks the kernel, and log-probs can differ in their last bits between concurrencies (the same
/// concurrency always gives the same bytes).</para>
/// Not thread-safe: one run at a time.
/// </summary>
public sealed class SelfStudySynthesizer
{
    /// <summary>RNG stream ids of the sampling seeds start here (the chunker uses 1, the prompt mix 2).</summary>
    public const ulong SamplingStream = 16;

    readonly Model model;
    readonly ITokenizer tokenizer;
    readonly SynthesisFraming framing;
    readonly Transformer transformer;
    readonly Generator generator;
    readonly Func<IReadOnlyList<int>, bool>? userStop, answerStop;
    string? fingerprint;

    public SelfStudyOptions Options { get; }
    public Chunker Chunker { get; }
    /// <summary>The prompt layout in use: "chatml", "llama3" or "base".</summary>
    public string Framing => framing.Name;

    /// <summary>
    /// Prepares a run over <paramref name="documents"/>. <paramref name="chatFormat"/> null (or Plain) uses
    /// base-model framing. Throws <see cref="InvalidRequestException"/> for bad options, no documents, a
    /// tokenizer that does not fit the model, or chunks and answers that cannot fit the model's context.
    /// </summary>
    public SelfStudySynthesizer(Model model, ITokenizer tokenizer, ChatFormatKind? chatFormat, IReadOnlyList<Document> documents, SelfStudyOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(documents);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (documents.Count == 0)
            throw new InvalidRequestException("there are no documents to synthesize from: the resources yielded none (see the resource report for what was skipped).");
        if (tokenizer.VocabSize > model.Config.VocabSize)
            throw new InvalidRequestException($"the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary is {model.Config.VocabSize}; they do not belong together.");
        this.model = model;
        this.tokenizer = tokenizer;
        Options = options;
        framing = SynthesisFraming.Create(chatFormat, tokenizer);
        Chunker = new Chunker(documents, new ChunkerOptions { Unit = ChunkUnit.Tokens, MinSize = options.MinChunkTokens, MaxSize = options.MaxChunkTokens }, tokenizer);
        if (Chunker.TotalSize == 0)
            throw new InvalidRequestException($"all {documents.Count} documents tokenize to nothing; there is no text to synthesize from.");
        CheckContext();
        transformer = new Transformer(model);
        generator = new Generator(transformer);
        userStop = StopText.Detector(tokenizer, framing.UserStopTexts);
        answerStop = StopText.Detector(tokenizer, framing.AnswerStopTexts);
    }

    /// <summary>
    /// The sampling seed of agent <paramref name="agent"/> (0 = A, 1 = B) in round <paramref name="round"/>
    /// (0-based) of conversation <paramref name="index"/>.
    /// </summary>
    public static ulong SamplingSeed(ulong runSeed, long index, int round, int agent) =>
        DeterministicRng.ForIndex(runSeed, index, SamplingStream + (ulong)(2 * round + agent)).NextUInt64();

    /// <summary>
    /// Dataset header metadata describing everything that decides the output (model fingerprint, framing,
    /// seed, chunk sizes, seed prompt mix, rounds, agents, top-k), plus <paramref name="extra"/> entries
    /// (e.g. the tokenizer). A resumed run must produce the same.
    /// </summary>
    public IReadOnlyDictionary<string, string> Metadata(IReadOnlyDictionary<string, string>? extra = null)
    {
        fingerprint ??= ModelFingerprint.Compute(model);
        var o = Options;
        var ci = CultureInfo.InvariantCulture;
        var m = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["producer"] = "cas self-study synthesis",
            ["model_fingerprint"] = fingerprint,
            ["vocab_size"] = model.Config.VocabSize.ToString(ci),
            ["framing"] = framing.Name,
            ["seed"] = o.Seed.ToString(ci),
            ["chunk_tokens"] = string.Create(ci, $"{o.MinChunkTokens}:{o.MaxChunkTokens}"),
            ["conversations_per_chunk"] = o.ConversationsPerChunk.ToString(ci),
            ["seed_prompts"] = o.SeedPrompts.ToString(),
            ["rounds"] = o.Rounds.ToString(ci),
            ["agent_a"] = o.UserAgent.ToString(),
            ["agent_b"] = o.AnswerAgent.ToString(),
            ["top_k"] = o.TopK.ToString(ci),
            ["top_k_mass"] = o.TopKMass.ToString("R", ci),
            ["chunk_text"] = o.KeepChunkText ? "kept" : "omitted",
        };
        if (extra != null) foreach (var (k, v) in extra) m[k] = v;
        return m;
    }

    /// <summary>
    /// Generates into <paramref name="writer"/>: conversations whose id it already holds are skipped (resume),
    /// the others are appended in index order. See <see cref="Run"/>.
    /// </summary>
    public SynthesisSummary WriteTo(DatasetWriter writer, Action<SynthesisProgress>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(writer);
        return Run(writer.Contains, writer.Append, progress, cancel);
    }

    /// <summary>
    /// Generates conversations 0 .. Conversations-1, skipping those whose id <paramref name="alreadyPresent"/>
    /// reports, and hands each finished one to <paramref name="sink"/> in index order (a wave at a time).
    /// <paramref name="progress"/> is called a few times a second and after every wave. Cancelling stops
    /// in the middle of a wave: conversations of finished waves have all been handed over, none of the
    /// current wave has, so a resumed run redoes exactly the missing ones.
    /// </summary>
    public SynthesisSummary Run(Func<ulong, bool>? alreadyPresent, Action<Conversation> sink, Action<SynthesisProgress>? progress = null,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(sink);
        var run = new RunState(this, progress);
        var wave = new List<long>(Options.Concurrency);
        var chunks = new Dictionary<long, ChunkContext>(); // the previous wave's, reused when a chunk spans two waves
        for (long i = 0; i < Options.Conversations; i++)
        {
            if (alreadyPresent != null && alreadyPresent(ConversationIds.For(Options.Seed, i))) { run.AlreadyPresent++; continue; }
            wave.Add(i);
            if (wave.Count == Options.Concurrency) { chunks = RunWave(wave, chunks, run, sink, cancel); wave.Clear(); }
        }
        if (wave.Count > 0) RunWave(wave, chunks, run, sink, cancel);
        run.Report(force: true);
        return run.Summary();
    }

    /// <summary>Counters of one run.</summary>
    sealed class RunState(SelfStudySynthesizer owner, Action<SynthesisProgress>? progress)
    {
        public readonly Stopwatch Clock = Stopwatch.StartNew();
        TimeSpan lastReport;
        public long AlreadyPresent, Written, DroppedEmptyMessage, DroppedEmptyAnswer, DroppedNoRoom, CutShort, AnswersTruncated,
            ChunkPrefills, UserTokens, AnswerTokens, TargetEntries;
        public TimeSpan ChunkPrefillTime, PromptPrefillTime, DecodeTime;

        /// <summary>Runs one batched Generate, splitting its time into prompt prefill (until the first sampled token) and decode.</summary>
        public IReadOnlyList<GenerationResult> Timed(Func<Action, IReadOnlyList<GenerationResult>> generate)
        {
            var start = Clock.Elapsed;
            TimeSpan? first = null;
            var results = generate(() => first ??= Clock.Elapsed);
            var end = Clock.Elapsed;
            PromptPrefillTime += (first ?? end) - start;
            DecodeTime += end - (first ?? end);
            return results;
        }

        public long Done => Written + DroppedEmptyMessage + DroppedEmptyAnswer + DroppedNoRoom;

        public void Report(bool force)
        {
            if (progress is null) return;
            var now = Clock.Elapsed;
            if (!force && now - lastReport < TimeSpan.FromMilliseconds(200)) return;
            lastReport = now;
            progress(new SynthesisProgress
            {
                Total = owner.Options.Conversations, AlreadyPresent = AlreadyPresent, Done = Done,
                GeneratedTokens = UserTokens + AnswerTokens, Elapsed = now,
            });
        }

        public SynthesisSummary Summary() => new()
        {
            Requested = owner.Options.Conversations, AlreadyPresent = AlreadyPresent, Written = Written,
            DroppedEmptyMessage = DroppedEmptyMessage, DroppedEmptyAnswer = DroppedEmptyAnswer, DroppedNoRoom = DroppedNoRoom,
            CutShort = CutShort, AnswersTruncated = AnswersTruncated, ChunkPrefills = ChunkPrefills,
            UserTokens = UserTokens, AnswerTokens = AnswerTokens, TargetEntries = TargetEntries, Elapsed = Clock.Elapsed,
            ChunkPrefillTime = ChunkPrefillTime, PromptPrefillTime = PromptPrefillTime, DecodeTime = DecodeTime,
        };
    }

    /// <summary>A chunk of the current wave with its prompt prefixes (and their prefilled KV when shared).</summary>
    sealed class ChunkContext
    {
        public required Chunk Chunk;
        public required int[] UserPrefix, TeacherPrefix;
        public KvCache? UserCache, TeacherCache;
    }

    /// <summary>One finished exchange.</summary>
    sealed record Turn(string User, int[] UserTokens, string Answer, int[] AnswerTokens, SparseTargets Targets);

    enum EndReason { None, EmptyMessage, EmptyAnswer, NoRoom }

    /// <summary>One conversation of the current wave.</summary>
    sealed class Slot
    {
        public required long Index;
        public required SeedPrompt Seed;
        public required ChunkContext Chunk;
        public readonly List<Turn> Turns = [];
        public readonly List<(string User, string Answer)> History = [];
        public int[] Student = [];        // the student's sequence so far
        public string? PendingUser;       // this round's user message, once A has written it
        public EndReason Ended;
    }

    /// <summary>Runs one wave and returns its chunks (for the next wave to reuse).</summary>
    Dictionary<long, ChunkContext> RunWave(List<long> indices, Dictionary<long, ChunkContext> previous, RunState run, Action<Conversation> sink,
        CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        var o = Options;
        var chunks = new Dictionary<long, ChunkContext>();
        var slots = new Slot[indices.Count];
        for (int s = 0; s < slots.Length; s++)
        {
            long i = indices[s], group = i / o.ConversationsPerChunk;
            if (!chunks.TryGetValue(group, out var cc))
                chunks[group] = cc = previous.TryGetValue(group, out var kept) ? kept : PrepareChunk(group, run);
            slots[s] = new Slot { Index = i, Seed = o.SeedPrompts.SampleAt(o.Seed, i), Chunk = cc };
        }

        for (int round = 0; round < o.Rounds; round++)
        {
            UserTurns(slots, round, run, cancel);
            Answers(slots, round, run, cancel);
        }

        foreach (var s in slots)
        {
            if (s.Turns.Count == 0)
            {
                switch (s.Ended)
                {
                    case EndReason.EmptyMessage: run.DroppedEmptyMessage++; break;
                    case EndReason.EmptyAnswer: run.DroppedEmptyAnswer++; break;
                    default: run.DroppedNoRoom++; break;
                }
                continue;
            }
            if (s.Turns.Count < o.Rounds) run.CutShort++;
            var messages = new List<ConversationMessage>(2 * s.Turns.Count);
            foreach (var t in s.Turns)
            {
                messages.Add(new ConversationMessage(MessageRole.User, t.User, t.UserTokens));
                messages.Add(new ConversationMessage(MessageRole.Assistant, t.Answer, t.AnswerTokens, t.Targets));
                run.TargetEntries += t.Targets.TotalEntries;
            }
            var chunk = s.Chunk.Chunk;
            sink(new Conversation(ConversationIds.For(o.Seed, s.Index), chunk.Location, o.KeepChunkText ? chunk.Text : "",
                s.Seed.Kind, s.Seed.Text, messages));
            run.Written++;
        }
        run.Report(force: true);
        return chunks;
    }

    ChunkContext PrepareChunk(long group, RunState run)
    {
        var chunk = Chunker.SampleAt(Options.Seed, group);
        var cc = new ChunkContext { Chunk = chunk, UserPrefix = framing.UserPrefix(chunk.Text), TeacherPrefix = framing.TeacherPrefix(chunk.Text) };
        if (!Options.SharePrefix) return cc;
        cc.UserCache = Prefill(cc.UserPrefix, run);
        cc.TeacherCache = cc.TeacherPrefix.AsSpan().SequenceEqual(cc.UserPrefix) ? cc.UserCache : Prefill(cc.TeacherPrefix, run);
        return cc;
    }

    /// <summary>The KV of a chunk prefix, computed alone (so it does not depend on the wave); null when it leaves no room to generate.</summary>
    KvCache? Prefill(int[] ids, RunState run)
    {
        if (ids.Length >= model.Config.MaxSeqLen) return null;
        var start = run.Clock.Elapsed;
        var cache = new KvCache(model.Config, ids.Length);
        transformer.Forward([cache], [ids], default);
        run.ChunkPrefills++;
        run.ChunkPrefillTime += run.Clock.Elapsed - start;
        return cache;
    }

    /// <summary>A request continuing <paramref name="prefix"/> with <paramref name="suffix"/>: forked from the shared prefill, or whole.</summary>
    GenerationRequest? Request(int[] prefix, KvCache? shared, int[] suffix)
    {
        if (prefix.Length + suffix.Length >= model.Config.MaxSeqLen) return null; // no room for even one token
        if (!Options.SharePrefix) return new GenerationRequest([.. prefix, .. suffix]);
        return shared is null ? null : new GenerationRequest(suffix) { Fork = shared };
    }

    void UserTurns(Slot[] slots, int round, RunState run, CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        var a = Options.UserAgent;
        var requests = new List<GenerationRequest>();
        var owners = new List<Slot>();
        foreach (var s in slots)
        {
            if (s.Ended != EndReason.None) continue;
            var suffix = framing.UserSuffix(s.Chunk.Chunk.Text, s.Seed, s.History);
            var r = Request(s.Chunk.UserPrefix, s.Chunk.UserCache, suffix);
            if (r is null) { s.Ended = EndReason.NoRoom; continue; }
            requests.Add(r with
            {
                MaxTokens = a.MaxTokens,
                Sampling = new SamplingOptions { Temperature = a.Temperature, TopP = a.TopP, Seed = SamplingSeed(Options.Seed, s.Index, round, 0) },
                StopTokens = framing.UserStopTokens,
                StopAfter = userStop,
            });
            owners.Add(s);
        }
        if (requests.Count == 0) return;
        var results = run.Timed(firstToken => generator.Generate(requests, (_, _, _) =>
        {
            firstToken();
            run.UserTokens++;
            run.Report(force: false);
        }, cancel));
        for (int j = 0; j < owners.Count; j++)
        {
            string message = framing.CleanUserMessage(tokenizer.Decode(results[j].Tokens));
            if (message.Length == 0) owners[j].Ended = EndReason.EmptyMessage;
            else owners[j].PendingUser = message;
        }
    }

    /// <summary>Per-request record of what B sampled and its top-k at each step.</summary>
    sealed class AnswerTrace
    {
        public readonly List<int> Sampled = [];
        public readonly List<int> Offsets = [0];
        public readonly List<int> Ids = [];
        public readonly List<float> LogProbs = [];
    }

    void Answers(Slot[] slots, int round, RunState run, CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        var b = Options.AnswerAgent;
        var requests = new List<GenerationRequest>();
        var owners = new List<Slot>();
        var userTurns = new List<int[]>();
        foreach (var s in slots)
        {
            if (s.Ended != EndReason.None || s.PendingUser is null) continue;
            var userTurn = framing.StudentUserTurn(s.PendingUser, s.Turns.Count == 0 ? null : s.Turns[^1].AnswerTokens);
            int[] sequence = [.. s.Student, .. userTurn];
            var r = Request(s.Chunk.TeacherPrefix, s.Chunk.TeacherCache, sequence);
            if (r is null) { s.Ended = EndReason.NoRoom; s.PendingUser = null; continue; }
            requests.Add(r with
            {
                MaxTokens = b.MaxTokens,
                Sampling = new SamplingOptions { Temperature = b.Temperature, TopP = b.TopP, Seed = SamplingSeed(Options.Seed, s.Index, round, 1) },
                StopTokens = framing.AnswerStopTokens,
                StopAfter = answerStop,
            });
            owners.Add(s);
            userTurns.Add(userTurn);
        }
        if (requests.Count == 0) return;

        var traces = new AnswerTrace[requests.Count];
        for (int j = 0; j < traces.Length; j++) traces[j] = new AnswerTrace();
        int maxK = Options.TopK;
        double mass = Options.TopKMass;
        var ids = new int[maxK];
        var lps = new float[maxK];
        var results = run.Timed(firstToken => generator.Generate(requests, (req, token, logits) =>
        {
            firstToken();
            var t = traces[req];
            int k = TeacherTopK.Select(logits, maxK, mass, ids, lps);
            for (int e = 0; e < k; e++) { t.Ids.Add(ids[e]); t.LogProbs.Add(lps[e]); }
            t.Offsets.Add(t.Ids.Count);
            t.Sampled.Add(token);
            run.AnswerTokens++;
            run.Report(force: false);
        }, cancel));

        for (int j = 0; j < owners.Count; j++)
        {
            var s = owners[j];
            var t = traces[j];
            var result = results[j];
            string user = s.PendingUser!;
            s.PendingUser = null;
            // A stop token is sampled (and has targets) but not emitted: it ends the answer's tokens.
            bool endedOnStopToken = t.Sampled.Count == result.Tokens.Length + 1;
            int keep = endedOnStopToken ? t.Sampled.Count : StopText.KeepBeforeStop(tokenizer, result.Tokens, framing.AnswerStopTexts);
            if (keep == 0)
            {
                s.Ended = EndReason.EmptyAnswer;
                continue;
            }
            if (!endedOnStopToken && result.Finish != FinishReason.Stop) run.AnswersTruncated++;
            int[] answer = t.Sampled.GetRange(0, keep).ToArray();
            int entries = t.Offsets[keep];
            var targets = new SparseTargets(t.Offsets.GetRange(0, keep + 1).ToArray(), t.Ids.GetRange(0, entries).ToArray(), t.LogProbs.GetRange(0, entries).ToArray());
            string text = tokenizer.Decode(answer.AsSpan(0, endedOnStopToken ? keep - 1 : keep));
            s.Turns.Add(new Turn(user, userTurns[j], text, answer, targets));
            s.History.Add((user, text));
            s.Student = [.. s.Student, .. userTurns[j], .. answer];
        }
    }

    /// <summary>
    /// Context positions a first round needs besides the chunk and the generated tokens: agent A's prompt (framing,
    /// the longest seed prompt of the mix, the reply instruction) and agent B's (framing around chunk and user turn).
    /// </summary>
    public static (int User, int Teacher) PromptOverheads(SynthesisFraming framing, ITokenizer tokenizer, SeedPromptMix mix)
    {
        ArgumentNullException.ThrowIfNull(framing); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(mix);
        int seed = 0;
        foreach (var kind in SeedPromptKinds.All)
        {
            if (mix.Weight(kind) == 0) continue;
            foreach (var p in SeedPrompts.Phrasings(kind))
                seed = Math.Max(seed, tokenizer.Encode(p.Replace(SeedPrompts.FormatPlaceholder, "plain text with one fact per line")).Length);
        }
        return (framing.Overhead(teacher: false) + seed + 16, framing.Overhead(teacher: true)); // 16: the reply instruction added to the seed prompt
    }

    /// <summary>Refuses settings whose first round cannot fit the model's context, with the numbers and what to change.</summary>
    void CheckContext()
    {
        int ctx = model.Config.MaxSeqLen;
        long longest = 0;
        for (int d = 0; d < Chunker.DocumentCount; d++) longest = Math.Max(longest, Chunker.SizeOf(d));
        int chunk = (int)Math.Min(longest, Options.MaxChunkTokens);
        var (userOverhead, teacherOverhead) = PromptOverheads(framing, tokenizer, Options.SeedPrompts);
        int a = Options.UserAgent.MaxTokens, b = Options.AnswerAgent.MaxTokens;
        int userNeed = userOverhead + chunk + a;
        int answerNeed = teacherOverhead + chunk + a + b;
        int need = Math.Max(userNeed, answerNeed);
        if (need <= ctx) return;
        int fit = chunk - (need - ctx);
        throw new InvalidRequestException(
            $"chunks of up to {chunk} tokens with prompts (about {need - chunk - a - b} tokens) and agent A's {a} and agent B's {b} generated tokens " +
            $"need about {need} positions, but the model's context is {ctx}. " +
            (fit >= 1
                ? $"Lower the chunk size (--chunk-tokens {fit} or less) or the token limits (--max-answer-tokens, --max-user-tokens), or leave them out to have them derived from the context."
                : "Lower the token limits (--max-answer-tokens, --max-user-tokens): even a one-token chunk does not fit."));
    }
}
