using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Cas.Data;

/// <summary>A malformed payload (it passed its CRC, so the writer or the version is at fault).</summary>
sealed class PayloadFormatException(string message) : Exception(message);

/// <summary>Growable little-endian byte buffer used to build headers and payloads.</summary>
sealed class ByteBuffer
{
    byte[] data = new byte[4096];
    public int Length { get; private set; }

    public ReadOnlySpan<byte> Span => data.AsSpan(0, Length);
    public byte[] Array => data;
    public void Clear() => Length = 0;

    public Span<byte> Grab(int n)
    {
        if (data.Length - Length < n)
        {
            long want = Math.Max((long)data.Length * 2, (long)Length + n);
            if (want > int.MaxValue - 64) want = (long)Length + n;
            if (want > int.MaxValue - 64) throw new DatasetException("record is too large for the dataset format (over 2 GiB).");
            System.Array.Resize(ref data, (int)want);
        }
        var s = data.AsSpan(Length, n);
        Length += n;
        return s;
    }

    public void U8(byte v) => Grab(1)[0] = v;
    public void U32(uint v) => BinaryPrimitives.WriteUInt32LittleEndian(Grab(4), v);
    public void U64(ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(Grab(8), v);
    public void PatchU32(int at, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(at, 4), v);

    /// <summary>Unsigned LEB128.</summary>
    public void VarU(ulong v)
    {
        while (v >= 0x80) { U8((byte)(v | 0x80)); v >>= 7; }
        U8((byte)v);
    }

    /// <summary>Signed value as zigzag LEB128 (small magnitudes, either sign, stay short).</summary>
    public void VarS(long v) => VarU((ulong)((v << 1) ^ (v >> 63)));

    public void Str(string s)
    {
        int n = Encoding.UTF8.GetByteCount(s);
        VarU((ulong)n);
        Encoding.UTF8.GetBytes(s, Grab(n));
    }

    public void Bytes(ReadOnlySpan<byte> b) => b.CopyTo(Grab(b.Length));

    public void Int32s(ReadOnlySpan<int> v)
    {
        var dst = Grab(checked(v.Length * 4));
        if (BitConverter.IsLittleEndian) MemoryMarshal.AsBytes(v).CopyTo(dst);
        else for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(dst[(i * 4)..], v[i]);
    }

    public void Floats(ReadOnlySpan<float> v)
    {
        var dst = Grab(checked(v.Length * 4));
        if (BitConverter.IsLittleEndian) MemoryMarshal.AsBytes(v).CopyTo(dst);
        else for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(dst[(i * 4)..], v[i]);
    }
}

/// <summary>Bounds-checked little-endian reader over a payload; every overrun is a PayloadFormatException.</summary>
ref struct SpanReader(ReadOnlySpan<byte> data)
{
    readonly ReadOnlySpan<byte> data = data;
    int pos;

    public readonly int Remaining => data.Length - pos;

    ReadOnlySpan<byte> Take(int n, string what)
    {
        if (n < 0 || n > Remaining)
            throw new PayloadFormatException($"{what} needs {n} bytes but only {Remaining} remain at payload byte {pos}");
        var s = data.Slice(pos, n);
        pos += n;
        return s;
    }

    public byte U8(string what) => Take(1, what)[0];
    public uint U32(string what) => BinaryPrimitives.ReadUInt32LittleEndian(Take(4, what));
    public ulong U64(string what) => BinaryPrimitives.ReadUInt64LittleEndian(Take(8, what));

    public ulong VarU(string what)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte b = U8(what);
            v |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return v;
        }
        throw new PayloadFormatException($"{what}: variable-length integer longer than 10 bytes at payload byte {pos}");
    }

    public long VarS(string what)
    {
        ulong u = VarU(what);
        return (long)(u >> 1) ^ -(long)(u & 1);
    }

    /// <summary>A length/count that must fit in an int and in the remaining bytes at <paramref name="bytesPerItem"/> each.</summary>
    public int Count(string what, int bytesPerItem)
    {
        ulong n = VarU(what);
        if (n > int.MaxValue || (long)n * bytesPerItem > Remaining)
            throw new PayloadFormatException($"{what} = {n} does not fit in the {Remaining} remaining payload bytes");
        return (int)n;
    }

    public int Int32Checked(string what)
    {
        long v = VarS(what);
        if (v < int.MinValue || v > int.MaxValue) throw new PayloadFormatException($"{what} = {v} is out of range");
        return (int)v;
    }

    public string Str(string what)
    {
        int n = Count(what + " length", 1);
        try { return StrictUtf8.GetString(Take(n, what)); }
        catch (DecoderFallbackException) { throw new PayloadFormatException($"{what} is not valid UTF-8"); }
    }

    static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

    public int[] Int32s(int n, string what)
    {
        var src = Take(checked(n * 4), what);
        var a = new int[n];
        if (BitConverter.IsLittleEndian) src.CopyTo(MemoryMarshal.AsBytes(a.AsSpan()));
        else for (int i = 0; i < n; i++) a[i] = BinaryPrimitives.ReadInt32LittleEndian(src[(i * 4)..]);
        return a;
    }

    public float[] Floats(int n, string what)
    {
        var src = Take(checked(n * 4), what);
        var a = new float[n];
        if (BitConverter.IsLittleEndian) src.CopyTo(MemoryMarshal.AsBytes(a.AsSpan()));
        else for (int i = 0; i < n; i++) a[i] = BinaryPrimitives.ReadSingleLittleEndian(src[(i * 4)..]);
        return a;
    }

    public ReadOnlySpan<byte> Bytes(int n, string what) => Take(n, what);
}

