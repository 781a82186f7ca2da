using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Store;
using Cas.SelfStudy;
using Cas.Training;

namespace Cas.Jobs;

/// <summary>What a CAS job reports while it works (through <see cref="IProgress{T}"/>, on the training thread).</summary>
public abstract record CasJobEvent;
/// <summary>A one-line message (the plan, resuming, a superseded job, …).</summary>
public sealed record CasJobNote(string Text) : CasJobEvent;
/// <summary>Teacher data of one document: <paramref name="Done"/> of <paramref name="Total"/> probes answered.</summary>
public sealed record CasJobDataProgress(string DocumentId, int Done, int Total) : CasJobEvent;
/// <summary>
/// Self-study data of one document is ready: <paramref name="Conversations"/> in its dataset, of which
/// <paramref name="Made"/> were synthesized now and <paramref name="Reused"/> were already in it (a resumed job, or an
/// earlier job with the same self-study settings: <see cref="CasTrainer.SelfStudyDatasetPath"/>).
/// </summary>
public sealed record CasJobDataMade(string DocumentId, long Conversations, long Reused, long Made) : CasJobEvent;
/// <summary>Training starts (or continues at <paramref name="Step"/>): overall progress in gold examples.</summary>
public sealed record CasJobStarted(long JobId, bool Resumed, long Step, int Documents, int DocumentsDone) : CasJobEvent;
/// <summary>One global step done.</summary>
public sealed record CasJobStep(long Step, float Loss, int Sequences, int Updated, int Resident, int DocumentsDone, int Documents,
    long GoldDone, long GoldTarget, TimeSpan Elapsed) : CasJobEvent;
/// <summary>A rotation: cartridges (document ids) out and in.</summary>
public sealed record CasJobRotated(long Step, IReadOnlyList<string> Out, IReadOnlyList<string> In) : CasJobEvent;
/// <summary>A document's cartridge is finished and committed to the store.</summary>
public sealed record CasJobDocumentDone(string DocumentId, string CartridgeId, long Version, int CartridgeTokens, long Updates) : CasJobEvent;

/// <summary>What a finished (or already complete) job did.</summary>
/// <param name="SwapInMs">Each time a cartridge came into the resident set: reserve + load (or first-k init), in ms (teacher data excluded).</param>
public sealed record CasJobResult(long? JobId, bool Resumed, int Documents, int Trained, long Steps, long ResumedFromStep, TimeSpan Elapsed,
    int PeakResidentCartridges, long PeakResidentBytes, long ResidentBudget, IReadOnlyList<double> SwapInMs)
{
    /// <summary>Distractor places filled in this run's examples (one per distractor per sequence), resident or from the store.</summary>
    public long DistractorUses { get; init; }
    /// <summary>Of <see cref="DistractorUses"/>: frozen cartridges leased from the store (<see cref="CasTrainingOptions.StoreDistractors"/>).</summary>
    public long StoreDistractorUses { get; init; }
    /// <summary>Store distractors drawn but dropped because the resident budget had no room for them (or they could not be read).</summary>
    public long StoreDistractorsDropped { get; init; }

    public double SwapInPercentile(double q) => SwapInMs.Count == 0 ? 0 : Statistics.Percentile(SwapInMs.Order().ToArray(), q);
}

/// <summary>
/// CAS training of a collection: one cartridge per document (p = tokens / compression, first-k initialised), trained by
/// context distillation on teacher data made from the document (<see cref="DocumentProbes"/>), with dynamic distractor
/// mixing (<see cref="DistractorMixing"/>) so that cartridges compose, and B cartridges resident with their gradients and
/// AdamW moments, rotated every R steps (<see cref="Rotation"/>) through the budget manager. Resumable: the job is a row in
/// the catalog and a state folder DATA_DIR/jobs/ID (a JSON file + one checkpoint per started, unfinished document),
/// written at every rotation and on cancellation, so a kill -9 loses at most one rotation window and the rerun repeats
/// the uninterrupted job exactly. Finished cartridges are put in the store (one atomic version each) with the catalog's
/// labels. Writes nothing to the console. One job per data folder at a time (the store's lock enforces it).
/// </summary>
public sealed class CasTrainer
{
    public const string JobKind = "cas-train";
    readonly Model model;
    readonly ITokenizer tokenizer;
    readonly CollectionCatalog catalog;
    readonly ICartridgeStore store;
    readonly BudgetManager budget;
    readonly string dataDir;
    readonly string fingerprint;

