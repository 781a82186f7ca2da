using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Resources;
using Cas.SelfStudy;
using Cas.Tests.Common;
using Cas.Training.Evaluation;

namespace Cas.Training.Tests.Evaluation;

/// <summary>Evaluating on a self-study dataset: the in-context condition must be exactly what the teacher read.</summary>
public class DatasetEvaluationTests
{
    [Fact]
    public void InContextConditionReproducesTheSelfStudyTeacher()
    {
        var (model, tok, _, _) = Stories260K.Load();
        string text = string.Concat(Enumerable.Range(0, 30).Select(i => $"Lily saw a {(i % 2 == 0 ? "red" : "big")} ball number {i}. Tom was happy. "));
        var docs = new List<Document> { new("story", text, "test", Document.NoMetadata, Document.NoQuestions) };
        var options = new SelfStudyOptions
        {
            Conversations = 6, Seed = 3, MinChunkTokens = 48, MaxChunkTokens = 96, ConversationsPerChunk = 3, Concurrency = 6,
            UserAgent = AgentOptions.UserDefaults with { MaxTokens = 20 },
            AnswerAgent = AgentOptions.AnswerDefaults with { MaxTokens = 24 },
        };
        var synth = new SelfStudySynthesizer(model, tok, null, docs, options);
        var path = Path.Combine(Path.GetTempPath(), $"cas-eval-{Guid.NewGuid():N}.casds");
        try
        {
            using (var w = DatasetWriter.Open(path, resume: false, new DatasetWriterOptions { Fsync = false, Metadata = synth.Metadata() }))
                synth.WriteTo(w);
            var set = EvalSet.FromDataset(path, tok, model.Config);
            var eval = new HeldOutEvaluator(model);
            var icl = eval.Icl(set);
            // The teacher's top-k came from the same model on the same (framed) context: KL is zero up to fp32 rounding.
            Assert.True(icl.KlPositions > 0);
            Assert.True(icl.Kl < 1e-4, $"KL of the in-context condition to its own teacher is {icl.Kl}");
            // Without the chunk the student is measurably further from the teacher.
            Assert.True(eval.None(set).Kl > 10 * Math.Max(icl.Kl, 1e-4));
        }
        finally { File.Delete(path); }
    }
}
