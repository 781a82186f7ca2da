using System.Collections.Concurrent;
using Cas.Collections;
using Cas.Engine;

namespace Cas.Service;

/// <summary>
/// Dense retrieval from the collection's own model: a text's vector is the mean over its tokens of the model's
/// final-normed hidden state (<see cref="Transformer.MeanHiddenState"/>), compared by cosine similarity. Chunk vectors
/// are kept in the catalog (<see cref="CollectionCatalog.PutChunkVectors"/>) and computed lazily, on the first dense
/// question after a document is added or changed, for exactly the chunks that lack one; a changed document's old
/// vectors were dropped with its old chunks. Texts are embedded without BOS and cut to the model's context.
/// Thread-safe: embeddings run on the model's off-decode-thread Transformer (<see cref="ModelHost.OffDecodeThread"/>), one
/// update at a time per collection.
/// </summary>
public sealed class DenseIndex(CollectionCatalog catalog)
{
    /// <summary>Chunks embedded per catalog write (work done before a cancellation or crash is kept).</summary>
    const int WriteBatch = 64;

    readonly ConcurrentDictionary<string, object> _updating = new(StringComparer.Ordinal);
    long _computed;

    /// <summary>Chunk vectors computed by this index since it was made (a question that finds them all stored adds none).</summary>
    public long ChunkVectorsComputed => Interlocked.Read(ref _computed);

    /// <summary>The vector of <paramref name="text"/> under <paramref name="host"/>'s model ([dim]); INVALID_ARGUMENT when it has no tokens.</summary>
    public float[] Embed(ModelHost host, string text)
    {
        var tokens = host.Tokenizer.Encode(text);
        if (tokens.Length == 0) throw new InvalidRequestException("the text to embed has no tokens; dense retrieval needs some words.");
        return EmbedTokens(host, tokens);
    }

    float[] EmbedTokens(ModelHost host, int[] tokens)
    {
        if (tokens.Length > host.Config.MaxSeqLen) tokens = tokens[..host.Config.MaxSeqLen];
        var v = new float[host.Config.Dim];
        return host.OffDecodeThread(t => { t.MeanHiddenState(tokens, v); return v; });
    }

    /// <summary>Computes and stores the vectors of the collection's chunks that have none of this model; returns how many.</summary>
    public int Update(CollectionInfo collection, ModelHost host, CancellationToken cancel = default)
    {
        lock (_updating.GetOrAdd(collection.Name, _ => new object()))
        {
            var missing = catalog.ChunksWithoutVector(collection.Name, host.Fingerprint);
            int done = 0;
            for (int i = 0; i < missing.Count; i += WriteBatch)
            {
                var batch = new List<(ChunkText, float[])>();
                for (int j = i; j < Math.Min(i + WriteBatch, missing.Count); j++)
                {
                    cancel.ThrowIfCancellationRequested();
                    var tokens = host.Tokenizer.Encode(missing[j].Text);
                    // A chunk without tokens (whitespace) gets the zero vector: similar to nothing.
                    batch.Add((missing[j], tokens.Length == 0 ? new float[host.Config.Dim] : EmbedTokens(host, tokens)));
                    Interlocked.Increment(ref _computed);
                }
                done += catalog.PutChunkVectors(collection.Name, host.Fingerprint, batch);
            }
            return done;
        }
    }

    /// <summary>The <paramref name="k"/> chunks most similar to <paramref name="query"/>, best first (score: cosine), after <see cref="Update"/>.</summary>
    public IReadOnlyList<ChunkHit> Search(CollectionInfo collection, ModelHost host, string query, int k, CancellationToken cancel = default)
    {
        Update(collection, host, cancel);
        return catalog.SearchDense(collection.Name, host.Fingerprint, Embed(host, query), k);
    }
}
