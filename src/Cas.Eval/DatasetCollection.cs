using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Jobs;
using Cas.Resources;
using Cas.Service;
using Cas.Service.V1;

namespace Cas.Eval;

/// <summary>A document of the evaluation collection: one part of a data set document, cut to fit the model.</summary>
/// <param name="Id">SOURCE/pNNN (the original document's id, the part's 0-based index).</param>
public sealed record DatasetPart(string Id, string Text, string SourceDocument, int Index);

/// <summary>
/// A data set question ready for the query path: the <see cref="EvalQuestion"/> the evaluator scores (its gold documents
/// are the parts of its original document, the one ICL uses first), the question it came from, and each option's
/// answer ids (multiple choice). <paramref name="AnswerTruncated"/>: the scored reference was cut to the answer room.
/// </summary>
public sealed record DatasetItem(EvalQuestion Question, DatasetQuestion Source, string Dataset, IReadOnlyList<int[]> OptionAnswers, bool AnswerTruncated);

/// <summary>Data set documents split into parts, and their questions as <see cref="DatasetItem"/>s.</summary>
/// <param name="SkippedTooLong">Questions left out because the question, a part and the answer room do not fit the context.</param>
public sealed record DatasetQuestionSet(IReadOnlyList<DatasetPart> Parts, IReadOnlyList<DatasetItem> Items, int SkippedTooLong, int PartTokens)
{
    public IReadOnlyList<EvalQuestion> Questions => Items.Select(i => i.Question).ToList();
}

/// <summary>
/// From data set files to an evaluation: documents too long for the model are split into parts that fit it
/// (<see cref="Passages.Split"/>, whole sentences), the parts go into a collection (idempotent), missing cartridges are
/// trained by <see cref="CasTrainer"/> (what `cas collection train` runs), and every question becomes an
/// <see cref="EvalQuestion"/>.
/// <para>
/// <b>Gold rule.</b> These data sets give no evidence spans, so the gold documents of a question are all parts of its
/// original document (recall: at least one of them among the documents used). ICL puts one part in context: the gold
/// part the retriever ranks first for the question (<see cref="ChooseIclPartsAsync"/>), or the first part when none of
/// them is retrieved.
/// </para>
/// </summary>
public static class DatasetCollection
{
    /// <summary>Tokens kept free beside a part, the question and the answer for the query path's framing (BOS, "\n\n").</summary>
    public const int FramingMargin = 8;

    /// <summary>
    /// Default part size: what the model's context leaves after the answer room, the framing margin and the 90th
    /// percentile of the questions' prompts ("Question: …\nAnswer:"), so that nine questions in ten fit with a whole
    /// part in front (ICL); at most half the context and at least a quarter of it (a question too long for a part of that
    /// size is left out, counted). On stories260K (context 512, 64 answer tokens): 256 for SQuALITY's short questions,
    /// 128–140 for QuALITY's questions with their four options.
    /// </summary>
    public static int DefaultPartTokens(IReadOnlyList<EvalDataset> datasets, ITokenizer tokenizer, ModelConfig config, int maxTokens)
    {
        var lengths = datasets.SelectMany(d => d.Documents).SelectMany(d => d.Questions).Select(q => PromptTokens(tokenizer, q.Text)).Order().ToArray();
        int p90 = lengths.Length == 0 ? 0 : (int)Statistics.Percentile(lengths.Select(x => (double)x).ToArray(), 0.9);
        return Math.Clamp(config.MaxSeqLen - maxTokens - FramingMargin - p90, Math.Max(16, config.MaxSeqLen / 4), Math.Max(16, config.MaxSeqLen / 2));
    }

    /// <summary>Tokens of the service's question framing, "Question: …\nAnswer:".</summary>
    public static int PromptTokens(ITokenizer tokenizer, string question) => tokenizer.Encode($"Question: {question.Trim()}\nAnswer:").Length;

