using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Cas.Tests.Common;

namespace Cas.Eval.Tests;

/// <summary>
/// `cas eval collection --dataset` as a process on tiny slices of the real QuALITY and SQuALITY files (the first record
/// of each, its document cut to its opening, two questions), stories260K, training a handful of parts with a minimal
/// recipe. Skipped without ../shared. Each `cas` run is bounded by <see cref="CasCli.RunLimit"/>.
/// </summary>
public sealed class DatasetCommandTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("cas-dataset-cli-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    /// <summary>The first record of a real file with its document cut to <paramref name="chars"/> characters and <paramref name="questions"/> of its questions from <paramref name="from"/>.</summary>
    string Slice(string relative, string textField, int chars, int from, int questions)
    {
        string source = TestPaths.RequireShared(relative);
        var record = JsonNode.Parse(File.ReadLines(source).First())!.AsObject();
        record[textField] = record[textField]!.GetValue<string>()[..chars];
        foreach (var list in new[] { "instructions", "outputs", "questions" })
            if (record[list] is JsonArray a)
            {
                for (int i = 0; i < from; i++) a.RemoveAt(0);
                while (a.Count > questions) a.RemoveAt(a.Count - 1);
            }
        string path = Path.Combine(_dir, Path.GetFileName(Path.GetDirectoryName(relative))! + "-" + Path.GetFileName(relative));
        File.WriteAllText(path, record.ToJsonString() + "\n");
        return path;
    }

    [Fact]
    public void TinyRealSlicesEndToEnd()
    {
        TestPaths.RequireShared("models/stories260K/stories260K.bin");
        // QuALITY's questions 3 and 4 (about 300 tokens each with their options: they fit beside a part in 512 tokens; its
        // first, 446 tokens, would not).
        string quality = Slice("datasets/leval/closed/quality.jsonl", "input", 1500, 3, 2);
        string squality = Slice("datasets/squality/train.jsonl", "document", 1500, 0, 2);
        string data = Path.Combine(_dir, "data"), report = Path.Combine(_dir, "report");
        string[] args = ["eval", "collection", "--dataset", quality + "," + squality, "--data-dir", data, "--modes", "none,icl,cas,rag", "--depths", "1,2", "--ks", "1",
            "--train-probes", "2", "--train-epochs", "1", "--max-tokens", "32", "--report", report];
        var r = CasCli.Run(args);
        Assert.True(r.Rc == 0, $"exit {r.Rc}: {r.Err}");
        var kv = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("warning=", StringComparison.Ordinal))
            .SelectMany(l => l.Split(' ')).Where(x => x.Contains('=')).GroupBy(x => x[..x.IndexOf('=')]).ToDictionary(g => g.Key, g => g.First()[(g.First().IndexOf('=') + 1)..]);
        Assert.Equal("0", kv["questions_too_long"]);
        Assert.Equal("2", kv["choice_questions"]);
        Assert.Equal("2", kv["open_questions"]);
        Assert.Equal("0.2500", kv["choice_chance"]); // QuALITY: one gold of four options
        Assert.True(int.Parse(kv["trained"]) >= 4, r.Out);
        Assert.Equal(kv["parts"], kv["added"]);
        foreach (var k in new[] { "none", "icl", "cas_d1", "cas_d2", "rag_k1" })
        {
            Assert.Equal("4", kv[k + "_answered"]);
            Assert.Equal("2", kv[k + "_choice_answered"]);
            Assert.Equal("2", kv[k + "_rouge_l_answered"]);
            double acc = double.Parse(kv[k + "_choice_accuracy"], CultureInfo.InvariantCulture), rouge = double.Parse(kv[k + "_rouge_l"], CultureInfo.InvariantCulture);
            Assert.Contains(acc, new[] { 0, 0.5, 1 });
            Assert.InRange(rouge, 0, 1);
        }
        Assert.Equal("1.0000", kv["icl_gold_recall"]);
        Assert.Contains("warning=the model has about 259K parameters", r.Out);
        string last = r.Out.TrimEnd().Split('\n')[^1];
        Assert.Matches("^(prompt_token_ratio_rag_over_cas|gap_closed_difference_cas_minus_rag_at_equal_tokens|gap_closed_difference_cas_minus_rag_best)=", last);
        string md = File.ReadAllText(Path.Combine(report, "DATASET_EVAL.md"));
        Assert.Contains("**Warning:**", md);
        Assert.Contains("Gold rule", md);
        Assert.Contains(last, md);
        Assert.True(new FileInfo(Path.Combine(report, "dataset_eval_accuracy.png")).Length > 1000);
        Assert.True(new FileInfo(Path.Combine(report, "dataset_eval_rouge_l.png")).Length > 1000);

        // Again: the collection is there (nothing added), every cartridge fresh (nothing trained).
        var again = CasCli.Run("eval", "collection", "--dataset", quality, "--dataset", squality, "--data-dir", data, "--modes", "none,cas", "--depths", "1",
            "--train-probes", "2", "--train-epochs", "1", "--max-tokens", "32", "--skip-answers");
        Assert.True(again.Rc == 0, $"exit {again.Rc}: {again.Err}");
        Assert.Contains(" added=0 ", again.Out);
        Assert.Contains(" trained=0 ", again.Out);

        // Clear errors.
        File.WriteAllText(Path.Combine(_dir, "x.jsonl"), JsonSerializer.Serialize(new { text = "hi" }) + "\n");
        var bad = CasCli.Run("eval", "collection", "--dataset", Path.Combine(_dir, "x.jsonl"), "--data-dir", data);
        Assert.Equal(2, bad.Rc);
        Assert.Contains("unknown data set format", bad.Err);
    }
}
