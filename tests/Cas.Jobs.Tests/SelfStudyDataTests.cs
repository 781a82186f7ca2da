using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using Cas.Store;
using Cas.Tests.Common;

namespace Cas.Jobs.Tests;

/// <summary>
/// CAS jobs whose per-document teacher data is self-study (<see cref="CasDataSource.SelfStudy"/>), on the real stories260K
/// checkpoint (skipped without ../shared): the synthesizer runs once per document, its dataset is kept in the job's
/// folder, and a killed job continues it instead of making it again.
/// </summary>
public sealed class SelfStudyDataTests : IDisposable
{
    readonly string root = Path.Combine(Path.GetTempPath(), "cas-jobs-ss-" + Guid.NewGuid().ToString("N"));
    public void Dispose() { try { Directory.Delete(root, true); } catch (IOException) { } }

    static (Model Model, ITokenizer Tok, string ModelPath, string TokPath) Load() => CasTrainerTests.Load();
    static string Story(Model model, ITokenizer tok, ulong seed, int tokens) => CasTrainerTests.Story(model, tok, seed, tokens);

    /// <summary>Two documents trained one after the other (B = 1, no rotation), few short conversations each, a few steps.</summary>
    static CasTrainingOptions Tiny() => new()
    {
        Data = CasDataSource.SelfStudy,
        SelfStudy = new CasSelfStudyOptions { ConversationsPerToken = 0.1, MinConversations = 12, MaxUserTokens = 8, MaxAnswerTokens = 12, ConversationsPerChunk = 4, Concurrency = 4 },
        Resident = 1, RotateEvery = 2, RotateFraction = 0, PIso = 0.5, MaxDistractors = 2, Steps = 3, BatchSize = 4,
    };

    sealed class World : IDisposable
    {
        public required CollectionCatalog Catalog;
        public required FasterCartridgeStore Store;
        public required BudgetManager Budget;
        public required CasTrainer Trainer;
        public void Dispose() { Budget.Dispose(); Store.Dispose(); Catalog.Dispose(); }
    }

    World Open(string name, Model m, ITokenizer tok, string mp, string tp, IReadOnlyList<(Document, string)> docs)
    {
        string dir = Path.Combine(root, name);
        var catalog = new CollectionCatalog(dir);
        if (catalog.Find("ss") == null) catalog.Create("ss", mp, Cas.Engine.Cartridges.Cartridge.Fingerprint(m), tp, 128);
        catalog.AddDocuments("ss", docs, tok);
        var store = new FasterCartridgeStore(dir);
        var budget = new BudgetManager(store, new BudgetOptions { ResidentBytes = 64L << 20, WaitForRoom = TimeSpan.FromSeconds(1) });
        return new World { Catalog = catalog, Store = store, Budget = budget, Trainer = new CasTrainer(m, tok, catalog, store, budget, dir) };
    }

    List<(Document, string)> Docs(Model m, ITokenizer tok) =>
        [.. Enumerable.Range(0, 2).Select(i => (new Document($"s{i}.txt", Story(m, tok, 200 + (ulong)i, 100 + 40 * i), $"docs/s{i}.txt", Document.NoMetadata, Document.NoQuestions), "text"))];

    static Dictionary<string, KvPrefix> Cartridges(World w) => w.Store.List("ss/").ToDictionary(i => i.Id, i => w.Store.Get(i.Id).Prefix);

