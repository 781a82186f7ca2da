using Cas.Engine;
using Cas.Engine.Tokenizers;
using Cas.Resources;

namespace Cas.SelfStudy;

/// <summary>Whether chunk sizes are counted in tokens or in characters (UTF-16 code units).</summary>
public enum ChunkUnit
{
    Tokens,
    Characters,
}

/// <summary>Chunk size limits. A document shorter than <see cref="MinSize"/> becomes one whole chunk.</summary>
public sealed record ChunkerOptions
{
    public ChunkUnit Unit { get; init; } = ChunkUnit.Tokens;
    public int MinSize { get; init; } = 512;
    public int MaxSize { get; init; } = 2048;
}

/// <summary>
/// A piece of one document. <see cref="Tokens"/> is the window's token ids when cutting by tokens
/// (null when cutting by characters); <see cref="Text"/> is then the decoded window.
/// </summary>
public sealed record Chunk(ChunkLocation Location, string Text, int[]? Tokens);

/// <summary>
/// Cuts documents into chunks for self-study. <see cref="SampleAt"/> picks a document with
/// probability proportional to its length (in the chunk unit) and a random window in it of a size
/// drawn uniformly from [MinSize, MaxSize]; it is deterministic in (seed, index), so sample i can be
/// recomputed on its own when a run resumes.
/// <para>Char offsets of token windows: <c>CharStart</c> is the length of the decoded text of the
/// tokens before the window and <c>CharEnd</c> of the tokens up to its end. When the tokenizer
/// reproduces the document exactly (byte-level BPE does) these are exact offsets into
/// <see cref="Document.Text"/>; they are computed from checkpoints every 256 tokens, falling back to
/// decoding the whole prefix when the checkpoints cannot be trusted.</para>
/// Thread-safe after construction, provided the tokenizer's Decode is.
/// </summary>
public sealed class Chunker
{
    /// <summary>RNG stream id used by <see cref="SampleAt"/> (distinct from the seed prompt mix's).</summary>
    public const ulong ChunkStream = 1;

    readonly IReadOnlyList<Document> documents;
    readonly ITokenizer? tokenizer;
    readonly int[][]? tokens;          // per document, when cutting by tokens
    readonly Lazy<TokenCharMap>[]? charMaps;
    readonly long[] cumulative;        // cumulative[i] = total size of documents 0..i

    public ChunkerOptions Options { get; }
    public int DocumentCount => documents.Count;
    /// <summary>Sum of all document sizes in the chunk unit.</summary>
    public long TotalSize => cumulative.Length == 0 ? 0 : cumulative[^1];

    /// <summary>
    /// Prepares <paramref name="documents"/> for chunking; cutting by tokens encodes every document once
    /// (and needs <paramref name="tokenizer"/>). Throws <see cref="InvalidRequestException"/> for bad sizes.
    /// </summary>
    public Chunker(IReadOnlyList<Document> documents, ChunkerOptions options, ITokenizer? tokenizer = null)
    {
        ArgumentNullException.ThrowIfNull(documents);
        ArgumentNullException.ThrowIfNull(options);
        if (options.MinSize < 1 || options.MaxSize < options.MinSize)
            throw new InvalidRequestException($"chunk sizes min={options.MinSize}, max={options.MaxSize} are invalid; need 1 <= min <= max.");
        if (options.Unit == ChunkUnit.Tokens && tokenizer is null)
            throw new InvalidRequestException("chunking by tokens needs a tokenizer; pass one or chunk by characters.");
        this.documents = documents;
        this.tokenizer = tokenizer;
        Options = options;
        cumulative = new long[documents.Count];
        if (options.Unit == ChunkUnit.Tokens)
        {
            tokens = new int[documents.Count][];
            charMaps = new Lazy<TokenCharMap>[documents.Count];
        }
        long sum = 0;
        for (int i = 0; i < documents.Count; i++)
        {
            var d = documents[i] ?? throw new InvalidRequestException($"document {i} is null.");
            if (tokens != null)
            {
                var t = tokenizer!.Encode(d.Text);
                tokens[i] = t;
                charMaps![i] = new Lazy<TokenCharMap>(() => new TokenCharMap(t, d.Text, tokenizer));
                sum += t.Length;
            }
            else sum += d.Text.Length;
            cumulative[i] = sum;
        }
    }

    public Document DocumentAt(int index) => documents[index];

    /// <summary>Size of document <paramref name="index"/> in the chunk unit.</summary>
    public long SizeOf(int index) => cumulative[index] - (index == 0 ? 0 : cumulative[index - 1]);

    /// <summary>The token ids of document <paramref name="index"/> (cutting by tokens only).</summary>
    public ReadOnlySpan<int> TokensOf(int index) => tokens is null
        ? throw new InvalidOperationException("this chunker cuts by characters; it has no token ids.")
        : tokens[index];

