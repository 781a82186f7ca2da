using System.Text;

namespace Cas.SelfStudy.Tests;

public class Crc32Tests
{
    static uint Bitwise(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in data)
        {
            c ^= b;
            for (int i = 0; i < 8; i++) c = (c & 1) != 0 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        }
        return ~c;
    }

    [Fact]
    public void Matches_the_standard_check_values()
    {
        Assert.Equal(0xCBF43926u, Crc32.Compute(Encoding.ASCII.GetBytes("123456789")));
        Assert.Equal(0u, Crc32.Compute([]));
        Assert.Equal(0x414FA339u, Crc32.Compute(Encoding.ASCII.GetBytes("The quick brown fox jumps over the lazy dog")));
    }

    [Fact]
    public void Slicing_by_8_agrees_with_the_bitwise_definition_and_appends()
    {
        var rng = new DeterministicRng(11);
        for (int len = 0; len < 200; len++)
        {
            var data = new byte[len];
            for (int i = 0; i < len; i++) data[i] = (byte)rng.NextInt(256);
            uint want = Bitwise(data);
            Assert.Equal(want, Crc32.Compute(data));
            int split = len == 0 ? 0 : rng.NextInt(len + 1);
            Assert.Equal(want, Crc32.Append(Crc32.Compute(data.AsSpan(0, split)), data.AsSpan(split)));
        }
    }
}