/// <summary>Encodes and decodes one record payload (format version 1; see DATASET_FORMAT.md).</summary>
static class RecordCodec
{
    /// <summary>Checks everything the format and the trainer rely on; throws InvalidRequestException naming the problem.</summary>
    public static void Validate(Conversation c)
    {
        static Exception Bad(ulong id, string what) =>
            new Cas.Engine.InvalidRequestException($"conversation {id:x16}: {what}");
        ArgumentNullException.ThrowIfNull(c);
        if (c.Chunk is null) throw Bad(c.Id, "Chunk is null.");
        if (c.Chunk.DocumentId is null) throw Bad(c.Id, "Chunk.DocumentId is null.");
        if (c.ChunkText is null) throw Bad(c.Id, "ChunkText is null (use \"\" to leave it out).");
        if (c.SeedPrompt is null) throw Bad(c.Id, "SeedPrompt is null (use \"\" when there was none).");
        if (!Enum.IsDefined(c.SeedKind)) throw Bad(c.Id, $"unknown seed kind {(int)c.SeedKind}.");
        var loc = c.Chunk;
        if (loc.CharStart < 0 || loc.CharEnd < loc.CharStart)
            throw Bad(c.Id, $"chunk char range [{loc.CharStart},{loc.CharEnd}) is invalid.");
        if ((loc.TokenStart < 0) != (loc.TokenEnd < 0) || (loc.TokenStart >= 0 && loc.TokenEnd < loc.TokenStart) || loc.TokenStart < -1 || loc.TokenEnd < -1)
            throw Bad(c.Id, $"chunk token range [{loc.TokenStart},{loc.TokenEnd}) is invalid (use -1,-1 when unknown).");
        if (c.Messages is null) throw Bad(c.Id, "Messages is null.");
        for (int m = 0; m < c.Messages.Count; m++)
        {
            var msg = c.Messages[m] ?? throw Bad(c.Id, $"message {m} is null.");
            if (!Enum.IsDefined(msg.Role)) throw Bad(c.Id, $"message {m} has unknown role {(int)msg.Role}.");
            if (msg.Text is null) throw Bad(c.Id, $"message {m} text is null.");
            if (msg.Tokens is null) throw Bad(c.Id, $"message {m} tokens are null.");
            foreach (var t in msg.Tokens)
                if (t < 0) throw Bad(c.Id, $"message {m} has negative token id {t}.");
            var tg = msg.Targets;
            if (tg is null) continue;
            if (tg.Length != msg.Tokens.Length)
                throw Bad(c.Id, $"message {m} has {msg.Tokens.Length} tokens but top-k targets for {tg.Length} positions; they must match.");
            for (int p = 0; p < tg.Length; p++)
            {
                if (tg.K(p) > SparseTargets.MaxK)
                    throw Bad(c.Id, $"message {m} position {p} keeps {tg.K(p)} teacher entries; the dataset format stores at most {SparseTargets.MaxK} per position.");
                var ids = tg.IdsAt(p);
                for (int i = 1; i < ids.Length; i++)
                    for (int j = 0; j < i; j++)
                        if (ids[i] == ids[j]) throw Bad(c.Id, $"message {m} position {p} lists token {ids[i]} twice in its top-k.");
            }
        }
    }

    public static void Encode(Conversation c, ByteBuffer b)
    {
        b.U64(c.Id);
        b.Str(c.Chunk.DocumentId);
        b.VarS(c.Chunk.TokenStart);
        b.VarS(c.Chunk.TokenEnd);
        b.VarS(c.Chunk.CharStart);
        b.VarS(c.Chunk.CharEnd);
        b.Str(c.ChunkText);
        b.U8((byte)c.SeedKind);
        b.Str(c.SeedPrompt);
        b.VarU((ulong)c.Messages.Count);
        foreach (var m in c.Messages)
        {
            b.U8((byte)m.Role);
            b.Str(m.Text);
            b.VarU((ulong)m.Tokens.Length);
            b.Int32s(m.Tokens);
            if (m.Targets is null) { b.U8(0); continue; }
            var t = m.Targets;
            b.U8(1);
            b.VarU((ulong)t.Length);
            var ks = b.Grab(t.Length);
            for (int p = 0; p < t.Length; p++) ks[p] = (byte)t.K(p);
            b.Int32s(t.Ids);
            b.Floats(t.LogProbs);
        }
    }