    /// <summary>
    /// Splits every document into parts of at most <paramref name="partTokens"/> tokens (a document that fits is one
    /// part). <see cref="InvalidRequestException"/> when a document is empty or a part cannot be made to fit.
    /// </summary>
    public static List<DatasetPart> Split(DatasetDocument document, ITokenizer tokenizer, int partTokens)
    {
        if (partTokens < 16) throw new InvalidRequestException($"parts must allow at least 16 tokens, got {partTokens}.");
        List<string> texts;
        try { texts = Passages.Split(document.Text, s => tokenizer.Encode(s).Length, partTokens).ToList(); }
        catch (ArgumentException e) { throw new InvalidRequestException($"document {document.Id} cannot be split into parts of {partTokens} tokens: {e.Message}"); }
        if (texts.Count == 0) throw new InvalidRequestException($"document {document.Id} is empty; it cannot be split into parts.");
        var parts = new List<DatasetPart>(texts.Count);
        for (int i = 0; i < texts.Count; i++)
        {
            int n = tokenizer.Encode(texts[i]).Length;
            if (n > partTokens) throw new InvalidRequestException($"document {document.Id}: part {i} has {n} tokens, more than {partTokens}; it cannot be split to fit.");
            parts.Add(new DatasetPart($"{document.Id}/p{i:D3}", texts[i], document.Id, i));
        }
        return parts;
    }

