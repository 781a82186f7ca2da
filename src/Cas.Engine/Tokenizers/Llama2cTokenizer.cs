using System.Buffers.Binary;
using System.Text;

namespace Cas.Engine.Tokenizers;

/// <summary>
/// The SentencePiece-style tokenizer of llama2.c (tokenizer.bin / tok*.bin): int32 max_token_length,
/// then per token float32 score, int32 byte length, bytes. Ids 0 = &lt;unk&gt;, 1 = BOS, 2 = EOS,
/// 3..258 = byte tokens &lt;0x00&gt;..&lt;0xFF&gt;.
/// Encode follows llama2.c's encode(): a dummy-prefix " " token when the text is non-empty, each
/// UTF-8 character looked up whole (unknown ones become byte tokens, id = byte + 3), then repeated
/// merging of the adjacent pair whose concatenation is the vocabulary entry with the best score
/// (leftmost on ties). A heap makes this O(n log n) with the same result as llama2.c's O(n²) loop.
/// </summary>
public sealed class Llama2cTokenizer : ITokenizer
{
    const int ByteOffset = 3;
    readonly string[] _pieces;          // token bytes as Latin-1 strings (one char per byte)
    readonly float[] _scores;
    readonly Dictionary<string, int> _lookup = new(StringComparer.Ordinal);
    readonly int _dummyPrefixId;

    public int MaxTokenLength { get; }
    public int VocabSize => _pieces.Length;
    public int? BosId => 1;
    public int? EosId => 2;
    /// <summary>llama2.c always starts a sequence with BOS.</summary>
    public IReadOnlyList<int> StartTokens { get; } = [1];

    Llama2cTokenizer(int maxTokenLength, string[] pieces, float[] scores)
    {
        MaxTokenLength = maxTokenLength;
        _pieces = pieces;
        _scores = scores;
        for (int i = 0; i < pieces.Length; i++) _lookup.TryAdd(pieces[i], i); // first id wins for duplicates
        _dummyPrefixId = _lookup.TryGetValue(" ", out var sp) ? sp : -1;
    }

    public static Llama2cTokenizer FromFile(string path)
    {
        if (!File.Exists(path)) throw new ModelFormatException($"llama2.c tokenizer file not found at {path}.");
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (IOException e) { throw new ModelFormatException($"cannot read {path}: {e.Message}", e); }
        try { return FromBytes(data); }
        catch (ModelFormatException e) { throw new ModelFormatException($"{path}: {e.Message}", e); }
    }

    /// <summary>Parses the binary format; the vocabulary size is however many complete records the data holds.</summary>
    public static Llama2cTokenizer FromBytes(ReadOnlySpan<byte> data)
    {
        if (data.Length < 4) throw new ModelFormatException($"llama2.c tokenizer is truncated: {data.Length} bytes, expected at least the 4-byte max_token_length header.");
        int maxLen = BinaryPrimitives.ReadInt32LittleEndian(data);
        if (maxLen <= 0 || maxLen > 1 << 16)
            throw new ModelFormatException($"llama2.c tokenizer header max_token_length = {maxLen} is implausible; is this a tok*.bin file?");
        var pieces = new List<string>();
        var scores = new List<float>();
        int o = 4;
        while (o < data.Length)
        {
            int index = pieces.Count;
            if (data.Length - o < 8)
                throw new ModelFormatException($"llama2.c tokenizer is truncated inside the record of token {index} (offset {o}).");
            float score = BinaryPrimitives.ReadSingleLittleEndian(data[o..]);
            int len = BinaryPrimitives.ReadInt32LittleEndian(data[(o + 4)..]);
            o += 8;
            if (len < 0 || len > maxLen)
                throw new ModelFormatException($"llama2.c tokenizer token {index} has length {len}, outside 0..max_token_length ({maxLen}).");
            if (data.Length - o < len)
                throw new ModelFormatException($"llama2.c tokenizer is truncated inside the bytes of token {index} (needs {len}, {data.Length - o} left).");
            pieces.Add(Encoding.Latin1.GetString(data.Slice(o, len)));
            scores.Add(score);
            o += len;
        }
        if (pieces.Count < ByteOffset + 256)
            throw new ModelFormatException($"llama2.c tokenizer has {pieces.Count} tokens; at least 259 (unk, BOS, EOS, 256 byte tokens) are required.");
        return new Llama2cTokenizer(maxLen, pieces.ToArray(), scores.ToArray());
    }

    public int? SpecialTokenId(string content) => content switch
    {
        "<unk>" => 0,
        "<s>" => 1,
        "</s>" => 2,
        _ => null,
    };

