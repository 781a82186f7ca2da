using System.Diagnostics;
using System.Globalization;
using Cas.Engine;
using Cas.Jobs;
using Cas.Service;

namespace Cas.Eval;

/// <summary>Settings of <see cref="DatasetRun.ExecuteAsync"/> (`cas eval collection --dataset`).</summary>
public sealed record DatasetRunOptions
{
    /// <summary>Data set files (L-Eval .jsonl or SQuALITY's train.jsonl).</summary>
    public required IReadOnlyList<string> Paths { get; init; }
    public string DataDir { get; init; } = "cas-data";
    /// <summary>The collection to put the parts in; null: named after the data sets (<see cref="DatasetCollection.DefaultName"/>).</summary>
    public string? Collection { get; init; }
    public required string ModelPath { get; init; }
    public required string TokenizerPath { get; init; }
    /// <summary>Documents read from each file (the first ones); 0: all.</summary>
    public int MaxDocuments { get; init; } = DefaultMaxDocuments;
    public const int DefaultMaxDocuments = 2;
    /// <summary>Questions evaluated, spread over the documents; 0: all.</summary>
    public int MaxQuestions { get; init; }
    /// <summary>Largest part in tokens; 0: <see cref="DatasetCollection.DefaultPartTokens"/>.</summary>
    public int PartTokens { get; init; }
    /// <summary>Retrieval chunk size of a new collection, in tokens.</summary>
    public int RetrievalChunkTokens { get; init; } = 128;
    /// <summary>The recipe for missing cartridges (`cas collection train`'s defaults unless changed).</summary>
    public CasTrainingOptions Training { get; init; } = new();
    public long ResidentBytes { get; init; } = 1L << 30;
    public CollectionEvalOptions Eval { get; init; } = new();
}

/// <summary>What a data set run did and measured.</summary>
public sealed record DatasetRunResult(IReadOnlyList<EvalDataset> Datasets, DatasetQuestionSet Set, string Collection, int Added, int Unchanged, int ForeignDocuments,
    CasJobResult? Training, int IclRetrieved, DatasetEvalResult Eval, double PrepareSeconds, double TrainSeconds, string ModelName, long ModelParameters, int ContextTokens);

/// <summary>
/// `cas eval collection --dataset`: data set files → parts that fit the model → a collection (idempotent) → missing
/// cartridges trained (<see cref="CasTrainer"/>, resumable) → questions through the query path in every setting
/// (<see cref="DatasetEvaluator"/>). The command only prints; progress comes through <see cref="IProgress{T}"/>.
/// </summary>
public static class DatasetRun
{
    public static async Task<DatasetRunResult> ExecuteAsync(DatasetRunOptions o, IProgress<string>? progress = null, IProgress<CasJobEvent>? training = null,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (o.Paths.Count == 0) throw new InvalidRequestException("give at least one data set file with --dataset.");
        if (o.MaxQuestions < 0) throw new InvalidRequestException($"--max-questions must be ≥ 0, got {o.MaxQuestions}.");
        if (o.PartTokens < 0) throw new InvalidRequestException($"--part-tokens must be ≥ 0 (0: half the model's context), got {o.PartTokens}.");
        var settings = o.Eval.Settings();
        var clock = Stopwatch.StartNew();
        var datasets = o.Paths.Select(p => Datasets.Load(p, o.MaxDocuments, w => progress?.Report("warning: " + w))).ToList();
        foreach (var d in datasets)
            progress?.Report($"{d.Path}: {d.Format}, {d.Documents.Count} documents, {d.Questions} questions ({d.Documents.Sum(x => x.Questions.Count(q => q.IsMultipleChoice))} multiple choice)");

        using var state = new ServiceState(new CasServerOptions { DataDir = o.DataDir, ResidentBytes = o.ResidentBytes });
        var host = state.Model(o.ModelPath, o.TokenizerPath);
        int partTokens = o.PartTokens > 0 ? o.PartTokens : DatasetCollection.DefaultPartTokens(datasets, host.Tokenizer, host.Config, o.Eval.MaxTokens);
        var set = DatasetCollection.Build(datasets, host.Tokenizer, host.Config, partTokens, o.Eval.MaxTokens, o.MaxQuestions);
        progress?.Report($"{set.Parts.Count} parts of ≤ {partTokens} tokens from {datasets.Sum(d => d.Documents.Count)} documents; {set.Items.Count} questions" +
            (set.SkippedTooLong > 0 ? $" ({set.SkippedTooLong} left out: too long to ask with a part in the model's context of {host.Config.MaxSeqLen})" : ""));
        string name = o.Collection ?? DatasetCollection.DefaultName(datasets, o.MaxDocuments, partTokens, host.Fingerprint);
        var (info, added, foreign) = DatasetCollection.Ensure(state.Catalog, name, o.ModelPath, host.Fingerprint, o.TokenizerPath, o.RetrievalChunkTokens, set.Parts, host.Tokenizer, cancel);
        progress?.Report($"collection {name}: {added.Added} parts added, {added.Changed} changed, {added.Unchanged} unchanged ({info.ChunkTokens}-token retrieval chunks)" +
            (foreign > 0 ? $"; it also holds {foreign} other documents (they are retrieved too)" : ""));
        double prepare = clock.Elapsed.TotalSeconds;

        clock.Restart();
        CasJobResult? trained = null;
        if (settings.Any(s => s.Mode == "cas"))
        {
            int needing = state.Catalog.NeedingTraining(name, state.Store).Count;
            progress?.Report(needing == 0 ? $"cartridges: all {info.Documents} fresh; not training"
                : $"cartridges: training {needing} with CasTrainer (what `cas collection train {name}` runs; {o.Training.Probes.ExamplesPerChunk} probes per chunk, " +
                  $"{(o.Training.Epochs ?? Cas.Training.TrainingRunOptions.DefaultEpochs).ToString(CultureInfo.InvariantCulture)} epochs; interrupted, it resumes on the next run)");
            trained = DatasetCollection.TrainMissing(state, name, o.Training with { ResidentBudgetBytes = o.ResidentBytes }, training, cancel);
        }
        double train = clock.Elapsed.TotalSeconds;

        var path = new InProcessQueryPath(state);
        var (items, retrieved) = await DatasetCollection.ChooseIclPartsAsync(path, name, set.Items, o.Eval.CasRetrieveChunks, cancel);
        progress?.Report($"icl parts: a gold part retrieved for {retrieved} of {items.Count(i => i.Question.GoldDocuments.Count > 1)} questions with several parts");
        long parameters = DatasetEvaluator.Parameters(host.Config);
        var eval = await new DatasetEvaluator(path).RunAsync(name, items, o.Eval, parameters, progress, cancel);
        return new DatasetRunResult(datasets, set with { Items = items }, name, added.Added + added.Changed, added.Unchanged, foreign, trained, retrieved, eval,
            prepare, train, Path.GetFileName(o.ModelPath), parameters, host.Config.MaxSeqLen);
    }