    [Fact]
    public void Self_study_data_trains_every_document_with_conversations_proportional_to_its_length()
    {
        var (m, tok, mp, tp) = Load();
        var docs = Docs(m, tok);
        using var w = Open("once", m, tok, mp, tp, docs);
        var events = new List<CasJobEvent>();
        var r = w.Trainer.Run("ss", Tiny(), new SyncProgress<CasJobEvent>(events.Add));

        Assert.Equal(2, r.Trained);
        Assert.All(w.Catalog.Status("ss", w.Store), s => Assert.Equal(CartridgeState.Fresh, s.State));
        var made = events.OfType<CasJobDataMade>().ToDictionary(e => e.DocumentId);
        Assert.Equal(["s0.txt", "s1.txt"], made.Keys.Order());
        foreach (var (doc, _) in docs)
        {
            var e = made[doc.Id];
            long expected = Tiny().SelfStudy.ConversationsFor(tok.Encode(doc.Text).Length);
            Assert.Equal(0, e.Reused);
            Assert.Equal(expected, e.Made);             // every conversation written (none dropped on this data)
            Assert.Equal(expected, e.Conversations);
        }
        Assert.True(made["s1.txt"].Conversations > made["s0.txt"].Conversations, "the longer document gets more conversations");
        // The cartridges learned something: every step's loss is finite and the cartridge moved from its first-k start.
        Assert.All(events.OfType<CasJobStep>(), s => Assert.True(float.IsFinite(s.Loss)));
        foreach (var (id, prefix) in Cartridges(w))
        {
            var doc = docs.Single(d => id.EndsWith(d.Item1.Id, StringComparison.Ordinal)).Item1;
            int[] tokens = [.. tok.StartTokens, .. tok.Encode(doc.Text)];
            var init = Cas.Engine.Cartridges.CartridgeInit.FirstK(m, tokens, prefix.Length);
            bool moved = false;
            for (int l = 0; l < prefix.Layers; l++) moved |= !init.Keys[l].AsSpan().SequenceEqual(prefix.Keys[l]) || !init.Values[l].AsSpan().SequenceEqual(prefix.Values[l]);
            Assert.True(moved, $"{id} is still its first-k start: it was not trained");
        }
        Assert.Contains("\"Data\":\"SelfStudy\"", Assert.Single(w.Catalog.Jobs("ss")).Settings);   // part of the job's identity

        // A later job with other training settings (the cartridges deleted, so both train again) reads the same datasets.
        foreach (var id in Cartridges(w).Keys) Assert.True(w.Store.Delete(id));
        var again = new List<CasJobEvent>();
        var r2 = w.Trainer.Run("ss", Tiny() with { LearningRate = 0.02f }, new SyncProgress<CasJobEvent>(again.Add));
        Assert.Equal(2, r2.Trained);
        Assert.All(again.OfType<CasJobDataMade>(), e => { Assert.Equal(0, e.Made); Assert.Equal(made[e.DocumentId].Conversations, e.Conversations); Assert.Equal(e.Conversations, e.Reused); });
        Assert.Equal(2, again.OfType<CasJobDataMade>().Count());
        Assert.DoesNotContain(again, e => e is CasJobDataProgress);
    }

    [Fact]
    public void A_killed_job_keeps_finished_documents_data_and_continues_a_half_made_dataset_to_the_same_cartridges()
    {
        var (m, tok, mp, tp) = Load();
        var docs = Docs(m, tok);
        Dictionary<string, KvPrefix> straight;
        using (var w = Open("straight", m, tok, mp, tp, docs))
        {
            w.Trainer.Run("ss", Tiny());
            straight = Cartridges(w);
        }

        using (var w = Open("resumed", m, tok, mp, tp, docs))
        {
            // Stop while the second document's conversations are being made (after its first waves), the first one done.
            using var cts = new CancellationTokenSource();
            bool firstDone = false;
            var seen = new List<string>();
            var progress = new SyncProgress<CasJobEvent>(e =>
            {
                seen.Add(e.ToString());
                if (e is CasJobDocumentDone) firstDone = true;
                if (firstDone && e is CasJobDataProgress { Done: >= 4 } p && p.Done < p.Total) cts.Cancel();
            });
            var ex = Record.Exception(() => w.Trainer.Run("ss", Tiny(), progress, cts.Token));
            Assert.True(ex is OperationCanceledException, string.Join("\n", seen));
            Assert.True(firstDone);
            Assert.Single(w.Store.List("ss/"));

            var events = new List<CasJobEvent>();
            var r = w.Trainer.Run("ss", Tiny(), new SyncProgress<CasJobEvent>(events.Add));
            Assert.True(r.Resumed);
            Assert.Equal(1, r.Trained);
            var made = Assert.Single(events.OfType<CasJobDataMade>());     // nothing made again for the finished document
            Assert.Equal("s1.txt", made.DocumentId);
            Assert.True(made.Reused >= 4, $"only {made.Reused} conversations were reused");
            Assert.Equal(made.Conversations, made.Reused + made.Made);
            Assert.True(made.Made > 0, "the cut dataset was continued");

            var resumed = Cartridges(w);
            Assert.Equal(straight.Keys.Order(), resumed.Keys.Order());
            foreach (var (id, a) in straight)
                for (int l = 0; l < a.Layers; l++)
                {
                    Assert.True(a.Keys[l].AsSpan().SequenceEqual(resumed[id].Keys[l]), $"{id}: keys of layer {l} differ from the uninterrupted job's");
                    Assert.True(a.Values[l].AsSpan().SequenceEqual(resumed[id].Values[l]), $"{id}: values of layer {l} differ from the uninterrupted job's");
                }
        }
    }

