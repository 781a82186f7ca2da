using System.Runtime.InteropServices;

namespace Cas.Tests.Common;

/// <summary>
/// The reference files under tests/goldens (written by the PyTorch scripts in tests/reference): raw little-endian
/// arrays with no header, read the same way by every test that compares against them.
/// </summary>
public static class Goldens
{
    /// <summary>tests/goldens/<paramref name="parts"/>….</summary>
    public static string Path(params string[] parts) =>
        System.IO.Path.Combine([TestPaths.RepoRoot, "tests", "goldens", .. parts]);

    /// <summary>A raw float32 file (little-endian, as the scripts write and this CPU reads).</summary>
    public static float[] ReadF32(string path) => MemoryMarshal.Cast<byte, float>(Read(path, 4)).ToArray();

    /// <summary>A raw float64 file.</summary>
    public static double[] ReadF64(string path) => MemoryMarshal.Cast<byte, double>(Read(path, 8)).ToArray();

    static byte[] Read(string path, int size)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length % size != 0) throw new InvalidDataException($"{path}: {bytes.Length} bytes is not a whole number of {size}-byte values; regenerate the goldens.");
        return bytes;
    }
}