    public CasTrainer(Model model, ITokenizer tokenizer, CollectionCatalog catalog, ICartridgeStore store, BudgetManager budget, string dataDir)
    {
        this.model = model ?? throw new ArgumentNullException(nameof(model));
        this.tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        this.catalog = catalog ?? throw new ArgumentNullException(nameof(catalog));
        this.store = store ?? throw new ArgumentNullException(nameof(store));
        this.budget = budget ?? throw new ArgumentNullException(nameof(budget));
        this.dataDir = Path.GetFullPath(dataDir ?? throw new ArgumentNullException(nameof(dataDir)));
        fingerprint = Cartridge.Fingerprint(model);
    }

    /// <summary>Bytes a resident cartridge of p slots holds: K/V, their gradient and two AdamW moments (fp32).</summary>
    public static long ResidentBytesFor(ModelConfig c, int p) => 4L * 2 * c.Layers * c.KvHeads * p * c.HeadDim * sizeof(float);

    /// <summary>Trains every document of <paramref name="collection"/> whose cartridge is missing, stale or bad (or continues the unfinished job).</summary>
    public CasJobResult Run(string collection, CasTrainingOptions options, IProgress<CasJobEvent>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var info = catalog.Get(collection);
        if (info.ModelFingerprint != fingerprint)
            throw new CartridgeMismatchException($"collection '{collection}' belongs to the model with fingerprint {Cartridge.ShortFingerprint(info.ModelFingerprint)} ({info.ModelPath}), not this one ({Cartridge.ShortFingerprint(fingerprint)}); train it with its own model.");
        var job = new Job(this, info, options, progress, cancel);
        return job.Run();
    }