    /// <summary>The token's bytes (for the byte tokens, the text "&lt;0xNN&gt;" as stored).</summary>
    public byte[] PieceBytes(int id) => Encoding.Latin1.GetBytes(_pieces[id]);

    public float Score(int id) => _scores[id];

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.Length == 0) return Array.Empty<int>();
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        var tokens = new List<int>(utf8.Length + 1);
        if (_dummyPrefixId >= 0) tokens.Add(_dummyPrefixId);

        // One UTF-8 character at a time (at most 4 bytes), as llama2.c's loop groups continuation bytes.
        for (int i = 0; i < utf8.Length;)
        {
            int len = 1;
            while (i + len < utf8.Length && (utf8[i + len] & 0xC0) == 0x80 && len < 4) len++;
            string key = Encoding.Latin1.GetString(utf8, i, len);
            if (_lookup.TryGetValue(key, out int id)) tokens.Add(id);
            else for (int k = 0; k < len; k++) tokens.Add(utf8[i + k] + ByteOffset);
            i += len;
        }
        return Merge(tokens);
    }

    int[] Merge(List<int> tokens)
    {
        int n = tokens.Count;
        var id = tokens.ToArray();
        var next = new int[n];
        var prev = new int[n];
        var alive = new bool[n];
        for (int k = 0; k < n; k++) { next[k] = k + 1 < n ? k + 1 : -1; prev[k] = k - 1; alive[k] = true; }

        // Max score first, then leftmost: priority = (-score, position). Entries are re-validated on pop.
        var heap = new PriorityQueue<(int Pos, int Left, int Right, int Merged), (float NegScore, int Pos)>(
            Comparer<(float NegScore, int Pos)>.Create((a, b) => a.NegScore != b.NegScore ? a.NegScore.CompareTo(b.NegScore) : a.Pos.CompareTo(b.Pos)));
        void Push(int pos)
        {
            int r = next[pos];
            if (r < 0) return;
            if (_lookup.TryGetValue(_pieces[id[pos]] + _pieces[id[r]], out int m) && _scores[m] > -1e10f)
                heap.Enqueue((pos, id[pos], id[r], m), (-_scores[m], pos));
        }
        for (int k = 0; k + 1 < n; k++) Push(k);
        while (heap.TryDequeue(out var top, out _))
        {
            int p = top.Pos;
            if (!alive[p] || id[p] != top.Left || next[p] < 0 || id[next[p]] != top.Right) continue;
            int r = next[p];
            id[p] = top.Merged;
            alive[r] = false;
            next[p] = next[r];
            if (next[p] >= 0) prev[next[p]] = p;
            if (prev[p] >= 0) Push(prev[p]);
            Push(p);
        }
        var result = new List<int>(n);
        for (int k = 0; k >= 0; k = next[k]) result.Add(id[k]);
        return result.ToArray();
    }

    /// <summary>
    /// Concatenates the pieces' bytes and decodes UTF-8 (U+FFFD for ill-formed bytes). BOS and EOS
    /// produce no text; the leading space of the first piece of the sequence, and of a piece following
    /// BOS, is dropped (the dummy prefix), so Decode(Encode(x)) == x.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        var bytes = new List<byte>(ids.Length * 4);
        int prevToken = -1;
        for (int k = 0; k < ids.Length; k++)
        {
            int t = ids[k];
            if (t < 0 || t >= _pieces.Length)
                throw new InvalidRequestException($"token id {t} is outside the llama2.c vocabulary (0..{_pieces.Length - 1}).");
            if (t == 1 || t == 2) { prevToken = t; continue; }
            string piece = _pieces[t];
            if (IsByteToken(piece, out byte b)) bytes.Add(b);
            else
            {
                int start = (k == 0 || prevToken == 1) && piece.Length > 0 && piece[0] == ' ' ? 1 : 0;
                for (int c = start; c < piece.Length; c++) bytes.Add((byte)piece[c]);
            }
            prevToken = t;
        }
        return new UTF8Encoding(false, false).GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
    }

    static bool IsByteToken(string piece, out byte value)
    {
        value = 0;
        if (piece.Length != 6 || !piece.StartsWith("<0x", StringComparison.Ordinal) || piece[5] != '>') return false;
        if (!char.IsAsciiHexDigit(piece[3]) || !char.IsAsciiHexDigit(piece[4])) return false;
        value = Convert.ToByte(piece.Substring(3, 2), 16);
        return true;
    }
}
