using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using Cas.Store;
using Cas.Tests.Common;
using Cas.Training;

namespace Cas.Jobs.Tests;

/// <summary>
/// CAS jobs end to end on the real stories260K checkpoint (skipped without ../shared): fresh cartridges in the store,
/// the resident budget, rotation, resume after a cancelled run, retraining of a changed document only, and frozen
/// distractors.
/// </summary>
public sealed class CasTrainerTests : IDisposable
{
    readonly string root = Path.Combine(Path.GetTempPath(), "cas-jobs-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    internal static (Model Model, ITokenizer Tok, string ModelPath, string TokPath) Load()
    {
        string mp = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        string tp = TestPaths.RequireShared("models/stories260K/tok512.bin");
        return (ModelLoader.Load(mp), TokenizerLoader.Load(tp), mp, tp);
    }

    /// <summary>Stories the model samples from BOS: documents it can read but has not seen.</summary>
    internal static string Story(Model model, ITokenizer tok, ulong seed, int tokens = 120)
    {
        var r = new Generator(new Transformer(model)).Generate([new GenerationRequest([tok.BosId!.Value])
        {
            MaxTokens = tokens, Sampling = new SamplingOptions { Temperature = 0.8f, Seed = seed },
        }]);
        return tok.Decode(r[0].Tokens);
    }

    static (Document, string) Doc(string id, string text) => (new Document(id, text, $"docs/{id}", Document.NoMetadata, Document.NoQuestions), "text");

    /// <summary>Small but complete: 4 documents, 2 resident, rotation every 2 steps, a few probes and steps each.</summary>
    static CasTrainingOptions Small(bool distractorGrads = true) => new()
    {
        Resident = 2, RotateEvery = 2, RotateFraction = 0.5, PIso = 0.5, MaxDistractors = 3, DistractorGradients = distractorGrads,
        Steps = 3, BatchSize = 4, Probes = new DocumentProbeOptions { ExamplesPerChunk = 4, ContinuationTokens = 24, ChunkTokens = 0 },
    };

    sealed class World : IDisposable
    {
        public required string Dir;
        public required CollectionCatalog Catalog;
        public required FasterCartridgeStore Store;
        public required BudgetManager Budget;
        public required CasTrainer Trainer;
        public long BudgetBytes;
        public void Dispose() { Budget.Dispose(); Store.Dispose(); Catalog.Dispose(); }
    }

    World Open(string name, Model m, ITokenizer tok, string mp, string tp, IEnumerable<(Document, string)>? docs, long budgetBytes)
    {
        string dir = Path.Combine(root, name);
        var catalog = new CollectionCatalog(dir);
        if (catalog.Find("stories") == null) catalog.Create("stories", mp, Cas.Engine.Cartridges.Cartridge.Fingerprint(m), tp, 128);
        if (docs != null) catalog.AddDocuments("stories", docs, tok);
        var store = new FasterCartridgeStore(dir);
        var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = budgetBytes, WaitForRoom = TimeSpan.FromSeconds(1) });
        return new World { Dir = dir, Catalog = catalog, Store = store, Budget = budget, Trainer = new CasTrainer(m, tok, catalog, store, budget, dir), BudgetBytes = budgetBytes };
    }

    List<(Document, string)> Stories(Model m, ITokenizer tok) =>
        Enumerable.Range(0, 4).Select(i => Doc($"s{i}.txt", Story(m, tok, 100 + (ulong)i))).ToList();

    static Dictionary<string, KvPrefix> Cartridges(World w) =>
        w.Store.List("stories/").ToDictionary(i => i.Id, i => w.Store.Get(i.Id).Prefix);

    static void AssertSame(KvPrefix a, KvPrefix b, string id)
    {
        Assert.Equal(a.Length, b.Length);
        for (int l = 0; l < a.Layers; l++)
        {
            Assert.True(a.Keys[l].AsSpan().SequenceEqual(b.Keys[l]), $"{id}: keys of layer {l} differ");
            Assert.True(a.Values[l].AsSpan().SequenceEqual(b.Values[l]), $"{id}: values of layer {l} differ");
        }
    }

    [Fact]
    public void A_small_job_trains_every_document_within_the_budget_rotates_and_a_rerun_has_nothing_to_do()
    {
        var (m, tok, mp, tp) = Load();
        long perCartridge = CasTrainer.ResidentBytesFor(m.Config, 16);
        using var w = Open("e2e", m, tok, mp, tp, Stories(m, tok), 2 * perCartridge); // room for exactly B = 2
        var events = new List<CasJobEvent>();
        var result = w.Trainer.Run("stories", Small(), new SyncProgress<CasJobEvent>(events.Add));

        Assert.Equal(4, result.Documents);
        Assert.Equal(4, result.Trained);
        Assert.All(w.Catalog.Status("stories", w.Store), s => Assert.Equal(CartridgeState.Fresh, s.State));
        foreach (var info in w.Store.List("stories/"))
        {
            Assert.Equal(16, info.Length);                                  // 120-token stories: tokens/20 < floor 16
            Assert.Equal("stories", info.Labels[CollectionCatalog.LabelCollection]);
        }
        var job = Assert.Single(w.Catalog.Jobs("stories"));
        Assert.Equal(JobState.Done, job.State);
        Assert.All(w.Catalog.JobDocuments(job.Id), d => { Assert.Equal(JobState.Done, d.State); Assert.Equal(1, d.CartridgeVersion); });
        Assert.False(Directory.Exists(w.Trainer.JobDirectory(job.Id)));   // state folder removed when done

        // Budget: never more than B resident and never over the bytes (the manager throws on an overrun; the peak says it).
        Assert.Equal(2, result.PeakResidentCartridges);
        Assert.True(result.PeakResidentBytes <= w.BudgetBytes, $"peak {result.PeakResidentBytes} > budget {w.BudgetBytes}");
        Assert.Equal(2 * perCartridge, result.PeakResidentBytes);
        Assert.Contains(events, e => e is CasJobRotated r && r.Out.Count == 1 && r.In.Count == 1);
        // Every step trained something and its loss is finite; cartridges moved away from their first-k start.
        Assert.All(events.OfType<CasJobStep>(), s => Assert.True(float.IsFinite(s.Loss) && s.Updated > 0));
        Assert.Equal(4, events.OfType<CasJobDocumentDone>().Count());

        var again = w.Trainer.Run("stories", Small());
        Assert.Null(again.JobId);
        Assert.Equal(0, again.Trained);
    }

    [Fact]
    public void A_cancelled_job_resumes_to_the_same_cartridges_and_a_changed_document_retrains_alone()
    {
        var (m, tok, mp, tp) = Load();
        var docs = Stories(m, tok);
        long budget = 2 * CasTrainer.ResidentBytesFor(m.Config, 16);
        Dictionary<string, KvPrefix> straight;
        using (var w = Open("straight", m, tok, mp, tp, docs, budget))
        {
            w.Trainer.Run("stories", Small());
            straight = Cartridges(w);
        }
        Assert.Equal(4, straight.Count);

        using (var w = Open("resumed", m, tok, mp, tp, docs, budget))
        {
            // Cancel mid-window (step 3; rotations at 2, 4, …), after one document may have finished.
            using var cts = new CancellationTokenSource();
            var progress = new SyncProgress<CasJobEvent>(e => { if (e is CasJobStep { Step: 3 }) cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() => w.Trainer.Run("stories", Small(), progress, cts.Token));
            var job = Assert.Single(w.Catalog.Jobs("stories"));
            Assert.Equal(JobState.Cancelled, job.State);
            Assert.True(File.Exists(Path.Combine(w.Trainer.JobDirectory(job.Id), "state.json")));

            var events = new List<CasJobEvent>();
            var r = w.Trainer.Run("stories", Small(), new SyncProgress<CasJobEvent>(events.Add));
            Assert.True(r.Resumed);
            Assert.Equal(3, r.ResumedFromStep);
            Assert.Equal(job.Id, r.JobId);
            var resumed = Cartridges(w);
            Assert.Equal(straight.Keys.Order(), resumed.Keys.Order());
            foreach (var (id, prefix) in straight) AssertSame(prefix, resumed[id], id);

            // A changed document: only its cartridge is retrained (a new version); the others keep theirs.
            var versions = w.Store.List("stories/").ToDictionary(i => i.Id, i => i.Version);
            w.Catalog.AddDocuments("stories", [Doc("s2.txt", Story(m, tok, 999))], tok);
            var r2 = w.Trainer.Run("stories", Small());
            Assert.Equal(1, r2.Documents);
            Assert.Equal(1, r2.Trained);
            foreach (var info in w.Store.List("stories/"))
                Assert.Equal(info.Id.EndsWith("s2.txt") ? versions[info.Id] + 1 : versions[info.Id], info.Version);
            Assert.All(w.Catalog.Status("stories", w.Store), s => Assert.Equal(CartridgeState.Fresh, s.State));
        }
    }

    [Fact]
    public void Different_settings_supersede_an_unfinished_job_and_an_impossible_budget_is_refused_up_front()
    {
        var (m, tok, mp, tp) = Load();
        using var w = Open("settings", m, tok, mp, tp, Stories(m, tok), CasTrainer.ResidentBytesFor(m.Config, 16)); // room for one
        var e = Assert.Throws<BudgetExceededException>(() => w.Trainer.Run("stories", Small()));
        Assert.Contains("--resident", e.Message);
        Assert.Empty(w.Catalog.Jobs("stories"));

        using var cts = new CancellationTokenSource();
        var one = Small() with { Resident = 1 };
        Assert.ThrowsAny<OperationCanceledException>(() =>
            w.Trainer.Run("stories", one, new SyncProgress<CasJobEvent>(ev => { if (ev is CasJobStep) cts.Cancel(); }), cts.Token));
        var notes = new List<CasJobEvent>();
        var r = w.Trainer.Run("stories", one with { Seed = 2 }, new SyncProgress<CasJobEvent>(notes.Add));
        Assert.False(r.Resumed);
        Assert.Contains(notes, n => n is CasJobNote { Text: var t } && t.Contains("other settings"));
        var jobs = w.Catalog.Jobs("stories");
        Assert.Equal([JobState.Cancelled, JobState.Done], jobs.Select(j => j.State));
    }

    /// <summary>
    /// With distractor gradients off, the grouped engine calls give each gold exactly the gradient of the sequences it is
    /// gold in, and a cartridge that is only ever a distractor gets none (it stays untouched).
    /// </summary>
    /// <summary>
    /// <see cref="CasTrainingOptions.Placement"/> reaches the examples: aligned placement changes the cartridges of a job
    /// that mixes in distractors (the tokens start at max p instead of Σp), and changes nothing when every example sees
    /// its gold cartridge alone (P_iso = 1: one part, so max p = Σp), bit for bit. Store distractors off, so the
    /// four jobs differ only in placement and mixing.
    /// </summary>
    [Fact]
    public void Aligned_placement_changes_mixed_examples_only()
    {
        var (m, tok, mp, tp) = Load();
        long budget = 2 * CasTrainer.ResidentBytesFor(m.Config, 16);
        Dictionary<string, KvPrefix> Train(string name, CasTrainingOptions o)
        {
            using var w = Open(name, m, tok, mp, tp, Stories(m, tok), budget);
            w.Trainer.Run("stories", o with { StoreDistractors = false });
            return Cartridges(w);
        }
        var mixed = Small();
        var concat = Train("concat", mixed);
        var aligned = Train("aligned", mixed with { Placement = Cas.Engine.Placement.Aligned });
        Assert.Contains(concat.Keys, id => !concat[id].Keys[0].AsSpan().SequenceEqual(aligned[id].Keys[0]));
        var alone = Small() with { PIso = 1 };
        var concatAlone = Train("concat-alone", alone);
        var alignedAlone = Train("aligned-alone", alone with { Placement = Cas.Engine.Placement.Aligned });
        foreach (var id in concatAlone.Keys) AssertSame(concatAlone[id], alignedAlone[id], id);
    }

    [Fact]
    public void Frozen_distractors_get_no_gradient_and_golds_get_only_their_own_sequences()
    {
        var (m, tok, _, _) = Load();
        var parts = Enumerable.Range(0, 4).Select(i =>
            Cas.Engine.Cartridges.CartridgeInit.FirstK(m, [.. tok.StartTokens, .. tok.Encode(Story(m, tok, 50 + (ulong)i, 40))], 8)).ToArray();
        var seqs = Enumerable.Range(0, 4).Select(i => TrainingSequence.NextToken([.. tok.Encode(Story(m, tok, 70 + (ulong)i, 20))])).ToArray();
        // golds 0, 1, 0, 1; cartridge 1 is also a distractor of sequence 0; cartridge 3 is only ever a distractor.
        int[] golds = [0, 1, 0, 1];
        int[][] orders = [[1, 0, 3], [1, 2], [3, 0], [1]];
        var backprop = new CartridgeBackprop(m, 256);
        int divisor = seqs.Sum(s => s.Targets.TargetPositions);

        var grouped = parts.Select(p => new KvGradient(p)).ToArray();
        foreach (var g in DistractorMixing.FrozenDistractorGroups(golds, orders))
        {
            var gs = g.Select(s => golds[s]).Distinct().Select(c => grouped[c]).ToList();
            backprop.LossAndGradient(g.Select(s => new ComposedPrefix(orders[s].Select(c => parts[c]).ToArray())).ToList(),
                g.Select(s => seqs[s]).ToList(), gs, accumulate: true, divisor: divisor);
        }
        var expected = parts.Select(p => new KvGradient(p)).ToArray();
        for (int s = 0; s < seqs.Length; s++)
            backprop.LossAndGradient([new ComposedPrefix(orders[s].Select(c => parts[c]).ToArray())], [seqs[s]], [expected[golds[s]]], accumulate: true, divisor: divisor);

        for (int c = 0; c < parts.Length; c++)
            for (int l = 0; l < m.Config.Layers; l++)
                for (int i = 0; i < grouped[c].Keys[l].Length; i++)
                {
                    Assert.Equal(expected[c].Keys[l][i], grouped[c].Keys[l][i], 1e-6f + 1e-4f * Math.Abs(expected[c].Keys[l][i]));
                    Assert.Equal(expected[c].Values[l][i], grouped[c].Values[l][i], 1e-6f + 1e-4f * Math.Abs(expected[c].Values[l][i]));
                }
        Assert.All(grouped[3].Keys.Concat(grouped[3].Values), a => Assert.All(a, v => Assert.Equal(0f, v)));
        Assert.All(grouped[2].Keys.Concat(grouped[2].Values), a => Assert.All(a, v => Assert.Equal(0f, v)));
        Assert.Contains(grouped[1].Keys[0], v => v != 0f);
    }

    /// <summary>
    /// Store distractors: with B = 2 and finished cartridges in the store, examples see distractors that are not resident
    /// for training (leased read-only through the budget manager, counted in its budget, which is never exceeded), and
    /// those cartridges are unchanged byte for byte after the job — in the store and in the shared resident copy.
    /// </summary>
    [Fact]
    public void Store_distractors_are_drawn_from_finished_cartridges_frozen_and_within_the_budget()
    {
        var (m, tok, mp, tp) = Load();
        long perCartridge = CasTrainer.ResidentBytesFor(m.Config, 16), kv = perCartridge / 4;
        long budgetBytes = 2 * perCartridge + 3 * kv; // B = 2 training plus room for 3 frozen distractors
        var first = Enumerable.Range(0, 3).Select(i => Doc($"old{i}.txt", Story(m, tok, 300 + (ulong)i))).ToList();
        var second = Enumerable.Range(0, 4).Select(i => Doc($"new{i}.txt", Story(m, tok, 400 + (ulong)i))).ToList();
        var options = Small() with { PIso = 0.25, MaxDistractors = 4 };
        using var w = Open("store-distractors", m, tok, mp, tp, first, budgetBytes);
        w.Trainer.Run("stories", options);
        var before = w.Store.List("stories/").ToDictionary(i => i.Id, i => (i.Version, Bytes: w.Store.ReadFile(i.Id).Bytes));
        Assert.Equal(3, before.Count);

        w.Catalog.AddDocuments("stories", second, tok);
        var r = w.Trainer.Run("stories", options);
        Assert.Equal(4, r.Trained);
        Assert.True(r.StoreDistractorUses > 0, $"no store distractor was used ({r.DistractorUses} distractors, {r.StoreDistractorsDropped} dropped)");
        Assert.True(r.StoreDistractorsDropped > 0, "the budget's room (3 cartridges) should have turned some draws away");
        Assert.True(r.PeakResidentBytes <= budgetBytes, $"peak {r.PeakResidentBytes} > budget {budgetBytes}");
        Assert.True(r.PeakResidentBytes > 2 * perCartridge, "store distractors must be counted in the resident budget");
        Assert.Equal(2, r.PeakResidentCartridges);

        foreach (var (id, (version, bytes)) in before)
        {
            var now = w.Store.Find(id)!;
            Assert.Equal(version, now.Version);
            Assert.True(w.Store.ReadFile(id).Bytes.AsSpan().SequenceEqual(bytes), $"{id}: stored bytes changed");
            using var lease = w.Budget.Acquire(id);   // the resident copy the job read, if still cached
            AssertSame(w.Store.Get(id).Prefix, lease.Prefix, id);
        }

        // With no room beyond the B training cartridges, store draws are dropped while B are resident (only the tail of
        // the job, with fewer than B left to train, has room for some) and the peak is exactly the budget.
        using var tight = Open("store-distractors-tight", m, tok, mp, tp, first.Concat(second), 2 * perCartridge);
        var rt = tight.Trainer.Run("stories", options);
        Assert.True(rt.StoreDistractorsDropped > 0);
        Assert.True(rt.StoreDistractorUses < rt.StoreDistractorsDropped, $"{rt.StoreDistractorUses} used, {rt.StoreDistractorsDropped} dropped");
        Assert.Equal(2 * perCartridge, rt.PeakResidentBytes);
    }

    /// <summary>
    /// With store distractors in play, a job cancelled mid-window and resumed in a fresh process state (store, budget
    /// manager and its cache reopened) ends with the same cartridges, bit for bit, as an uninterrupted job: which store
    /// draws fit depends only on the job's own pinned bytes, not on what the budget manager happened to have cached.
    /// </summary>
    [Fact]
    public void With_store_distractors_a_resumed_job_equals_an_uninterrupted_one()
    {
        var (m, tok, mp, tp) = Load();
        long perCartridge = CasTrainer.ResidentBytesFor(m.Config, 16);
        long budgetBytes = 2 * perCartridge + 2 * (perCartridge / 4);
        var first = Enumerable.Range(0, 3).Select(i => Doc($"old{i}.txt", Story(m, tok, 500 + (ulong)i))).ToList();
        var second = Enumerable.Range(0, 3).Select(i => Doc($"new{i}.txt", Story(m, tok, 600 + (ulong)i))).ToList();
        var options = Small() with { PIso = 0.25, MaxDistractors = 4 };

        Dictionary<string, KvPrefix> straight;
        using (var w = Open("sd-straight", m, tok, mp, tp, first, budgetBytes))
        {
            w.Trainer.Run("stories", options);
            w.Catalog.AddDocuments("stories", second, tok);
            var r = w.Trainer.Run("stories", options);
            Assert.True(r.StoreDistractorUses > 0 && r.StoreDistractorsDropped > 0, $"{r.StoreDistractorUses} used, {r.StoreDistractorsDropped} dropped");
            straight = Cartridges(w);
        }
        using (var w = Open("sd-resumed", m, tok, mp, tp, first, budgetBytes))
        {
            w.Trainer.Run("stories", options);
            w.Catalog.AddDocuments("stories", second, tok);
            using var cts = new CancellationTokenSource();
            var progress = new SyncProgress<CasJobEvent>(e => { if (e is CasJobStep { Step: 3 }) cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() => w.Trainer.Run("stories", options, progress, cts.Token));
        }
        using (var w = Open("sd-resumed", m, tok, mp, tp, null, budgetBytes))
        {
            var r = w.Trainer.Run("stories", options);
            Assert.True(r.Resumed);
            Assert.Equal(3, r.ResumedFromStep);
            var resumed = Cartridges(w);
            Assert.Equal(straight.Keys.Order(), resumed.Keys.Order());
            foreach (var (id, prefix) in straight) AssertSame(prefix, resumed[id], id);
        }
    }
}

/// <summary>`cas collection train` as a process: killed with SIGKILL after a rotation, rerun, equal to an uninterrupted run.</summary>
public sealed class CollectionTrainCliTests : IDisposable
{
    readonly string root = Path.Combine(Path.GetTempPath(), "cas-jobs-cli-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    static readonly string[] Flags = ["--resident", "2", "--rotate-every", "2", "--steps", "6", "--batch", "4", "--probes-per-chunk", "6", "--p-iso", "0.5", "--max-distractors", "3"];

    string Collection(string name, string docs)
    {
        string data = Path.Combine(root, name);
        Assert.Equal(0, CasCli.Run("collection", "create", "tales", "--data-dir", data).Rc);
        var add = CasCli.Run("collection", "add", "tales", "--resource", $"dir:{docs}", "--data-dir", data);
        Assert.True(add.Rc == 0, add.Err);
        return data;
    }

    [Fact]
    public void Kill_9_after_a_rotation_then_rerun_gives_the_cartridges_of_an_uninterrupted_run()
    {
        TestPaths.RequireShared("models/stories260K/stories260K.bin");
        string docs = Path.Combine(root, "docs");
        Directory.CreateDirectory(docs);
        string[] names = ["Lily", "Tom", "Sue", "Ben"];
        foreach (var n in names)
            File.WriteAllText(Path.Combine(docs, n + ".txt"), string.Concat(Enumerable.Repeat(
                $"Once upon a time, there was a little child named {n}. {n} loved to play with a red ball in the park. One day the ball rolled into the pond. ", 3)));

        string straight = Collection("straight", docs);
        var full = CasCli.Run(["collection", "train", "tales", "--data-dir", straight, .. Flags]);
        Assert.True(full.Rc == 0, full.Err);
        Assert.Contains("trained=4 fresh=4", full.Out);
        Assert.Contains("resumed=no", full.Out);

        string killed = Collection("killed", docs);
        using (var p = CasCli.Start(["collection", "train", "tales", "--data-dir", killed, .. Flags]))
        {
            string? line;
            bool rotated = false;
            while ((line = p.StandardError.ReadLine()) != null)
                if (line.StartsWith("rotated at step 4", StringComparison.Ordinal)) { rotated = true; p.Kill(); break; }
            p.WaitForExit();
            Assert.True(rotated, "the run ended before its second rotation");
        }
        var rerun = CasCli.Run(["collection", "train", "tales", "--data-dir", killed, .. Flags]);
        Assert.True(rerun.Rc == 0, rerun.Err);
        Assert.Contains("resumed=yes", rerun.Out);
        Assert.Contains("fresh=4", rerun.Out);

        using var a = new FasterCartridgeStore(straight);
        using var b = new FasterCartridgeStore(killed);
        Assert.Equal(4, a.List("tales/").Count);
        foreach (var info in a.List("tales/"))
        {
            var x = a.Get(info.Id).Prefix; var y = b.Get(info.Id).Prefix;
            for (int l = 0; l < x.Layers; l++)
            {
                Assert.True(x.Keys[l].AsSpan().SequenceEqual(y.Keys[l]), $"{info.Id}: keys of layer {l} differ");
                Assert.True(x.Values[l].AsSpan().SequenceEqual(y.Values[l]), $"{info.Id}: values of layer {l} differ");
            }
        }
    }
}
