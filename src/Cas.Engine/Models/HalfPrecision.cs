using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Cas.Engine.Models;

/// <summary>
/// Conversions between fp32 and the 16-bit float formats found in weight files:
/// bfloat16 (the top half of an fp32) and IEEE fp16 (<see cref="Half"/>). Values are passed as raw
/// 16-bit patterns (ushort). Widening is exact; narrowing rounds to nearest, ties to even.
/// </summary>
public static class HalfPrecision
{
    public static float BF16ToFloat(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Round to nearest even, as torch's <c>.to(torch.bfloat16)</c>; NaN stays a (quiet) NaN.</summary>
    public static ushort FloatToBF16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((u >> 16) | 0x0040);
        u += 0x7FFFu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    public static float F16ToFloat(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    public static ushort FloatToF16(float value) => BitConverter.HalfToUInt16Bits((Half)value);

    /// <summary>Widens bf16 bit patterns to fp32 (exact), vectorised.</summary>
    public static void BF16ToFloat(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination is shorter than source", nameof(destination));
        var dst = MemoryMarshal.Cast<float, uint>(destination);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            int step = Vector<ushort>.Count, half = Vector<uint>.Count;
            for (; i <= source.Length - step; i += step)
            {
                Vector.Widen(new Vector<ushort>(source.Slice(i)), out Vector<uint> lo, out Vector<uint> hi);
                Vector.ShiftLeft(lo, 16).CopyTo(dst.Slice(i));
                Vector.ShiftLeft(hi, 16).CopyTo(dst.Slice(i + half));
            }
        }
        for (; i < source.Length; i++) dst[i] = (uint)source[i] << 16;
    }

    public static void FloatToBF16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination is shorter than source", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = FloatToBF16(source[i]);
    }

    /// <summary>Widens fp16 bit patterns to fp32 (exact), vectorised by TensorPrimitives.</summary>
    public static void F16ToFloat(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination is shorter than source", nameof(destination));
        TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<ushort, Half>(source), destination);
    }

    public static void FloatToF16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination is shorter than source", nameof(destination));
        TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<ushort, Half>(destination));
    }
}