    /// <summary>
    /// Where the self-study dataset of one document is kept: DATA_DIR/selfstudy/COLLECTION/KEY.casds, KEY a hash of the
    /// model, the document's content, the self-study settings and the seed (a changed document or setting gets a new file;
    /// the folder can be deleted at any time between jobs, costing only the synthesis).
    /// </summary>
    public static string SelfStudyDatasetPath(string dataDir, string collection, string modelFingerprint, string contentHash, CasSelfStudyOptions settings, ulong seed)
    {
        string identity = string.Join("\n", modelFingerprint, contentHash, JsonSerializer.Serialize(settings, CasTrainingOptions.Json), seed.ToString(CultureInfo.InvariantCulture));
        string key = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(identity)))[..24];
        return Path.Combine(Path.GetFullPath(dataDir), "selfstudy", collection, key + ".casds");
    }

    /// <summary>The state folder of a job.</summary>
    public string JobDirectory(long jobId) => Path.Combine(dataDir, "jobs", jobId.ToString(CultureInfo.InvariantCulture));

    // ------------------------------------------------------------------------------------------------
    // Persistent job state (JSON; numbers and names only, the tensors live in the per-document checkpoints)

    internal sealed class JobFile
    {
        public int Version { get; set; } = 1;
        public long JobId { get; set; }
        public string Settings { get; set; } = "";
        public long Step { get; set; }
        public long RoundRobin { get; set; }
        public List<int> Resident { get; set; } = new();
        public List<DocFile> Documents { get; set; } = new();
        /// <summary>Fresh cartridges of the collection outside this job when it was planned: store distractors besides the job's finished ones.</summary>
        public List<PoolFile> StorePool { get; set; } = new();
    }

    internal sealed class PoolFile
    {
        public string Id { get; set; } = "";
        public int P { get; set; }
    }

    internal sealed class DocFile
    {
        public string Id { get; set; } = "";
        public string ContentHash { get; set; } = "";
        public int P { get; set; }
        public long GoldSeen { get; set; }
        public long Target { get; set; }
        public int Entries { get; set; }
        public long UpdatesSinceEntry { get; set; }
        public long CursorEpoch { get; set; }
        public int CursorPosition { get; set; }
        public bool Done { get; set; }
        public long? Version { get; set; }
        public string? Checkpoint { get; set; }
    }

    /// <summary>One resident cartridge: its training state (cartridge + AdamW), gradient buffers and budget reservation.</summary>
    sealed class Resident(int doc, TrainingState state, float[][] grads, KvGradient gradient, MemoryReservation reservation, TrainingExamples examples)
    {
        public int Doc = doc;
        public TrainingState State = state;
        public float[][] Grads = grads;
        public KvGradient Gradient = gradient;
        public MemoryReservation Reservation = reservation;
        public TrainingExamples Examples = examples;
        public DataOrder Order = new(examples.Count, 0);
        public KvPrefix Prefix => State.Cartridge.Prefix;
    }

    sealed class Job
    {
        readonly CasTrainer t;
        readonly CollectionInfo info;
        readonly CasTrainingOptions o;
        readonly IProgress<CasJobEvent>? progress;
        readonly CancellationToken cancel;
        readonly ModelConfig cfg;
        readonly Dictionary<int, TrainingExamples> data = new();
        readonly List<Resident> resident = new();
        readonly List<double> swapIns = new();
        long distractorUses, storeUses, storeDrops;
        readonly HashSet<string> unusable = new();   // store distractors that could not be read (reported once, then skipped)
        readonly HashSet<int> dirty = new();   // documents whose progress row is behind since the last snapshot
        readonly CartridgeBackprop backprop;
        JobFile state = new();
        string dir = "";
        int peakResident;

        public Job(CasTrainer t, CollectionInfo info, CasTrainingOptions o, IProgress<CasJobEvent>? progress, CancellationToken cancel)
        {
            this.t = t; this.info = info; this.o = o; this.progress = progress; this.cancel = cancel;
            cfg = t.model.Config;
            backprop = new CartridgeBackprop(t.model, Math.Max(1, o.BatchSize * 96));
        }

        public CasJobResult Run()
        {
            var clock = Stopwatch.StartNew();
            string settings = o.SettingsJson();
            bool resumed = TryResume(settings);
            if (!resumed && !Plan(settings))
                return new CasJobResult(null, false, 0, 0, 0, 0, clock.Elapsed, 0, t.budget.Metrics().PeakResidentBytes, t.budget.Metrics().ResidentBudget, []);
            long resumedFrom = state.Step;
            int before = state.Documents.Count(d => d.Done);
            progress?.Report(new CasJobStarted(state.JobId, resumed, state.Step, state.Documents.Count, before));
            try
            {
                foreach (int d in state.Resident.ToList()) Enter(d, restore: true);
                FinishReady();
                Fill();
                while (resident.Count > 0)
                {
                    cancel.ThrowIfCancellationRequested();
                    StepOnce(clock);
                    if (state.Step % o.RotateEvery == 0) { Rotate(); Snapshot(); }
                    Fill();
                }
                Snapshot();
                t.catalog.FinishJob(state.JobId, JobState.Done);
                foreach (var r in resident) r.Reservation.Dispose();
                resident.Clear();
                TryDeleteDirectory(dir);
            }
            catch (OperationCanceledException)
            {
                Snapshot();
                t.catalog.FinishJob(state.JobId, JobState.Cancelled, "cancelled; run `cas collection train` again to continue");
                throw;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                try { t.catalog.FinishJob(state.JobId, JobState.Failed, e.Message); } catch { /* the original error matters */ }
                throw;
            }
            finally
            {
                foreach (var r in resident) r.Reservation.Dispose();
                resident.Clear();
            }
            var m = t.budget.Metrics();
            return new CasJobResult(state.JobId, resumed, state.Documents.Count, state.Documents.Count(d => d.Done) - before, state.Step, resumedFrom,
                clock.Elapsed, peakResident, m.PeakResidentBytes, m.ResidentBudget, swapIns)
            { DistractorUses = distractorUses, StoreDistractorUses = storeUses, StoreDistractorsDropped = storeDrops };
        }

        // ---- planning and resuming

        bool TryResume(string settings)
        {
            var open = t.catalog.Jobs(info.Name).Where(j => j.Kind == JobKind && j.State is not JobState.Done).OrderByDescending(j => j.Id).ToList();
            foreach (var j in open)
            {
                string path = Path.Combine(t.JobDirectory(j.Id), "state.json");
                if (!File.Exists(path))
                {
                    // Killed before its first snapshot (or its folder was removed): nothing to continue from.
                    if (j.State is JobState.Queued or JobState.Running) t.catalog.FinishJob(j.Id, JobState.Cancelled, "no saved state to continue from");
                    continue;
                }
                if (j.Settings != settings)
                {
                    t.catalog.FinishJob(j.Id, JobState.Cancelled, "superseded by a job with other settings");
                    TryDeleteDirectory(t.JobDirectory(j.Id));
                    progress?.Report(new CasJobNote($"job {j.Id} was made with other settings; it is cancelled and a new job starts"));
                    continue;
                }
                state = JsonSerializer.Deserialize<JobFile>(File.ReadAllText(path))
                    ?? throw new CasJobStateException($"{path} is empty; delete the folder {t.JobDirectory(j.Id)} to start over.");
                dir = t.JobDirectory(j.Id);
                // A document whose text changed since the job began starts over (its data and cartridge would be stale).
                var current = t.catalog.Documents(info.Name).ToDictionary(d => d.DocumentId);
                foreach (var d in state.Documents.Where(d => !d.Done))
                    if (!current.TryGetValue(d.Id, out var row) || row.ContentHash != d.ContentHash)
                    {
                        progress?.Report(new CasJobNote($"document {d.Id} changed since job {j.Id} began; its cartridge starts over"));
                        int idx = state.Documents.IndexOf(d);
                        state.Resident.Remove(idx);
                        Reset(d, row);
                    }
                progress?.Report(new CasJobNote($"resuming job {j.Id} at step {state.Step}: {state.Documents.Count(d => d.Done)}/{state.Documents.Count} documents done"));
                return true;
            }
            return false;
        }

        void Reset(DocFile d, DocumentRow? row)
        {
            d.GoldSeen = 0; d.Target = 0; d.Entries = 0; d.UpdatesSinceEntry = 0; d.CursorEpoch = 0; d.CursorPosition = 0; d.Checkpoint = null;
            if (row != null) { d.ContentHash = row.ContentHash; d.P = PFor(row); }
            else d.Done = true; // removed from the collection: nothing to train
        }

        int PFor(DocumentRow row)
        {
            int tokens = t.tokenizer.Encode(t.catalog.DocumentText(info.Name, row.DocumentId)).Length;
            int p = Math.Min(o.CartridgeTokensFor(tokens), tokens + t.tokenizer.StartTokens.Count);
            CartridgeInit.CheckLength(t.model, p);
            if (p <= o.FrozenSlots) throw new InvalidRequestException($"document {row.DocumentId} has only {tokens} tokens: too short for a cartridge with {o.FrozenSlots} frozen slots.");
            return p;
        }

        bool Plan(string settings)
        {
            var docs = t.catalog.NeedingTraining(info.Name, t.store);
            if (docs.Count == 0) { progress?.Report(new CasJobNote($"every cartridge of {info.Name} is fresh; nothing to train")); return false; }
            var files = docs.Select(d => new DocFile { Id = d.DocumentId, ContentHash = d.ContentHash, P = PFor(d) }).ToList();
            long need = ResidentBytesFor(cfg, files.Max(f => f.P)) * Math.Min(o.Resident, files.Count);
            var budgetNow = t.budget.Metrics().ResidentBudget;
            if (need > budgetNow)
                throw new BudgetExceededException(
                    $"{Math.Min(o.Resident, files.Count)} resident cartridges of up to p = {files.Max(f => f.P)} need {need} bytes (K/V, gradient, 2 AdamW moments) but the resident budget is {budgetNow}; lower --resident or raise the budget.");
            long id = t.catalog.CreateJob(info.Name, JobKind, settings, files.Select(f => f.Id), o.Steps ?? 0);
            var inJob = files.Select(f => f.Id).ToHashSet();
            var pool = o.StoreDistractors
                ? t.catalog.Status(info.Name, t.store).Where(s => s.State == CartridgeState.Fresh && s.Cartridge != null && !inJob.Contains(s.Document.DocumentId))
                    .Select(s => new PoolFile { Id = s.Cartridge!.Id, P = s.Cartridge.Length }).OrderBy(f => f.Id, StringComparer.Ordinal).ToList()
                : new List<PoolFile>();
            state = new JobFile { JobId = id, Settings = settings, Documents = files, StorePool = pool };
            dir = t.JobDirectory(id);
            Directory.CreateDirectory(dir);
            Snapshot();
            progress?.Report(new CasJobNote(string.Create(CultureInfo.InvariantCulture,
                $"job {id}: {files.Count} documents, p {files.Min(f => f.P)}..{files.Max(f => f.P)} (tokens/{o.Compression:G}, floor {o.MinCartridgeTokens}), B={o.Resident} resident, rotate {o.RotateFraction:G} every {o.RotateEvery} steps, p_iso={o.PIso:G}, K={o.MaxDistractors}, distractor grads {(o.DistractorGradients ? "on" : "off")}, data {(o.Data == CasDataSource.SelfStudy ? "self-study" : "probes")}")));
            return true;
        }

        // ---- the resident set

        IEnumerable<int> Waiting()
        {
            for (int i = 0; i < state.Documents.Count; i++)
                if (!state.Documents[i].Done && !state.Resident.Contains(i)) yield return i;
        }

        TrainingProgressOf ProgressOf(int i) { var d = state.Documents[i]; return new(i, d.GoldSeen, d.Target); }

        void Fill()
        {
            if (resident.Count >= o.Resident) return;
            var (_, ins) = Rotation.Choose(state.Resident.Select(ProgressOf).ToList(), Waiting().Select(ProgressOf).ToList(), o.Resident, 0);
            foreach (int d in ins) Enter(d, restore: false);
        }

        void Rotate()
        {
            var (outs, ins) = Rotation.Choose(state.Resident.Select(ProgressOf).ToList(), Waiting().Select(ProgressOf).ToList(), o.Resident, o.RotateFraction);
            if (outs.Length == 0 && ins.Length == 0) return;
            foreach (int d in outs) Exit(resident.First(r => r.Doc == d), save: true);
            foreach (int d in ins) Enter(d, restore: false);
            progress?.Report(new CasJobRotated(state.Step, outs.Select(d => state.Documents[d].Id).ToList(), ins.Select(d => state.Documents[d].Id).ToList()));
        }

        TrainingExamples Examples(int i)
        {
            if (data.TryGetValue(i, out var ex)) return ex;
            var d = state.Documents[i];
            string text = t.catalog.DocumentText(info.Name, d.Id);
            ex = o.Data == CasDataSource.SelfStudy ? SelfStudyExamples(d, text) : ProbeExamples(d, text);
            if (d.P + ex.MaxLength > cfg.MaxSeqLen)
                throw new InvalidRequestException($"document {d.Id}: its cartridge ({d.P} slots) plus its longest example ({ex.MaxLength} tokens) do not fit the model's context of {cfg.MaxSeqLen}; raise --compression.");
            data[i] = ex;
            return ex;
        }

        TrainingExamples ProbeExamples(DocFile d, string text)
        {
            var probes = o.Probes with
            {
                ChunkTokens = DocumentProbes.ChooseChunkTokens(cfg, t.tokenizer, o.Probes with { ChunkTokens = Math.Max(1, o.Probes.ChunkTokens) }, o.Probes.ChunkTokens > 0 ? o.Probes.ChunkTokens : null),
                Seed = DocumentSeed(d.Id),
            };
            return DocumentProbes.Build(t.model, t.tokenizer, text, d.Id, probes, (n, total) => progress?.Report(new CasJobDataProgress(d.Id, n, total)), cancel);
        }

        /// <summary>
        /// Self-study conversations about one document alone, made by the synthesis run into a dataset and
        /// read back as training examples. The dataset is kept under DATA_DIR/selfstudy/COLLECTION, named by everything
        /// that decides it (model, document content, self-study settings, seed): a dataset marked complete is read as it
        /// is (by this job resumed, or by a later job that trains the same document with other training settings); an
        /// incomplete one (a killed job) is continued where it stopped.
        /// </summary>
        TrainingExamples SelfStudyExamples(DocFile d, string text)
        {
            var ss = o.SelfStudy;
            ulong seed = DocumentSeed(d.Id);
            string path = SelfStudyDatasetPath(t.dataDir, info.Name, t.fingerprint, d.ContentHash, ss, seed);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string complete = path + ".complete";
            if (!File.Exists(complete) || !File.Exists(path))
            {
                long conversations = ss.ConversationsFor(t.tokenizer.Encode(text).Length);
                var run = new SynthesisRunOptions
                {
                    Resources = [], OutputPath = path, Conversations = conversations, Resume = true, TokenizerPath = info.TokenizerPath,
                    MinChunkTokens = ss.MinChunkTokens, MaxChunkTokens = ss.ChunkTokens, MaxUserTokens = ss.MaxUserTokens, MaxAnswerTokens = ss.MaxAnswerTokens,
                    Settings = ss.Settings(seed),
                };
                var doc = new Cas.Resources.Document(d.Id, text, d.Id, Cas.Resources.Document.NoMetadata, Cas.Resources.Document.NoQuestions);
                var events = new SyncProgress<SynthesisRunEvent>(e =>
                {
                    if (e is SynthesisRunProgress { Progress: var p })
                        progress?.Report(new CasJobDataProgress(d.Id, (int)Math.Min(int.MaxValue, p.AlreadyPresent + p.Done), (int)Math.Min(int.MaxValue, p.Total)));
                });
                var result = SynthesisRun.Execute(t.model, t.tokenizer, [doc], run, events, cancel);
                progress?.Report(new CasJobDataMade(d.Id, result.DatasetConversations, result.Summary.AlreadyPresent, result.Summary.Written));
                File.WriteAllText(complete, result.DatasetConversations.ToString(CultureInfo.InvariantCulture));
            }
            else
            {
                long n = long.Parse(File.ReadAllText(complete), CultureInfo.InvariantCulture);
                progress?.Report(new CasJobDataMade(d.Id, n, n, 0));
            }
            return DatasetExamples.Load(path, cfg.VocabSize, cfg.MaxSeqLen - d.P);
        }

        ulong DocumentSeed(string id)
        {
            ulong h = o.Seed;
            foreach (char c in id) h = SplitMix64.Mix(h ^ c);
            return h;
        }

        TrainingOptions PerDocumentOptions() => new()
        {
            Steps = int.MaxValue, BatchSize = o.BatchSize, LearningRate = o.LearningRate, ClipNorm = o.ClipNorm, FrozenSlots = o.FrozenSlots, Seed = o.Seed,
        };

        void Enter(int i, bool restore)
        {
            var d = state.Documents[i];
            var ex = Examples(i);
            if (d.Target == 0) d.Target = o.TargetExamples(ex.Count);
            var clock = Stopwatch.StartNew();
            var reservation = t.budget.Reserve($"train {CollectionCatalog.CartridgeId(info.Name, d.Id)}", ResidentBytesFor(cfg, d.P), cancel);
            TrainingState st;
            try
            {
                if (d.Checkpoint != null)
                {
                    st = TrainingState.LoadCheckpoint(Path.Combine(dir, d.Checkpoint), t.model, t.fingerprint);
                    st.ContinueWith(PerDocumentOptions(), ex);
                }
                else
                {
                    int[] tokens = [.. t.tokenizer.StartTokens, .. t.tokenizer.Encode(t.catalog.DocumentText(info.Name, d.Id))];
                    var cart = Cartridge.ForModel(t.model, CartridgeInit.FirstK(t.model, tokens, d.P), CartridgeInitKind.FirstK, o.FrozenSlots);
                    cart.Objective = "distill";
                    cart.SourceDocuments = [d.Id];
                    cart.Settings = new Dictionary<string, string> { ["cas_job"] = o.SettingsJson(), ["examples"] = ex.Count.ToString(CultureInfo.InvariantCulture) };
                    st = TrainingState.Start(cart, PerDocumentOptions(), ex);
                }
            }
            catch { reservation.Dispose(); throw; }
            var grads = st.Parameters.Select(a => new float[a.Length]).ToArray();
            var kk = new float[st.Prefix().Layers][]; var vv = new float[st.Prefix().Layers][];
            for (int l = 0; l < kk.Length; l++) { kk[l] = grads[2 * l]; vv[l] = grads[2 * l + 1]; }
            var r = new Resident(i, st, grads, new KvGradient(st.Prefix(), kk, vv), reservation, ex) { Order = new DataOrder(ex.Count, DocumentSeed(d.Id)) };
            if (!restore)
            {
                d.Entries++; d.UpdatesSinceEntry = 0;
                state.Resident.Add(i);
            }
            resident.Add(r);
            swapIns.Add(clock.Elapsed.TotalMilliseconds);
            peakResident = Math.Max(peakResident, resident.Count);
        }

        void Exit(Resident r, bool save)
        {
            if (save) SaveCheckpoint(r);
            dirty.Add(r.Doc);
            r.Reservation.Dispose();
            resident.Remove(r);
            state.Resident.Remove(r.Doc);
        }

        void SaveCheckpoint(Resident r)
        {
            var d = state.Documents[r.Doc];
            string name = string.Create(CultureInfo.InvariantCulture, $"doc{r.Doc}-step{state.Step}.ckpt");
            r.State.SaveCheckpoint(Path.Combine(dir, name));
            d.Checkpoint = name;
        }

        // ---- one global step

        /// <summary>
        /// Frozen distractor candidates from the store, in a fixed order (a function of the job's state, so a resumed job
        /// draws what the uninterrupted one drew): this job's finished documents, then the pool of earlier cartridges.
        /// </summary>
        List<(string Id, int P)> StoreCandidates()
        {
            var list = new List<(string, int)>();
            if (!o.StoreDistractors) return list;
            foreach (var d in state.Documents) if (d.Done && d.Version != null) list.Add((CollectionCatalog.CartridgeId(info.Name, d.Id), d.P));
            foreach (var f in state.StorePool) list.Add((f.Id, f.P));
            return list;
        }

        void StepOnce(Stopwatch clock)
        {
            // Candidate indices: 0..R-1 the resident cartridges, R.. the store candidates (leased for this step only).
            var storeCandidates = StoreCandidates();
            var leases = new Dictionary<int, CartridgeLease?>();
            try { StepOnce(clock, storeCandidates, leases); }
            finally { foreach (var l in leases.Values) l?.Dispose(); }
        }

        /// <summary>The lease of store candidate <paramref name="c"/> (≥ R) for this step; null when the budget has no room for it or it cannot be read.</summary>
        CartridgeLease? Lease(int c, List<(string Id, int P)> storeCandidates, Dictionary<int, CartridgeLease?> leases)
        {
            if (leases.TryGetValue(c, out var l)) return l;
            var (id, p) = storeCandidates[c - resident.Count];
            if (unusable.Contains(id)) return leases[c] = null;
            try
            {
                l = t.budget.TryAcquire(id, cancel);
                if (l != null && (l.Prefix.Length != p || l.Prefix.Layers != cfg.Layers))
                {
                    l.Dispose(); l = null; // replaced by a cartridge of another shape since the job was planned
                }
            }
            catch (StoreException e) when (e is CartridgeNotFoundException or CartridgeCorruptException)
            {
                progress?.Report(new CasJobNote($"store distractor {id} cannot be used: {e.Message}"));
                unusable.Add(id);
                l = null;
            }
            leases[c] = l;
            return l;
        }

        void StepOnce(Stopwatch clock, List<(string Id, int P)> storeCandidates, Dictionary<int, CartridgeLease?> leases)
        {
            // Golds round-robin over the resident cartridges that still need examples.
            var batch = new List<TrainingSequence>(o.BatchSize);
            var prefixes = new List<ComposedPrefix>(o.BatchSize);
            var golds = new List<int>(o.BatchSize);          // resident index of each sequence's gold
            var orders = new List<int[]>(o.BatchSize);       // resident indices in prefix order
            var assigned = new long[resident.Count];
            for (int slot = 0; slot < o.BatchSize; slot++)
            {
                int pick = -1;
                for (int tries = 0; tries < resident.Count; tries++)
                {
                    int c = (int)(state.RoundRobin++ % resident.Count);
                    var dc = state.Documents[resident[c].Doc];
                    if (dc.GoldSeen + assigned[c] < dc.Target) { pick = c; break; }
                }
                if (pick < 0) break;
                assigned[pick]++;
                var g = resident[pick];
                var gd = state.Documents[g.Doc];
                var cursor = new DataCursor(gd.CursorEpoch, gd.CursorPosition);
                var ex = g.Examples[g.Order.Next(ref cursor)];
                gd.CursorEpoch = cursor.Epoch; gd.CursorPosition = cursor.Position;
                int rc = resident.Count;
                var candidates = Enumerable.Range(0, rc + storeCandidates.Count).Where(c => c != pick).ToList();
                var order = DistractorMixing.Plan(pick, candidates, c => c < rc ? resident[c].Prefix.Length : storeCandidates[c - rc].P, cfg.MaxSeqLen - ex.Tokens.Length,
                    o.PIso, o.MaxDistractors, o.Seed, state.Step, slot);
                if (order.Any(c => c >= rc))
                {
                    // Store distractors come only if the budget has room for them now; the others are dropped.
                    int before = order.Length;
                    order = order.Where(c => c < rc || Lease(c, storeCandidates, leases) != null).ToArray();
                    storeDrops += before - order.Length;
                    storeUses += order.Count(c => c >= rc);
                }
                distractorUses += order.Length - 1;
                batch.Add(ex); golds.Add(pick); orders.Add(order);
                prefixes.Add(new ComposedPrefix(order.Select(c => c < rc ? resident[c].Prefix : leases[c]!.Prefix).ToArray(), o.Placement));
            }
            if (batch.Count == 0) throw new InvalidOperationException("no resident cartridge needs examples; the job loop should have ended.");

            int divisor = batch.Sum(s => s.Targets.TargetPositions);
            foreach (var r in resident) r.Gradient.Clear();
            var updated = new HashSet<int>();
            double lossSum = 0;
            if (o.DistractorGradients)
            {
                foreach (var ord in orders) foreach (int c in ord) if (c < resident.Count) updated.Add(c); // store distractors stay frozen
                backprop.LossAndGradient(prefixes, batch, updated.Select(c => resident[c].Gradient).ToList(), accumulate: true, divisor: divisor);
                lossSum = backprop.LastLossSum;
            }
            else
            {
                // Distractors are frozen: one call per group of sequences in which no gold is another sequence's distractor.
                foreach (var group in DistractorMixing.FrozenDistractorGroups(golds, orders))
                {
                    var gset = group.Select(s => golds[s]).Distinct().ToList();
                    backprop.LossAndGradient(group.Select(s => prefixes[s]).ToList(), group.Select(s => batch[s]).ToList(),
                        gset.Select(c => resident[c].Gradient).ToList(), accumulate: true, divisor: divisor);
                    lossSum += backprop.LastLossSum;
                    foreach (int c in gset) updated.Add(c);
                }
            }
            float loss = (float)(lossSum / Math.Max(1, divisor));
            if (!float.IsFinite(loss))
                throw new TrainingDivergedException($"step {state.Step + 1}: the loss is {loss}; training diverged. The job's last rotation is intact; lower --lr.");
            foreach (int c in updated.Order())
            {
                var r = resident[c];
                var d = state.Documents[r.Doc];
                double norm = GradientClipping.Clip(r.Grads, r.State.Optimizer.Trainable, o.ClipNorm);
                if (!double.IsFinite(norm))
                    throw new TrainingDivergedException($"step {state.Step + 1}: the gradient of {d.Id} is not finite; lower --lr.");
                r.State.Optimizer.Update(r.State.Parameters, r.Grads, LearningRate(d));
                r.State.Losses.Add(loss);
                d.UpdatesSinceEntry++;
            }
            for (int c = 0; c < assigned.Length; c++) state.Documents[resident[c].Doc].GoldSeen += assigned[c];
            state.Step++;

            FinishReady();

            if (progress != null)
            {
                long goldDone = state.Documents.Sum(d => Math.Min(d.GoldSeen, d.Target == 0 ? d.GoldSeen : d.Target));
                long goldTarget = state.Documents.Sum(d => d.Target);
                progress.Report(new CasJobStep(state.Step, loss, batch.Count, updated.Count, resident.Count, state.Documents.Count(d => d.Done), state.Documents.Count,
                    goldDone, goldTarget, clock.Elapsed));
            }
        }

        /// <summary>Finished cartridges leave at once: committed to the store, their slots refilled by the caller.</summary>
        void FinishReady()
        {
            foreach (var r in resident.Where(r => { var d = state.Documents[r.Doc]; return d.GoldSeen >= d.Target; }).ToList())
                Finish(r);
        }

        float LearningRate(DocFile d)
        {
            int total = (int)Math.Min(int.MaxValue, Math.Max(1, d.Target));
            var schedule = new LrSchedule(o.LearningRate, total, LrSchedule.WarmupFor(total, o.WarmupFraction), LrScheduleKind.Linear, 0.02f);
            float lr = schedule.At((int)Math.Min(d.GoldSeen, total - 1));
            if (d.Entries > 1 && o.ReentryWarmup > 0) lr *= (float)Math.Min(1.0, (d.UpdatesSinceEntry + 1.0) / o.ReentryWarmup);
            return lr;
        }

        void Finish(Resident r)
        {
            var d = state.Documents[r.Doc];
            var row = t.catalog.GetDocument(info.Name, d.Id);
            var cart = r.State.Cartridge;
            cart.StepsTrained = r.State.Step;
            cart.CreatedUtc = DateTime.UtcNow;
            var stored = t.store.Put(row.CartridgeId, cart, CollectionCatalog.CartridgeLabels(row with { ContentHash = d.ContentHash }), cancellation: cancel);
            d.Done = true; d.Version = stored.Version; d.Checkpoint = null;
            Exit(r, save: false);
            t.catalog.UpdateJobDocument(state.JobId, d.Id, JobState.Done, d.GoldSeen, cartridgeVersion: stored.Version);
            progress?.Report(new CasJobDocumentDone(d.Id, row.CartridgeId, stored.Version, d.P, r.State.Step));
        }

        // ---- persistence

        /// <summary>Checkpoints every resident cartridge, then commits the job file (atomic rename); then drops unreferenced checkpoints.</summary>
        void Snapshot()
        {
            Directory.CreateDirectory(dir);
            foreach (var r in resident) SaveCheckpoint(r);
            string path = Path.Combine(dir, "state.json"), tmp = path + ".tmp";
            using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                JsonSerializer.Serialize(f, state, new JsonSerializerOptions { WriteIndented = true });
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
            var keep = state.Documents.Where(d => d.Checkpoint != null).Select(d => d.Checkpoint!).ToHashSet();
            foreach (var file in Directory.EnumerateFiles(dir, "*.ckpt"))
                if (!keep.Contains(Path.GetFileName(file))) File.Delete(file);
            foreach (var r in resident) dirty.Add(r.Doc);
            foreach (int i in dirty.Order())
            {
                var d = state.Documents[i];
                if (!d.Done) t.catalog.UpdateJobDocument(state.JobId, d.Id, d.GoldSeen > 0 ? JobState.Running : JobState.Queued, d.GoldSeen);
            }
            dirty.Clear();
        }

        static void TryDeleteDirectory(string path)
        {
            try { if (Directory.Exists(path)) Directory.Delete(path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}

/// <summary>A job's saved state cannot be used.</summary>
public sealed class CasJobStateException(string message) : CasException(message);

static class TrainingStateExtensions
{
    public static KvPrefix Prefix(this TrainingState s) => s.Cartridge.Prefix;
}
