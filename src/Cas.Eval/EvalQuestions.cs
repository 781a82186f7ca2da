using Cas.Engine;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Service;
using Cas.Training;

namespace Cas.Eval;

/// <summary>
/// One evaluation question: the text the retriever and the prompt get, the reference answer as token ids (scored
/// token by token), and the documents that hold the answer (for recall, and the document ICL puts in context).
/// </summary>
/// <param name="Id">Stable name: DOCUMENT#index.</param>
/// <param name="Question">What is asked (retrieval query and prompt text).</param>
/// <param name="Answer">The reference answer's ids, scored after the prompt.</param>
/// <param name="GoldDocuments">Documents holding the answer; ICL puts the first in context.</param>
/// <param name="Framing">How the question is written before the answer.</param>
public sealed record EvalQuestion(string Id, string Question, int[] Answer, IReadOnlyList<string> GoldDocuments, ScoreFraming Framing);

/// <summary>Where evaluation questions come from.</summary>
public static class EvalQuestions
{
    /// <summary>
    /// Held-out document probes as questions (what `cas eval` measures a cartridge on, built by the same
    /// <see cref="DocumentProbes.BuildSet"/>: held-out split, a seed other than training's, the chunk size training uses).
    /// Example i's student tokens are separator + probe + the teacher's continuation; the question is the probe's text
    /// (continuation framing: after a cartridge the prompt is "\n" + probe, as in training), the answer is the teacher's
    /// continuation, the gold document is the probe's own. <paramref name="progress"/> gets (documents done, total).
    /// </summary>
    public static List<EvalQuestion> FromProbes(Model model, ITokenizer tokenizer, IEnumerable<(string Id, string Text)> documents,
        int probesPerChunk, ulong seed, int continuationTokens = 64, Action<int, int>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(model); ArgumentNullException.ThrowIfNull(tokenizer); ArgumentNullException.ThrowIfNull(documents);
        var docs = documents.ToList();
        var options = new DocumentProbeOptions { ExamplesPerChunk = probesPerChunk, ContinuationTokens = continuationTokens, Split = ProbeSplit.HeldOut, Seed = seed };
        options = options with { ChunkTokens = DocumentProbes.ChooseChunkTokens(model.Config, tokenizer, options, null) };
        var questions = new List<EvalQuestion>();
        for (int d = 0; d < docs.Count; d++)
        {
            var set = DocumentProbes.BuildSet(model, tokenizer, docs[d].Text, docs[d].Id, options, cancel: cancel);
            for (int i = 0; i < set.Examples.Count; i++)
            {
                var q = FromProbe(tokenizer, set.Examples[i], $"{docs[d].Id}#{i}", docs[d].Id);
                if (q != null) questions.Add(q);
            }
            progress?.Invoke(d + 1, docs.Count);
        }
        return questions;
    }

    /// <summary>
    /// One probe example as a question: the tokens up to its first target position are separator + probe (decoded and
    /// trimmed: the question), the tokens after it the answer. Null when the example has no answer token.
    /// </summary>
    public static EvalQuestion? FromProbe(ITokenizer tokenizer, TrainingSequence example, string id, string document)
    {
        var (tokens, targets) = example;
        int first = -1;
        for (int t = 0; t < tokens.Length; t++) if (targets.HasTarget(t)) { first = t; break; }
        if (first < 0 || first + 1 >= tokens.Length) return null;
        string probe = tokenizer.Decode(tokens[..(first + 1)]).Trim();
        if (probe.Length == 0) return null;
        return new EvalQuestion(id, probe, tokens[(first + 1)..], [document], ScoreFraming.Continuation);
    }
}
