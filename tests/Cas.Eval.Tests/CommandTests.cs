using Cas.Tests.Common;

namespace Cas.Eval.Tests;

/// <summary>`cas eval collection` as a process, end to end on a tiny trained collection (stories260K; skipped without ../shared).</summary>
public sealed class CommandTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("cas-eval-cli-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    static (int Rc, string Out, string Err) Cas(params string[] args)
    {
        var r = CasCli.Run(args);
        return r;
    }

    [Fact]
    public void TinyCollectionEndToEnd()
    {
        TestPaths.RequireShared("models/stories260K/stories260K.bin");
        string docs = Path.Combine(_dir, "docs");
        Directory.CreateDirectory(docs);
        File.WriteAllText(Path.Combine(docs, "cat.txt"), "Lily had a small cat named Tom. The cat liked to play with a red ball in the garden. One day the cat ran after the ball and found a frog. The frog jumped into the pond and the cat sat down to wait.");
        File.WriteAllText(Path.Combine(docs, "ship.txt"), "Ben saw a big ship on the sea. The ship had white sails and a loud horn. Ben waved at the sailors and they waved back. Then the ship sailed away and Ben went home to eat his soup.");
        File.WriteAllText(Path.Combine(docs, "moon.txt"), "At night Sue looked at the moon. The moon was round and bright. Sue wished she could fly to the moon in a rocket. Her dad made her a rocket out of a big box and she was happy.");
        string data = Path.Combine(_dir, "data"), report = Path.Combine(_dir, "report");
        Ok(Cas("collection", "create", "s", "--data-dir", data, "--retrieval-chunk-tokens", "16"));
        Ok(Cas("collection", "add", "s", "--data-dir", data, "--resource", "dir:" + docs));

        // Before training: cas mode is refused with what to do; the other modes would run.
        var early = Cas("eval", "collection", "--collection", "s", "--data-dir", data);
        Assert.Equal(2, early.Rc);
        Assert.Contains("cas collection train s", early.Err);
        var missing = Cas("eval", "collection", "--data-dir", data);
        Assert.Equal(2, missing.Rc);
        Assert.Contains("--collection", missing.Err);

        Ok(Cas("collection", "train", "s", "--data-dir", data, "--probes-per-chunk", "2", "--epochs", "1", "--resident", "3"));
        // The monolithic baseline: one collection, one document holding all three, one cartridge.
        string all = Path.Combine(_dir, "all.txt");
        File.WriteAllText(all, string.Join("\n\n", Directory.GetFiles(docs).Order().Select(File.ReadAllText)));
        Ok(Cas("collection", "create", "m", "--data-dir", data, "--retrieval-chunk-tokens", "16"));
        Ok(Cas("collection", "add", "m", "--data-dir", data, "--resource", "text:" + all));
        Ok(Cas("collection", "train", "m", "--data-dir", data, "--probes-per-chunk", "2", "--epochs", "1", "--compression", "4"));
        var r = Ok(Cas("eval", "collection", "--collection", "s", "--data-dir", data, "--probes-per-chunk", "1", "--depths", "1,2", "--ks", "1,2",
            "--report", report, "--mono-collection", "m"));
        var kv = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).SelectMany(l => l.Split(' ')).Where(x => x.Contains('='))
            .ToDictionary(x => x[..x.IndexOf('=')], x => x[(x.IndexOf('=') + 1)..]);
        int questions = int.Parse(kv["questions"]);
        Assert.True(questions >= 3, r.Out);
        foreach (var key in new[] { "none", "icl", "cas_d1", "cas_d2", "rag_k1", "rag_k2", "mono" })
        {
            Assert.Equal(questions.ToString(), kv[key + "_answered"]);
            Assert.Equal("0", kv[key + "_failed"]);
            Assert.True(double.Parse(kv[key + "_ppl"], System.Globalization.CultureInfo.InvariantCulture) > 1, key);
            Assert.NotEqual("nan", kv[key + "_decode_ms_p50"]);
        }
        Assert.Equal("1.0000", kv["icl_gold_recall"]);   // icl puts the gold document in context by name
        Assert.Equal("0.0000", kv["none_gold_recall"]);
        Assert.Equal("1.0000", kv["icl_gap_closed"]);
        Assert.Equal("0.0000", kv["none_gap_closed"]);
        Assert.Equal("0.0", kv["rag_k1_kv_slots"]);
        Assert.Equal("nan", kv["mono_gold_recall"]);      // the one cartridge holds every document
        Assert.True(double.Parse(kv["mono_kv_slots"], System.Globalization.CultureInfo.InvariantCulture) > double.Parse(kv["cas_d1_kv_slots"], System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(double.Parse(kv["cas_d2_kv_slots"], System.Globalization.CultureInfo.InvariantCulture) > double.Parse(kv["cas_d1_kv_slots"], System.Globalization.CultureInfo.InvariantCulture));
        string last = r.Out.TrimEnd().Split('\n')[^1];
        Assert.Matches("^(prompt_token_ratio_rag_over_cas|gap_closed_difference_cas_minus_rag_at_equal_tokens|gap_closed_difference_cas_minus_rag_best)=", last);
        Assert.True(File.Exists(Path.Combine(report, "CAS_VS_RAG.md")));
        Assert.True(new FileInfo(Path.Combine(report, "cas_vs_rag_quality_vs_tokens.png")).Length > 1000);
        Assert.True(new FileInfo(Path.Combine(report, "cas_vs_rag_recall.png")).Length > 1000);
        Assert.Contains(last, File.ReadAllText(Path.Combine(report, "CAS_VS_RAG.md")));
    }

    static (int Rc, string Out, string Err) Ok((int Rc, string Out, string Err) r)
    {
        Assert.True(r.Rc == 0, $"exit {r.Rc}: {r.Err}");
        return r;
    }
}