    /// <summary>The report's setup paragraph: what was evaluated and every rule the figures depend on.</summary>
    public static string Setup(DatasetRunResult r, DatasetRunOptions o)
    {
        var files = string.Join("; ", r.Datasets.Select(d => $"`{d.Path}` ({d.Format}: {d.Documents.Count} documents, {d.Questions} questions)"));
        var tr = r.Training;
        return $"Data sets: {files}. Model `{r.ModelName}` (about {r.ModelParameters:N0} weight parameters, context {r.ContextTokens}). " +
            $"**Splitting**: each document is cut at sentence ends (`Passages.Split`) into parts of at most {r.Set.PartTokens} tokens, {r.Set.Parts.Count} parts in all, " +
            $"put as documents into collection `{r.Collection}` ({(o.Collection == null ? "named after the data sets" : "given")}; retrieval chunks of {o.RetrievalChunkTokens} tokens, BM25). " +
            $"**Gold rule**: these data sets give no evidence spans, so a question's gold documents are *all parts* of its original document; recall counts a question when any of them is used. " +
            $"**ICL** puts one part in context: the gold part the retriever (BM25, {o.Eval.CasRetrieveChunks} chunks, one RAG request through the query path) ranks first — found for {r.IclRetrieved} questions — else the first part. " +
            $"Questions: {r.Set.Items.Count}" + (r.Set.SkippedTooLong > 0 ? $" ({r.Set.SkippedTooLong} more left out: the question, a full part and the answer room did not fit the context)" : "") +
            $"; each asked as the service asks (\"Question: …\\nAnswer:\"). **Reference perplexity**: of the first reference answer (multiple choice: the first gold option's text) after \"Answer:\", cut to {o.Eval.MaxTokens} tokens " +
            $"({r.Eval.Items.Count(i => i.AnswerTruncated)} were cut), scored by `ScoreAsync` with exactly the context `Ask` chooses; gap closed against none and icl as for the probes. " +
            "**Option accuracy** (multiple choice): every option's text scored as the answer on the same request; the option with the lowest NLL per token (length normalisation by the option's token count) is chosen; " +
            "correct when its letter is among the gold letters (coursera's multi-letter answers count any of them); chance = mean of |gold| / |options|. " +
            "**ROUGE-L** (open questions): F-measure of the LCS of lower-cased word tokens between `Ask`'s greedy answer and each reference, the best over the references. " +
            (tr == null ? "Cartridges: all were fresh already (trained by an earlier run). "
                : $"Cartridges: {tr.Trained} trained by `CasTrainer` ({tr.Steps} steps, {r.TrainSeconds:F0} s; {o.Training.Probes.ExamplesPerChunk} probes per chunk, " +
                  $"{(o.Training.Epochs ?? Cas.Training.TrainingRunOptions.DefaultEpochs).ToString(CultureInfo.InvariantCulture)} epochs, p = tokens / {o.Training.Compression.ToString(CultureInfo.InvariantCulture)}, at least {o.Training.MinCartridgeTokens}). ") +
            $"cas: BM25 over {o.Eval.CasRetrieveChunks} chunks → the first D fresh cartridges; rag: the top k chunks pasted.";
    }
}