    [Fact]
    public void Bad_self_study_settings_are_refused_with_the_setting_named()
    {
        var ok = new CasTrainingOptions { Data = CasDataSource.SelfStudy };
        ok.Validate();
        void Refused(CasTrainingOptions o, string needle)
        {
            var e = Assert.Throws<InvalidRequestException>(o.Validate);
            Assert.Contains(needle, e.Message);
        }
        Refused(ok with { SelfStudy = ok.SelfStudy with { ConversationsPerToken = 0 } }, "--conversations-per-token must be positive, got 0");
        Refused(ok with { SelfStudy = ok.SelfStudy with { ConversationsPerToken = double.NaN } }, "--conversations-per-token");
        Refused(ok with { SelfStudy = ok.SelfStudy with { MinConversations = 0 } }, "conversations per document must be ≥ 1");
        Refused(ok with { SelfStudy = ok.SelfStudy with { TopK = 256 } }, "--teacher-top-k must lie in [1, 255], got 256");
        Refused(ok with { SelfStudy = ok.SelfStudy with { MaxAnswerTokens = 0 } }, "answers need ≥ 1 token");
        Refused(ok with { SelfStudy = ok.SelfStudy with { ChunkTokens = 100, MinChunkTokens = 200 } }, "smallest self-study chunk (200)");
        Refused(ok with { SelfStudy = ok.SelfStudy with { SeedPrompts = "questions=1" } }, "unknown kind 'questions'");
        Refused(ok with { SelfStudy = ok.SelfStudy with { UserTemperature = -1 } }, "agent A's temperature");
        Refused(ok with { Data = (CasDataSource)7 }, "--data-source must be probes or selfstudy");

        // Proportional to the length, never below the floor.
        var s = new CasSelfStudyOptions { ConversationsPerToken = 0.5, MinConversations = 10 };
        Assert.Equal(10, s.ConversationsFor(4));
        Assert.Equal(150, s.ConversationsFor(300));
        Assert.Equal(300, s.ConversationsFor(600));
    }

    [Fact]
    public void A_probe_jobs_identity_is_what_it_was_before_self_study_and_self_study_settings_are_part_of_a_self_study_jobs()
    {
        var probes = new CasTrainingOptions();
        string json = probes.SettingsJson();
        Assert.DoesNotContain("\"Data\"", json);
        Assert.DoesNotContain("SelfStudy", json);
        Assert.StartsWith("{\"Compression\":20,", json);
        Assert.Equal(json, (probes with { SelfStudy = new CasSelfStudyOptions { ConversationsPerToken = 3 } }).SettingsJson());

        Assert.DoesNotContain("Placement", json); // the default placement is left out too (jobs from before it keep their identity)
        Assert.Contains("\"Placement\":\"Aligned\"", (probes with { Placement = Cas.Engine.Placement.Aligned }).SettingsJson());

        var ss = probes with { Data = CasDataSource.SelfStudy, Placement = Cas.Engine.Placement.Aligned };
        // Nothing removed: the node path writes exactly what the serializer writes (so for probes only the left-out properties differ).
        Assert.Equal(System.Text.Json.JsonSerializer.Serialize(ss, new System.Text.Json.JsonSerializerOptions { Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() } }), ss.SettingsJson());
        Assert.Contains("\"Data\":\"SelfStudy\"", ss.SettingsJson());
        Assert.NotEqual(ss.SettingsJson(), (ss with { SelfStudy = new CasSelfStudyOptions { ConversationsPerToken = 3 } }).SettingsJson());
        Assert.Equal(ss.SettingsJson(), (ss with { SelfStudy = new CasSelfStudyOptions { Concurrency = 3 } }).SettingsJson()); // speed only

        // Default length: 4 epochs of probes, 8 of self-study; explicit steps or epochs win.
        Assert.Equal(400, probes.TargetExamples(100));
        Assert.Equal(800, ss.TargetExamples(100));
        Assert.Equal(200, (ss with { Epochs = 2 }).TargetExamples(100));
        Assert.Equal(24, (ss with { Steps = 3 }).TargetExamples(100));
    }

    /// <summary>The command refuses a bad data source or conversation rate with one `error:` line naming the option (exit 2), before it loads anything.</summary>
    [Fact]
    public void The_command_names_a_bad_data_source_or_conversation_rate()
    {
        string dir = Path.Combine(root, "cli");
        var (rc, _, err) = CasCli.Run("collection", "train", "none", "--data-dir", dir, "--data-source", "essays");
        Assert.Equal(2, rc);
        Assert.Contains("error: --data-source takes probes or selfstudy, not 'essays'.", err);
        (rc, _, err) = CasCli.Run("collection", "train", "none", "--data-dir", dir, "--data-source", "selfstudy", "--conversations-per-token", "0");
        Assert.Equal(2, rc);
        Assert.Contains("error: --conversations-per-token must be positive, got 0.", err);
    }
}