    /// <summary>A document index drawn with probability proportional to its size; empty documents are never drawn.</summary>
    public int PickDocument(DeterministicRng rng)
    {
        if (TotalSize == 0)
            throw new InvalidRequestException(documents.Count == 0
                ? "there are no documents to chunk."
                : $"all {documents.Count} documents are empty; nothing to chunk.");
        long u = rng.NextInt64(TotalSize);
        // First i with cumulative[i] > u.
        int lo = 0, hi = cumulative.Length - 1;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (cumulative[mid] > u) hi = mid; else lo = mid + 1;
        }
        return lo;
    }

    /// <summary>A random window of document <paramref name="documentIndex"/>: size uniform in [MinSize, min(MaxSize, size)], start uniform.</summary>
    public Chunk Window(int documentIndex, DeterministicRng rng)
    {
        int n = (int)SizeOf(documentIndex);
        if (n <= Options.MinSize) return Slice(documentIndex, 0, n);
        int len = rng.NextInt(Options.MinSize, Math.Min(Options.MaxSize, n));
        int start = rng.NextInt(0, n - len);
        return Slice(documentIndex, start, start + len);
    }

    /// <summary>Chunk number <paramref name="index"/> of a run seeded with <paramref name="seed"/>.</summary>
    public Chunk SampleAt(ulong seed, long index)
    {
        var rng = DeterministicRng.ForIndex(seed, index, ChunkStream);
        return Window(PickDocument(rng), rng);
    }

    /// <summary>Chunks <paramref name="firstIndex"/> .. <paramref name="firstIndex"/> + <paramref name="count"/> - 1.</summary>
    public IEnumerable<Chunk> Sample(ulong seed, long count, long firstIndex = 0)
    {
        for (long i = 0; i < count; i++) yield return SampleAt(seed, firstIndex + i);
    }

    /// <summary>Document <paramref name="documentIndex"/> cut into consecutive chunks of MaxSize (the last may be shorter).</summary>
    public IEnumerable<Chunk> Tiles(int documentIndex)
    {
        int n = (int)SizeOf(documentIndex);
        for (int s = 0; s < n; s += Options.MaxSize) yield return Slice(documentIndex, s, Math.Min(n, s + Options.MaxSize));
    }

    /// <summary>
    /// The chunk [<paramref name="start"/>, <paramref name="end"/>) of a document, in the chunk unit.
    /// Character windows are widened by one where they would split a surrogate pair.
    /// </summary>
    public Chunk Slice(int documentIndex, int start, int end)
    {
        var doc = documents[documentIndex];
        int n = (int)SizeOf(documentIndex);
        if (start < 0 || end < start || end > n)
            throw new ArgumentOutOfRangeException(nameof(end), $"window [{start},{end}) is outside document '{doc.Id}' of size {n}.");
        if (tokens is null)
        {
            string text = doc.Text;
            if (start > 0 && start < text.Length && char.IsLowSurrogate(text[start]) && char.IsHighSurrogate(text[start - 1])) start--;
            if (end > 0 && end < text.Length && char.IsLowSurrogate(text[end]) && char.IsHighSurrogate(text[end - 1])) end++;
            return new Chunk(new ChunkLocation(doc.Id, -1, -1, start, end), text[start..end], null);
        }
        var window = tokens[documentIndex].AsSpan(start, end - start);
        var map = charMaps![documentIndex].Value;
        int cs = map.CharOffset(start), ce = Math.Max(cs, map.CharOffset(end));
        return new Chunk(new ChunkLocation(doc.Id, start, end, cs, ce), tokenizer!.Decode(window), window.ToArray());
    }
}

/// <summary>Token index to char offset for one document (see <see cref="Chunker"/> for the definition).</summary>
sealed class TokenCharMap
{
    const int Block = 256;
    readonly int[] tokens;
    readonly string text;
    readonly ITokenizer tokenizer;
    readonly int[]? checkpoints; // char offset of token b*Block; null when decoding blocks does not rebuild the text

    public TokenCharMap(int[] tokens, string text, ITokenizer tokenizer)
    {
        this.tokens = tokens; this.text = text; this.tokenizer = tokenizer;
        var cp = new int[tokens.Length / Block + 1];
        int off = 0;
        for (int b = 0; b < cp.Length; b++)
        {
            cp[b] = off;
            int s = b * Block, e = Math.Min(tokens.Length, s + Block);
            string piece = tokenizer.Decode(tokens.AsSpan(s, e - s));
            if (!text.AsSpan(off).StartsWith(piece, StringComparison.Ordinal)) return;
            off += piece.Length;
        }
        if (off == text.Length) checkpoints = cp;
    }

    /// <summary>True when offsets come from verified checkpoints (the tokenizer rebuilds the text exactly).</summary>
    public bool Exact => checkpoints != null;

    public int CharOffset(int tokenIndex)
    {
        if (checkpoints != null)
        {
            int b = tokenIndex / Block;
            int s = b * Block;
            string piece = tokenizer.Decode(tokens.AsSpan(s, tokenIndex - s));
            if (text.AsSpan(checkpoints[b]).StartsWith(piece, StringComparison.Ordinal)) return checkpoints[b] + piece.Length;
        }
        return Math.Min(text.Length, tokenizer.Decode(tokens.AsSpan(0, tokenIndex)).Length);
    }
}
