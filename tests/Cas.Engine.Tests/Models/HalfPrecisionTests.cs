using Cas.Engine.Models;

namespace Cas.Engine.Tests.Models;

public class HalfPrecisionTests
{
    static uint Bits(float f) => BitConverter.SingleToUInt32Bits(f);

    [Theory]
    [InlineData((ushort)0x3F80, 1.0f)]
    [InlineData((ushort)0xC000, -2.0f)]
    [InlineData((ushort)0x4049, 3.140625f)]
    [InlineData((ushort)0x3EAB, 0.333984375f)]
    [InlineData((ushort)0x0000, 0.0f)]
    [InlineData((ushort)0x7F80, float.PositiveInfinity)]
    [InlineData((ushort)0xFF80, float.NegativeInfinity)]
    [InlineData((ushort)0x7F7F, 3.3895314e38f)]
    public void BF16KnownValues(ushort bits, float expected)
    {
        Assert.Equal(Bits(expected), Bits(HalfPrecision.BF16ToFloat(bits)));
        Assert.Equal(bits, HalfPrecision.FloatToBF16(expected));
    }

    [Fact]
    public void BF16SubnormalNegativeZeroAndNaN()
    {
        Assert.Equal(0x00010000u, Bits(HalfPrecision.BF16ToFloat(0x0001)));      // smallest subnormal
        Assert.Equal(0x80000000u, Bits(HalfPrecision.BF16ToFloat(0x8000)));      // -0
        Assert.True(float.IsNaN(HalfPrecision.BF16ToFloat(0x7FC0)));
        Assert.True(float.IsNaN(HalfPrecision.BF16ToFloat(HalfPrecision.FloatToBF16(float.NaN))));
        // a signalling-looking NaN whose payload sits in the low half must not round to infinity
        Assert.True(float.IsNaN(HalfPrecision.BF16ToFloat(HalfPrecision.FloatToBF16(BitConverter.UInt32BitsToSingle(0x7F800001)))));
    }

    [Theory]
    [InlineData(0x3F808000u, (ushort)0x3F80)] // exact tie, even neighbour below
    [InlineData(0x3F818000u, (ushort)0x3F82)] // exact tie, even neighbour above
    [InlineData(0x3F808001u, (ushort)0x3F81)] // just above the tie
    [InlineData(0x3F807FFFu, (ushort)0x3F80)] // just below the tie
    [InlineData(0x7F7FFFFFu, (ushort)0x7F80)] // float.MaxValue rounds up to +inf
    [InlineData(0xFF7FFFFFu, (ushort)0xFF80)] // and -MaxValue to -inf
    public void FloatToBF16RoundsToNearestEven(uint floatBits, ushort expected) =>
        Assert.Equal(expected, HalfPrecision.FloatToBF16(BitConverter.UInt32BitsToSingle(floatBits)));

    [Theory]
    [InlineData((ushort)0x3C00, 1.0f)]
    [InlineData((ushort)0xC000, -2.0f)]
    [InlineData((ushort)0x7BFF, 65504f)]
    [InlineData((ushort)0x0001, 5.9604645e-08f)]  // 2^-24, smallest subnormal
    [InlineData((ushort)0x0400, 6.1035156e-05f)]  // 2^-14, smallest normal
    [InlineData((ushort)0x3555, 0.333251953125f)]
    [InlineData((ushort)0x7C00, float.PositiveInfinity)]
    [InlineData((ushort)0xFC00, float.NegativeInfinity)]
    public void F16KnownValues(ushort bits, float expected)
    {
        Assert.Equal(Bits(expected), Bits(HalfPrecision.F16ToFloat(bits)));
        Assert.Equal(bits, HalfPrecision.FloatToF16(expected));
    }

    [Fact]
    public void F16Rounding()
    {
        Assert.Equal((ushort)0x7C00, HalfPrecision.FloatToF16(65520f));             // halfway to 2^16 -> inf
        Assert.Equal((ushort)0x7BFF, HalfPrecision.FloatToF16(65519f));
        Assert.Equal((ushort)0x3C00, HalfPrecision.FloatToF16(1f + MathF.Pow(2, -11))); // tie -> even
        Assert.Equal((ushort)0x3C02, HalfPrecision.FloatToF16(1f + 3 * MathF.Pow(2, -11)));
    }

    /// <summary>The vectorised span converters agree with the scalar ones on every 16-bit pattern.</summary>
    [Fact]
    public void SpanConversionsMatchScalarForAllPatterns()
    {
        // an odd length exercises the scalar tail after the vector loop
        var bits = new ushort[65536 + 3];
        for (int i = 0; i < bits.Length; i++) bits[i] = (ushort)i;
        var bf = new float[bits.Length];
        var f16 = new float[bits.Length];
        HalfPrecision.BF16ToFloat(bits, bf);
        HalfPrecision.F16ToFloat(bits, f16);
        var back = new ushort[bits.Length];
        for (int i = 0; i < bits.Length; i++)
        {
            Assert.Equal((uint)bits[i] << 16, Bits(bf[i]));
            Assert.Equal(Bits(HalfPrecision.F16ToFloat(bits[i])), Bits(f16[i]));
        }
        // narrowing round-trips every non-NaN pattern exactly
        HalfPrecision.FloatToBF16(bf, back);
        for (int i = 0; i < bits.Length; i++)
            if (!float.IsNaN(bf[i])) Assert.Equal(bits[i], back[i]);
        HalfPrecision.FloatToF16(f16, back);
        for (int i = 0; i < bits.Length; i++)
            if (!float.IsNaN(f16[i])) Assert.Equal(bits[i], back[i]);
    }
}
