namespace Cas.Data;

/// <summary>
/// CRC-32 as used by zip, gzip and PNG (IEEE 802.3: reflected polynomial 0xEDB88320, initial value
/// and final xor 0xFFFFFFFF). Check value: CRC-32 of the ASCII bytes "123456789" is 0xCBF43926.
/// Written here because System.IO.Hashing is not guaranteed to be available; slicing-by-8 keeps it
/// at several hundred MB/s, which is far faster than the disk it guards.
/// </summary>
public static class Crc32
{
    static readonly uint[] Table = BuildTable();

    static uint[] BuildTable()
    {
        // Table[k * 256 + b]: CRC of byte b followed by k zero bytes (for slicing-by-8).
        var t = new uint[8 * 256];
        for (uint b = 0; b < 256; b++)
        {
            uint c = b;
            for (int i = 0; i < 8; i++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[b] = c;
        }
        for (int k = 1; k < 8; k++)
            for (int b = 0; b < 256; b++)
            {
                uint prev = t[(k - 1) * 256 + b];
                t[k * 256 + b] = (prev >> 8) ^ t[prev & 0xFF];
            }
        return t;
    }

    /// <summary>The CRC-32 of <paramref name="data"/>.</summary>
    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>
    /// Continues a CRC: <c>Append(Compute(a), b) == Compute(a ++ b)</c>. Start from 0 for a fresh CRC.
    /// </summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        var t = Table;
        uint c = ~crc;
        int i = 0;
        while (data.Length - i >= 8)
        {
            uint lo = c ^ (uint)(data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24);
            uint hi = (uint)(data[i + 4] | data[i + 5] << 8 | data[i + 6] << 16 | data[i + 7] << 24);
            c = t[7 * 256 + (lo & 0xFF)] ^ t[6 * 256 + ((lo >> 8) & 0xFF)]
              ^ t[5 * 256 + ((lo >> 16) & 0xFF)] ^ t[4 * 256 + (lo >> 24)]
              ^ t[3 * 256 + (hi & 0xFF)] ^ t[2 * 256 + ((hi >> 8) & 0xFF)]
              ^ t[1 * 256 + ((hi >> 16) & 0xFF)] ^ t[hi >> 24];
            i += 8;
        }
        for (; i < data.Length; i++) c = t[(c ^ data[i]) & 0xFF] ^ (c >> 8);
        return ~c;
    }
}