    /// <summary>The id of a payload without decoding the rest (its first 8 bytes).</summary>
    public static ulong PeekId(ReadOnlySpan<byte> payload)
    {
        if (payload.Length < 8) throw new PayloadFormatException($"payload of {payload.Length} bytes is too short to hold an id");
        return BinaryPrimitives.ReadUInt64LittleEndian(payload);
    }

    public static Conversation Decode(ReadOnlySpan<byte> payload)
    {
        var r = new SpanReader(payload);
        ulong id = r.U64("id");
        string docId = r.Str("document id");
        int tokStart = r.Int32Checked("token start"), tokEnd = r.Int32Checked("token end");
        int charStart = r.Int32Checked("char start"), charEnd = r.Int32Checked("char end");
        string chunkText = r.Str("chunk text");
        byte kind = r.U8("seed kind");
        if (!Enum.IsDefined((SeedPromptKind)kind)) throw new PayloadFormatException($"unknown seed kind {kind}");
        string seedPrompt = r.Str("seed prompt");
        int nMsg = r.Count("message count", 4);
        var messages = new ConversationMessage[nMsg];
        for (int m = 0; m < nMsg; m++)
        {
            byte role = r.U8("role");
            if (!Enum.IsDefined((MessageRole)role)) throw new PayloadFormatException($"message {m}: unknown role {role}");
            string text = r.Str("message text");
            int nTok = r.Count("token count", 4);
            int[] tokens = r.Int32s(nTok, "tokens");
            byte has = r.U8("targets flag");
            SparseTargets? targets = null;
            if (has == 1)
            {
                int positions = r.Count("target positions", 1);
                if (positions != nTok) throw new PayloadFormatException($"message {m}: {positions} target positions for {nTok} tokens");
                var ks = r.Bytes(positions, "k per position");
                var off = new int[positions + 1];
                int total = 0;
                for (int p = 0; p < positions; p++) { total += ks[p]; off[p + 1] = total; }
                if ((long)total * 8 > r.Remaining)
                    throw new PayloadFormatException($"message {m}: {total} target entries do not fit in the {r.Remaining} remaining bytes");
                var ids = r.Int32s(total, "target ids");
                var lps = r.Floats(total, "target log-probs");
                try { targets = new SparseTargets(off, ids, lps); }
                catch (Cas.Engine.InvalidRequestException e) { throw new PayloadFormatException($"message {m}: {e.Message}"); }
            }
            else if (has != 0) throw new PayloadFormatException($"message {m}: targets flag is {has}, expected 0 or 1");
            foreach (var t in tokens)
                if (t < 0) throw new PayloadFormatException($"message {m}: negative token id {t}");
            messages[m] = new ConversationMessage((MessageRole)role, text, tokens, targets);
        }
        if (r.Remaining != 0) throw new PayloadFormatException($"{r.Remaining} unexpected bytes after the last message");
        return new Conversation(id, new ChunkLocation(docId, tokStart, tokEnd, charStart, charEnd), chunkText,
            (SeedPromptKind)kind, seedPrompt, messages);
    }

    /// <summary>Header metadata: count, then (key, value) strings, keys in ordinal order.</summary>
    public static void EncodeMetadata(IReadOnlyDictionary<string, string> meta, ByteBuffer b)
    {
        var keys = meta.Keys.ToArray();
        Array.Sort(keys, StringComparer.Ordinal);
        b.VarU((ulong)keys.Length);
        foreach (var k in keys)
        {
            b.Str(k);
            b.Str(meta[k] ?? throw new Cas.Engine.InvalidRequestException($"dataset metadata value for '{k}' is null."));
        }
    }

    public static Dictionary<string, string> DecodeMetadata(ReadOnlySpan<byte> data)
    {
        var r = new SpanReader(data);
        int n = r.Count("metadata entry count", 2);
        var d = new Dictionary<string, string>(n, StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            string k = r.Str("metadata key"), v = r.Str("metadata value");
            if (!d.TryAdd(k, v)) throw new PayloadFormatException($"metadata key '{k}' appears twice");
        }
        if (r.Remaining != 0) throw new PayloadFormatException($"{r.Remaining} unexpected bytes after the metadata");
        return d;
    }
}
