namespace Cas.Engine.Tokenizers;

/// <summary>GPT-2's reversible byte-to-character table used by ByteLevel pre-tokenizers and decoders.</summary>
internal static class ByteLevelAlphabet
{
    /// <summary>ByteToChar[b] is the printable character standing for byte b.</summary>
    public static readonly char[] ByteToChar = Build();

    /// <summary>CharToByte[c] for c &lt; 512 is the byte c stands for, or -1.</summary>
    public static readonly short[] CharToByte = BuildReverse();

    static char[] Build()
    {
        var map = new char[256];
        var taken = new bool[256];
        void Direct(int from, int to) { for (int b = from; b <= to; b++) { map[b] = (char)b; taken[b] = true; } }
        Direct('!', '~');
        Direct(0xA1, 0xAC);
        Direct(0xAE, 0xFF);
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!taken[b]) map[b] = (char)(256 + n++);
        return map;
    }

    static short[] BuildReverse()
    {
        var rev = new short[512];
        Array.Fill(rev, (short)-1);
        for (int b = 0; b < 256; b++) rev[ByteToChar[b]] = (short)b;
        return rev;
    }

    /// <summary>The byte-level form of a piece of text: its UTF-8 bytes, each as its table character.</summary>
    public static string Encode(ReadOnlySpan<char> text)
    {
        int max = System.Text.Encoding.UTF8.GetMaxByteCount(text.Length);
        Span<byte> small = stackalloc byte[256];
        byte[]? rented = null;
        Span<byte> bytes = max <= small.Length ? small : (rented = System.Buffers.ArrayPool<byte>.Shared.Rent(max));
        int n = System.Text.Encoding.UTF8.GetBytes(text, bytes);
        Span<char> chars = n <= 256 ? stackalloc char[n] : new char[n];
        for (int i = 0; i < n; i++) chars[i] = ByteToChar[bytes[i]];
        var s = new string(chars);
        if (rented != null) System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        return s;
    }
}