    /// <summary>
    /// Parts and questions of <paramref name="datasets"/> for a model of context <paramref name="config"/>.MaxSeqLen:
    /// the scored reference answer is the first reference (multiple choice: the first gold option's text), cut to
    /// <paramref name="maxTokens"/> tokens; options are encoded the same way (" " + text after "Answer:"). A question whose
    /// "Question: …\nAnswer:" prompt, a full part and the answer room do not fit the context is left out (counted).
    /// <paramref name="maxQuestions"/> &gt; 0 keeps that many, spread evenly over the list.
    /// </summary>
    public static DatasetQuestionSet Build(IReadOnlyList<EvalDataset> datasets, ITokenizer tokenizer, ModelConfig config, int partTokens, int maxTokens, int maxQuestions = 0)
    {
        ArgumentNullException.ThrowIfNull(datasets);
        if (maxTokens < 1) throw new InvalidRequestException($"max tokens must be ≥ 1, got {maxTokens}.");
        if (partTokens + maxTokens + FramingMargin >= config.MaxSeqLen)
            throw new InvalidRequestException($"parts of {partTokens} tokens and {maxTokens} answer tokens leave no room for a question in the model's context of {config.MaxSeqLen}; lower --part-tokens or --max-tokens.");
        var parts = new List<DatasetPart>();
        var items = new List<DatasetItem>();
        int tooLong = 0;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var ds in datasets)
            foreach (var doc in ds.Documents)
            {
                if (!seen.Add(doc.Id)) throw new InvalidRequestException($"document {doc.Id} appears twice; give each data set file once.");
                var docParts = Split(doc, tokenizer, partTokens);
                parts.AddRange(docParts);
                var gold = docParts.Select(p => p.Id).ToList();
                foreach (var q in doc.Questions)
                {
                    if (PromptTokens(tokenizer, q.Text) + partTokens + maxTokens + FramingMargin > config.MaxSeqLen) { tooLong++; continue; }
                    string reference = q.IsMultipleChoice ? q.Options.First(o => o.Letter == q.GoldLetters[0]).Text : q.References[0];
                    var (answer, truncated) = Encode(tokenizer, reference, maxTokens);
                    if (answer.Length == 0) continue;
                    var options = q.Options.Select(o => Encode(tokenizer, o.Text, maxTokens).Ids).ToList();
                    items.Add(new DatasetItem(new EvalQuestion(q.Id, q.Text, answer, gold, ScoreFraming.Question), q, ds.Name, options, truncated));
                }
            }
        if (items.Count == 0)
            throw new InvalidRequestException(tooLong > 0
                ? $"all {tooLong} questions are too long to ask with a {partTokens}-token part and {maxTokens} answer tokens in the model's context of {config.MaxSeqLen}; lower --part-tokens or --max-tokens."
                : "the data sets hold no question to evaluate.");
        if (maxQuestions > 0) items = Spread(items, maxQuestions);
        return new DatasetQuestionSet(parts, items, tooLong, partTokens);
    }

    /// <summary>At most <paramref name="n"/> items spread evenly over <paramref name="list"/> (grouped by document, so every document keeps a share).</summary>
    public static List<T> Spread<T>(IReadOnlyList<T> list, int n) =>
        n <= 0 || list.Count <= n ? [.. list] : Enumerable.Range(0, n).Select(i => list[(int)((long)i * list.Count / n)]).ToList();

    /// <summary>" " + text encoded as the continuation of "Answer:", cut to <paramref name="maxTokens"/>.</summary>
    static (int[] Ids, bool Truncated) Encode(ITokenizer tokenizer, string text, int maxTokens)
    {
        var ids = Prompting.EncodeContinuation(tokenizer, " " + text.Trim());
        return ids.Length > maxTokens ? (ids[..maxTokens], true) : (ids, false);
    }

    /// <summary>The collection's default name: the data sets, documents per file, part size and the model's short fingerprint.</summary>
    public static string DefaultName(IEnumerable<EvalDataset> datasets, int maxDocuments, int partTokens, string fingerprint)
    {
        string names = string.Join("_", datasets.Select(d => d.Name));
        string tail = $"-{(maxDocuments > 0 ? "n" + maxDocuments : "all")}-t{partTokens}-{Cartridge.ShortFingerprint(fingerprint)}";
        if (names.Length + tail.Length > 64) names = names[..(64 - tail.Length)];
        return names + tail;
    }

    /// <summary>
    /// Creates collection <paramref name="name"/> for the model when it is absent (retrieval chunks of
    /// <paramref name="chunkTokens"/>) and adds the parts (idempotent: parts already there with the same text are left
    /// alone). <see cref="InvalidRequestException"/> when the collection exists for another model.
    /// </summary>
    public static (CollectionInfo Info, AddReport Added, int Foreign) Ensure(CollectionCatalog catalog, string name, string modelPath, string fingerprint,
        string tokenizerPath, int chunkTokens, IReadOnlyList<DatasetPart> parts, ITokenizer tokenizer, CancellationToken cancel = default)
    {
        var info = catalog.Find(name);
        if (info != null && !string.Equals(info.ModelFingerprint, fingerprint, StringComparison.OrdinalIgnoreCase))
            throw new InvalidRequestException($"collection '{name}' was made for another model ({info.ModelPath}); name another with --collection.");
        info ??= catalog.Create(name, Path.GetFullPath(modelPath), fingerprint, Path.GetFullPath(tokenizerPath), chunkTokens);
        var added = catalog.AddDocuments(name, parts.Select(p => (new Document(p.Id, p.Text, p.SourceDocument, Document.NoMetadata, Document.NoQuestions), "dataset")),
            tokenizer, cancellation: cancel);
        var ids = parts.Select(p => p.Id).ToHashSet(StringComparer.Ordinal);
        int foreign = catalog.Documents(name).Count(d => !ids.Contains(d.DocumentId));
        return (catalog.Get(name), added, foreign);
    }

    /// <summary>
    /// Trains the collection's missing, stale or bad cartridges with <see cref="CasTrainer"/> (resumable: an interrupted
    /// run continues its job). Returns null when every cartridge is fresh.
    /// </summary>
    public static CasJobResult? TrainMissing(ServiceState state, string collection, CasTrainingOptions recipe, IProgress<CasJobEvent>? progress, CancellationToken cancel = default)
    {
        var info = state.Collection(collection);
        if (state.Catalog.NeedingTraining(collection, state.Store).Count == 0) return null;
        var host = state.ModelOf(info);
        var trainer = new CasTrainer(host.Model, host.Tokenizer, state.Catalog, state.Store, state.Budget, state.Options.DataDir);
        return trainer.Run(collection, recipe, progress, cancel);
    }

    /// <summary>
    /// Puts first, among each question's gold parts, the one the retriever ranks first: one RAG request through
    /// <paramref name="path"/> (retrieving <paramref name="retrieveChunks"/> chunks, one answer token) per question with
    /// more than one part; the first retrieved chunk of a gold part names it. When no gold part is retrieved (or the
    /// request fails) the first part stays first. Returns how many questions had a gold part retrieved.
    /// </summary>
    public static async Task<(List<DatasetItem> Items, int Retrieved)> ChooseIclPartsAsync(IQueryPath path, string collection, IReadOnlyList<DatasetItem> items,
        int retrieveChunks, CancellationToken cancel = default)
    {
        var result = new List<DatasetItem>(items.Count);
        int retrieved = 0;
        foreach (var item in items)
        {
            var q = item.Question;
            if (q.GoldDocuments.Count < 2) { result.Add(item); continue; }
            string? best = null;
            try
            {
                var a = await path.AskAsync(AskMode.Rag, new AskRequest { Collection = collection, Question = q.Question, RetrieveChunks = retrieveChunks, MaxTokens = 1 }, cancel);
                var gold = q.GoldDocuments.ToHashSet(StringComparer.Ordinal);
                best = a.Chunks.Select(c => c.DocumentId).FirstOrDefault(gold.Contains);
            }
            catch (Exception e) when (e is InvalidRequestException or FailedPreconditionException) { /* the first part stays first */ }
            if (best == null) { result.Add(item); continue; }
            retrieved++;
            result.Add(item with { Question = q with { GoldDocuments = [best, .. q.GoldDocuments.Where(g => g != best)] } });
        }
        return (result, retrieved);
    }
}
