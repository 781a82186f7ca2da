using Cas.Client;
using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Resources;
using Cas.Service;
using Cas.Tests.Common;

namespace Cas.Eval.Tests;

/// <summary>
/// The evaluation through a running server (<see cref="RemoteQueryPath"/>, `cas eval collection --server`) against the
/// same evaluation in process: the same questions give the same scores, perplexities, gap closed and recall.
/// stories260K, three short documents with first-k cartridges (p = 16) and a mono collection of all three (p = 48);
/// skipped without ../shared.
/// </summary>
public sealed class RemoteEvalTests : IDisposable
{
    static readonly (string Id, string Text)[] Docs =
    [
        ("cat", "Lily had a small cat named Tom. The cat liked to play with a red ball in the garden. One day the cat ran after the ball and found a frog."),
        ("ship", "Ben saw a big ship on the sea. The ship had white sails and a loud horn. Ben waved at the sailors and they waved back."),
        ("moon", "At night Sue looked at the moon. The moon was round and bright. Sue wished she could fly to the moon in a rocket."),
    ];
    const string ApiKey = "eval-key";

    readonly string _dir = Directory.CreateTempSubdirectory("cas-eval-remote-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    static readonly TimeSpan Limit = TimeSpan.FromMinutes(5);

    /// <summary>Collections "s" (three documents, a first-k cartridge each) and "m" (them in one document, one cartridge) in a data folder.</summary>
    static string MakeData(string dir)
    {
        string model = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        string tok = Path.Combine(Path.GetDirectoryName(model)!, "tok512.bin");
        string data = Path.Combine(dir, "data");
        using var state = new ServiceState(new CasServerOptions { DataDir = data, ResidentBytes = 64L << 20 });
        var host = state.Model(model, tok);
        void Add(string collection, (string Id, string Text)[] docs, int p)
        {
            state.Catalog.Create(collection, model, host.Fingerprint, tok, 16);
            state.Catalog.AddDocuments(collection, docs.Select(d => (new Document(d.Id, d.Text, d.Id, Document.NoMetadata, Document.NoQuestions), "text")), host.Tokenizer);
            foreach (var (id, text) in docs)
            {
                int[] ids = [.. host.Tokenizer.StartTokens, .. host.Tokenizer.Encode(text)];
                var cart = Cartridge.ForModel(host.Model, CartridgeInit.FirstK(host.Model, ids, p), CartridgeInitKind.FirstK);
                state.Store.Put(CollectionCatalog.CartridgeId(collection, id), cart, CollectionCatalog.CartridgeLabels(state.Catalog.GetDocument(collection, id)));
            }
        }
        Add("s", Docs, 16);
        Add("m", [("all", string.Join("\n\n", Docs.Select(d => d.Text)))], 48);
        return data;
    }

    static Task<CasServer> Serve(string data, string? apiKey = null) => CasServer.StartAsync(new CasServerOptions
    {
        DataDir = data, Port = 0, ResidentBytes = 1024L << 20, ApiKey = apiKey, LogLevel = Microsoft.Extensions.Logging.LogLevel.Warning,
    });

    [Fact]
    public async Task The_evaluator_over_gRPC_gives_what_it_gives_in_process()
    {
        string data = MakeData(_dir);
        await using var server = await Serve(data, ApiKey).WaitAsync(Limit);
        using var client = new CasClient(server.Address, ApiKey);
        var state = server.State;
        var host = state.ModelOf(state.Collection("s"));
        var questions = EvalQuestions.FromProbes(host.Model, host.Tokenizer, Docs, 1, 7);
        Assert.True(questions.Count >= 3);
        var options = new CollectionEvalOptions { Modes = ["cas", "rag", "icl", "none", "mono"], MonoCollection = "m", Depths = [1, 2], Ks = [1, 2] };

        var local = await new CollectionEvaluator(new InProcessQueryPath(state)).RunAsync("s", questions, options).WaitAsync(Limit);
        var remote = await new CollectionEvaluator(new RemoteQueryPath(client)).RunAsync("s", questions, options).WaitAsync(Limit);

        Assert.Equal(local.Outcomes.Count, remote.Outcomes.Count);
        Assert.Equal(questions.Count * 7, remote.Outcomes.Count);   // none, icl, cas ×2, rag ×2, mono: nothing failed
        for (int i = 0; i < local.Outcomes.Count; i++)
        {
            var (l, r) = (local.Outcomes[i], remote.Outcomes[i]);
            string what = $"{l.Setting.Label} {l.QuestionId}";
            Assert.Equal((l.Setting, l.QuestionId), (r.Setting, r.QuestionId));
            Assert.True(Math.Abs(l.Nll - r.Nll) <= 1e-9 * l.AnswerTokens, $"{what}: NLL {l.Nll} in process, {r.Nll} over gRPC");
            Assert.Equal(l.DocumentsUsed, r.DocumentsUsed);
            Assert.Equal((l.PromptTokens, l.CartridgeSlots, l.KvBytesAttended, l.GoldUsed), (r.PromptTokens, r.CartridgeSlots, r.KvBytesAttended, r.GoldUsed));
            Assert.Equal(l.Answer, r.Answer);                        // greedy Ask, the same mode's RPC (none through AskNoContext)
            Assert.NotNull(r.AskLatency);
        }
        foreach (var (l, r) in local.Settings.Zip(remote.Settings))
        {
            Assert.Equal(l.Setting, r.Setting);
            Assert.Equal(l.Perplexity, r.Perplexity, 9);
            Assert.Equal(l.GapClosed, r.GapClosed, 9);
            Assert.Equal(l.Recall, r.Recall);
        }
        Assert.Equal(48, remote.Settings.Single(s => s.Setting.Mode == "mono").Setting.Size);   // the mono cartridge's slots, from GetCartridge
        // Resident figures are the server's budget manager's (GetBudget), here the same process's.
        Assert.Equal(state.Budget.Metrics().ResidentBudget, remote.ResidentBudget);
        Assert.Equal(state.Budget.Metrics().PeakResidentBytes, remote.PeakResidentBytes);
        Assert.True(remote.PeakResidentBytes > 0);
    }

    [Fact]
    public async Task Cas_eval_collection_with_server_reports_what_it_reports_in_process()
    {
        string data = MakeData(_dir);
        string[] common = ["eval", "collection", "--collection", "s", "--probes-per-chunk", "1", "--depths", "1,2", "--ks", "1,2", "--mono-collection", "m", "--max-tokens", "48"];
        var inProcess = Ok(CasCli.Run([.. common, "--data-dir", data]));

        await using var server = await Serve(data, ApiKey).WaitAsync(Limit);
        string url = server.Address.ToString();
        var remote = await Task.Run(() => Ok(CasCli.Run([.. common, "--server", url, "--api-key", ApiKey]))).WaitAsync(Limit);
        Assert.Contains("fingerprint", remote.Err);   // the model the questions were built with was checked against the collection's

        var (a, b) = (KeyValues(inProcess.Out), KeyValues(remote.Out));
        // Everything but timings and this process's own memory: perplexities, gap closed, recall, tokens, KV slots and bytes, the headline.
        static bool Compared(string key) => !key.Contains("_ms_") && key is not ("wall_s" or "peak_working_set_bytes");
        Assert.Equal(a.Keys.Where(Compared).Order(), b.Keys.Where(Compared).Order());
        foreach (var key in a.Keys.Where(Compared)) Assert.True(a[key] == b[key], $"{key}: {a[key]} in process, {b[key]} through --server");
        Assert.Contains(a.Keys, k => k.EndsWith("_ppl"));
        Assert.Equal("0", b["cas_d2_failed"]);
        Assert.NotEqual("nan", b["none_decode_ms_p50"]);             // answers were decoded over gRPC too
        Assert.Equal(inProcess.Out.TrimEnd().Split('\n')[^1], remote.Out.TrimEnd().Split('\n')[^1]);

        // The server's key is required; the server's own settings are not the client's to give.
        var noKey = await Task.Run(() => CasCli.Run([.. common, "--server", url])).WaitAsync(Limit);
        Assert.Equal(2, noKey.Rc);
        Assert.Contains("Unauthenticated", noKey.Err);
        var both = await Task.Run(() => CasCli.Run([.. common, "--server", url, "--api-key", ApiKey, "--data-dir", data])).WaitAsync(Limit);
        Assert.Equal(2, both.Rc);
        Assert.Contains("--data-dir", both.Err);
        var unknown = await Task.Run(() => CasCli.Run(["eval", "collection", "--collection", "nope", "--server", url, "--api-key", ApiKey])).WaitAsync(Limit);
        Assert.Equal(2, unknown.Rc);
        Assert.Contains("nope", unknown.Err);
    }

    static Dictionary<string, string> KeyValues(string output) =>
        output.Split('\n', StringSplitOptions.RemoveEmptyEntries).SelectMany(l => l.Split(' ')).Where(x => x.Contains('='))
            .ToDictionary(x => x[..x.IndexOf('=')], x => x[(x.IndexOf('=') + 1)..]);

    static (int Rc, string Out, string Err) Ok((int Rc, string Out, string Err) r)
    {
        Assert.True(r.Rc == 0, $"exit {r.Rc}: {r.Err}");
        return r;
    }
}
