using Cas.Engine;
using Cas.Eval;
using Cas.Service;
using Cas.Service.V1;

namespace Cas.Eval.Tests;

/// <summary>
/// Option log-likelihood accuracy against direct <see cref="IQueryPath.ScoreAsync"/> numbers: stories260K, three short
/// documents in a collection (no cartridges needed: none and rag modes). Skipped when ../shared is absent.
/// </summary>
public sealed class OptionScoringTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("cas-option-test-").FullName;
    ServiceState? _state;

    public void Dispose()
    {
        _state?.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    (InProcessQueryPath Path, ModelHost Host) Setup()
    {
        (string, string)[] docs =
        [
            ("cat", "Lily had a small cat named Tom. The cat liked to play with a red ball in the garden."),
            ("ship", "Ben saw a big ship on the sea. The ship had white sails and a loud horn."),
            ("moon", "At night Sue looked at the moon. The moon was round and bright."),
        ];
        (_state, var host) = StoriesCollection.Create(_dir, docs);
        return (new InProcessQueryPath(_state), host);
    }

    [Fact]
    public async Task ChosenOptionHasTheHighestNormalisedLogLikelihoodOfDirectScores()
    {
        var (path, host) = Setup();
        var ct = TestContext.Current.CancellationToken;
        string[] texts = ["a cat", "the big ship with white sails", "the moon", "Tom played with the red ball in the garden"];
        var options = texts.Select(t => Prompting.EncodeContinuation(host.Tokenizer, " " + t)).ToList();
        foreach (var (mode, request) in new[]
        {
            (AskMode.NoContext, new AskRequest { Collection = "s", Question = "What did the cat play with?", MaxTokens = 32 }),
            (AskMode.Rag, new AskRequest { Collection = "s", Question = "What did the cat play with?", MaxTokens = 32, RetrieveChunks = 2 }),
        })
        {
            var (nll, chosen) = await DatasetEvaluator.ScoreOptionsAsync(path, mode, request, options, ct);
            var direct = new List<ScoreResult>();
            foreach (var o in options) direct.Add(await path.ScoreAsync(mode, request, o, ScoreFraming.Question, ct));
            Assert.Equal(direct.Select(d => d.Nll), nll);
            // Every option is scored after the very same context (what Ask would use).
            Assert.All(direct, d => Assert.Equal(direct[0].Prompt, d.Prompt));
            var perToken = direct.Select((d, i) => d.Nll / options[i].Length).ToList();
            Assert.Equal(perToken.IndexOf(perToken.Min()), chosen);
            Assert.All(nll, x => Assert.True(x > 0));
        }
    }

    [Fact]
    public async Task AccuracyCountsAnyGoldLetterAndChanceIsGoldOverOptions()
    {
        var (path, host) = Setup();
        var ct = TestContext.Current.CancellationToken;
        var o = new CollectionEvalOptions { Modes = ["none", "rag"], Ks = [1], MaxTokens = 32, Answer = true };
        DatasetItem Mc(string id, string gold, params string[] texts)
        {
            var opts = texts.Select((t, i) => new DatasetOption((char)('A' + i), t)).ToList();
            var ids = texts.Select(t => Prompting.EncodeContinuation(host.Tokenizer, " " + t)).ToList();
            return new DatasetItem(new EvalQuestion(id, "What did the cat play with?", ids[gold[0] - 'A'], ["cat"], ScoreFraming.Question),
                new DatasetQuestion(id, "What did the cat play with?", opts, gold, [gold]), "t", ids, false);
        }
        var items = new List<DatasetItem>
        {
            Mc("q0", "B", "a ball", "the moon", "a ship"),
            Mc("q1", "AC", "the moon", "a red ball", "a big ship", "the sea"),
            new(new EvalQuestion("q2", "Who saw the ship?", Prompting.EncodeContinuation(host.Tokenizer, " Ben saw it."), ["ship"], ScoreFraming.Question),
                new DatasetQuestion("q2", "Who saw the ship?", [], "", ["Ben saw the ship", "a boy"]), "t", [], false),
        };
        var r = await new DatasetEvaluator(path).RunAsync("s", items, o, modelParameters: 260_000, cancel: ct);
        Assert.Equal((2, 1), (r.ChoiceQuestions, r.OpenQuestions));
        Assert.Equal((1.0 / 3 + 2.0 / 4) / 2, r.Chance, 12);
        foreach (var s in r.Settings)
        {
            var request = (DatasetItem i) => CollectionEvaluator.Request("s", i.Question, s.Setting, o, null);
            int correct = 0;
            foreach (var item in items.Take(2))
            {
                var (_, chosen) = await DatasetEvaluator.ScoreOptionsAsync(path, s.Setting.AskMode, request(item), item.OptionAnswers, ct);
                if (item.Source.GoldLetters.Contains(item.Source.Options[chosen].Letter)) correct++;
            }
            Assert.Equal(correct / 2.0, s.Accuracy, 12);
            Assert.Equal(2, s.Choice);
            // ROUGE-L of the greedy answer Ask gave in the same run.
            var answer = r.Run.Outcomes.Single(x => x.Setting == s.Setting && x.QuestionId == "q2").Answer!;
            Assert.Equal(RougeL.Best(answer, ["Ben saw the ship", "a boy"]), s.RougeL, 12);
            Assert.Equal(1, s.RougeAnswered);
        }
        Assert.Contains(r.Warnings, w => w.Contains("too small", StringComparison.Ordinal));
        var kv = DatasetReport.AllKeyValues(r).ToList();
        Assert.Matches("^(prompt_token_ratio_rag_over_cas|gap_closed_difference_cas_minus_rag_at_equal_tokens|gap_closed_difference_cas_minus_rag_best)=", kv[^1]);
        Assert.Contains("none_choice_answered=2 none_choice_failed=0 none_choice_accuracy=" + Fmt.F(r.Settings[0].Accuracy, "F4") + " none_choice_accuracy_se=" + Fmt.F(r.Settings[0].AccuracyStdErr, "F4"), kv);
    }
}
