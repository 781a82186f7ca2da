using System.Text;
using Cas.Engine.Models;
using static Cas.Engine.Tests.Models.ModelTestUtil;

namespace Cas.Engine.Tests.Models;

public class SafeTensorsFileTests
{
    static string Entry(string name, string dtype, string shape, long begin, long end) =>
        $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{begin},{end}]}}";

    static ModelFormatException OpenFails(string path) =>
        Assert.Throws<ModelFormatException>(() => { using var _ = SafeTensorsFile.Open(path); });

    [Fact]
    public void ReadsF32BF16AndF16TensorsAndMetadata()
    {
        using var dir = new TempDir();
        var data = F32Bytes(1f, -2.5f, 3.25f, 1e-30f, 7f, 8f)               // a: F32 [2, 3], bytes 0..24
            .Concat(U16Bytes(0x3F80, 0xC040, 0x0001))                       // b: BF16 [3], bytes 24..30
            .Concat(U16Bytes(0x3555, 0x7BFF)).ToArray();                     // c: F16 [1, 2], bytes 30..34
        string header = "{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"}," +
            Entry("a", "F32", "[2,3]", 0, 24) + "," + Entry("b", "BF16", "[3]", 24, 30) + "," + Entry("c", "F16", "[1,2]", 30, 34) + "}";
        WriteRaw(dir.File("t.safetensors"), header, data);

        using var f = SafeTensorsFile.Open(dir.File("t.safetensors"));
        Assert.Equal(["a", "b", "c"], f.Tensors.Select(t => t.Name));
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal("v", f.Metadata["k"]);
        Assert.Equal([2, 3], f.GetInfo("a").Shape);
        Assert.Equal(SafeTensorDType.BF16, f.GetInfo("b").DType);
        Assert.Equal([1f, -2.5f, 3.25f, 1e-30f, 7f, 8f], f.ReadFloats("a"));
        Assert.Equal([1f, -3f, BitConverter.UInt32BitsToSingle(0x00010000)], f.ReadFloats("b"));
        Assert.Equal([0.333251953125f, 65504f], f.ReadFloats("c"));
        Assert.False(f.Contains("d"));
        using (var other = SafeTensorsFile.Open(dir.File("t.safetensors")))
            Assert.Throws<ArgumentException>(() => f.ReadFloats(other.GetInfo("a")));   // info from another file
        Assert.Contains("'d'", Assert.Throws<ModelFormatException>(() => f.GetInfo("d")).Message);
    }

    [Fact]
    public void LargeBF16TensorIsReadAcrossChunkBoundaries()
    {
        using var dir = new TempDir();
        int n = (1 << 20) + 5; // more than one 1 MiB read chunk of 2-byte values
        var bits = new ushort[n];
        for (int i = 0; i < n; i++) bits[i] = (ushort)(i * 7919);
        WriteRaw(dir.File("big.safetensors"), "{" + Entry("w", "BF16", $"[{n}]", 0, 2L * n) + "}", U16Bytes(bits));
        using var f = SafeTensorsFile.Open(dir.File("big.safetensors"));
        var values = f.ReadFloats("w");
        for (int i = 0; i < n; i++) Assert.Equal((uint)bits[i] << 16, BitConverter.SingleToUInt32Bits(values[i]));
    }

    [Fact]
    public void Bytes_in_memory_are_the_file_bytes_and_read_back_with_the_same_checks()
    {
        using var dir = new TempDir();
        var tensors = new List<(string, int[], ReadOnlyMemory<float>, SafeTensorDType)>
        {
            ("w", [2, 3], new float[] { 1f, -2.5f, 3.25f, 1e-30f, 7f, 8f }, SafeTensorDType.F32),
            ("h", [3], new float[] { 1f, -3f, 0.5f }, SafeTensorDType.BF16),
            ("f", [2], new float[] { 0.333251953125f, 65504f }, SafeTensorDType.F16),
        };
        var meta = new Dictionary<string, string> { ["k"] = "v" };
        SafeTensorsWriter.Write(dir.File("t.safetensors"), tensors, meta);
        byte[] bytes = SafeTensorsWriter.ToBytes(tensors, meta);
        Assert.Equal(File.ReadAllBytes(dir.File("t.safetensors")), bytes);

        using (var m = SafeTensorsFile.FromBytes(bytes, "in-memory"))
        {
            Assert.Equal("v", m.Metadata["k"]);
            Assert.Equal([1f, -2.5f, 3.25f, 1e-30f, 7f, 8f], m.ReadFloats("w"));
            Assert.Equal([1f, -3f, 0.5f], m.ReadFloats("h"));
            Assert.Equal([0.333251953125f, 65504f], m.ReadFloats("f"));
        }
        // The same validation as a file: a cut copy names the tensor that does not fit, with the given name.
        var e = Assert.Throws<ModelFormatException>(() => { using var _ = SafeTensorsFile.FromBytes(bytes.AsMemory(0, bytes.Length - 1), "cut bytes"); });
        Assert.StartsWith("cut bytes:", e.Message);
        Assert.Contains("'f'", e.Message);
    }

    [Fact]
    public void FileShorterThanLengthPrefix()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("x.safetensors"), [1, 2, 3]);
        Assert.Contains("too short", OpenFails(dir.File("x.safetensors")).Message);
    }

    [Fact]
    public void HeaderLengthBeyondFileSize()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("x.safetensors"), "{}", [], declaredHeaderLength: 1000);
        var e = OpenFails(dir.File("x.safetensors"));
        Assert.Contains("header length 1000 exceeds the file size", e.Message);
    }

    [Fact]
    public void HeaderIsNotJson()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("x.safetensors"), "{\"a\": [1, 2", []);
        Assert.Contains("not valid JSON", OpenFails(dir.File("x.safetensors")).Message);
        WriteRaw(dir.File("y.safetensors"), "[1, 2]   ", []);
        Assert.Contains("must be a JSON object", OpenFails(dir.File("y.safetensors")).Message);
    }

    [Fact]
    public void OffsetsOutOfRange()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("x.safetensors"), "{" + Entry("w", "F32", "[4]", 8, 24) + "}", F32Bytes(1, 2, 3, 4));
        var e = OpenFails(dir.File("x.safetensors"));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("beyond the 16 bytes of tensor data", e.Message);
        WriteRaw(dir.File("y.safetensors"), "{" + Entry("w", "F32", "[1]", 8, 4) + "}", F32Bytes(1, 2, 3));
        Assert.Contains("0 <= begin <= end", OpenFails(dir.File("y.safetensors")).Message);
    }

    [Fact]
    public void OverlappingTensors()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("x.safetensors"), "{" + Entry("a", "F32", "[3]", 0, 12) + "," + Entry("b", "F32", "[2]", 8, 16) + "}", F32Bytes(1, 2, 3, 4));
        var e = OpenFails(dir.File("x.safetensors"));
        Assert.Contains("'a'", e.Message);
        Assert.Contains("'b'", e.Message);
        Assert.Contains("overlap", e.Message);
    }

    [Fact]
    public void SizeDisagreesWithShapeAndDType()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("x.safetensors"), "{" + Entry("w", "BF16", "[2,3]", 0, 16) + "}", new byte[16]);
        var e = OpenFails(dir.File("x.safetensors"));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("span 16 bytes but shape [2, 3] of BF16 needs 12 bytes", e.Message);
    }

    [Fact]
    public void TruncatedFile()
    {
        using var dir = new TempDir();
        string header = "{" + Entry("a", "F32", "[2]", 0, 8) + "," + Entry("b", "F32", "[3]", 8, 20) + "}";
        WriteRaw(dir.File("x.safetensors"), header, F32Bytes(1, 2, 3, 4, 5));
        using (var ok = SafeTensorsFile.Open(dir.File("x.safetensors"))) Assert.Equal([3f, 4f, 5f], ok.ReadFloats("b"));

        var bytes = File.ReadAllBytes(dir.File("x.safetensors"));
        File.WriteAllBytes(dir.File("cut.safetensors"), bytes[..^3]);
        var e = OpenFails(dir.File("cut.safetensors"));
        Assert.Contains("'b'", e.Message);
        Assert.Contains("truncated", e.Message);
        Assert.Contains($"file is {bytes.Length - 3} bytes, needs at least {bytes.Length}", e.Message);
    }

    [Fact]
    public void UnsupportedAndUnknownDTypes()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("x.safetensors"), "{" + Entry("ids", "I64", "[2]", 0, 16) + "," + Entry("w", "F32", "[1]", 16, 20) + "}", new byte[20]);
        using (var f = SafeTensorsFile.Open(dir.File("x.safetensors")))
        {
            Assert.Equal([0f], f.ReadFloats("w"));   // other tensors stay readable
            var e = Assert.Throws<ModelFormatException>(() => f.ReadFloats("ids"));
            Assert.Contains("'ids'", e.Message);
            Assert.Contains("I64", e.Message);
        }
        WriteRaw(dir.File("y.safetensors"), "{" + Entry("w", "F99", "[1]", 0, 4) + "}", new byte[4]);
        var u = OpenFails(dir.File("y.safetensors"));
        Assert.Contains("'w'", u.Message);
        Assert.Contains("'F99'", u.Message);
    }

    [Fact]
    public void MalformedEntriesAreNamed()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("a.safetensors"), "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", new byte[4]);
        Assert.Contains("'w': missing array field 'shape'", OpenFails(dir.File("a.safetensors")).Message);
        WriteRaw(dir.File("b.safetensors"), "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", new byte[4]);
        Assert.Contains("non-negative", OpenFails(dir.File("b.safetensors")).Message);
        WriteRaw(dir.File("c.safetensors"), "{\"__metadata__\":{\"n\":3}}", []);
        Assert.Contains("'n' must be a string", OpenFails(dir.File("c.safetensors")).Message);
        WriteRaw(dir.File("d.safetensors"), "{" + Entry("w", "F32", "[1]", 0, 4) + "," + Entry("w", "F32", "[1]", 4, 8) + "}", new byte[8]);
        Assert.Contains("'w' twice", OpenFails(dir.File("d.safetensors")).Message);
    }

    [Fact]
    public void MissingFileNamesThePath()
    {
        using var dir = new TempDir();
        var e = OpenFails(dir.File("nope.safetensors"));
        Assert.Contains(dir.File("nope.safetensors"), e.Message);
    }

    [Fact]
    public void EmptyAndScalarTensors()
    {
        using var dir = new TempDir();
        WriteRaw(dir.File("x.safetensors"), "{" + Entry("e", "F32", "[0,4]", 0, 0) + "," + Entry("s", "F32", "[]", 0, 4) + "}", F32Bytes(42f));
        using var f = SafeTensorsFile.Open(dir.File("x.safetensors"));
        Assert.Empty(f.ReadFloats("e"));
        Assert.Equal([42f], f.ReadFloats("s"));
    }
}

public class SafeTensorsWriterTests
{
    [Fact]
    public void RoundTripsF32ExactlyAndBF16F16Rounded()
    {
        using var dir = new TempDir();
        var rng = new Random(5);
        var a = new float[3 * 70];
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * 10;
        float[] b = [1f, 1.00390625f, -0.1f, 3.4e38f, float.NegativeInfinity];
        float[] c = [0.1f, 65504f, -1e-7f];
        var meta = new Dictionary<string, string> { ["model_fingerprint"] = "abc", ["note"] = "x\"y" };
        string path = dir.File("out.safetensors");
        SafeTensorsWriter.Write(path, [("a", [3, 70], a, SafeTensorDType.F32), ("b", [5], b, SafeTensorDType.BF16), ("c", [1, 3], c, SafeTensorDType.F16)], meta);

        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(["a", "b", "c"], f.Tensors.Select(t => t.Name));
        Assert.Equal(meta, f.Metadata);
        Assert.Equal([3, 70], f.GetInfo("a").Shape);
        Assert.Equal(a, f.ReadFloats("a"));
        Assert.Equal(b.Select(x => HalfPrecision.BF16ToFloat(HalfPrecision.FloatToBF16(x))), f.ReadFloats("b"));
        Assert.Equal([1f, 1f, -0.10009765625f, float.PositiveInfinity, float.NegativeInfinity], f.ReadFloats("b")); // values torch gives
        Assert.Equal(c.Select(x => (float)(Half)x), f.ReadFloats("c"));

        // the data section starts 8-byte aligned and the file holds nothing else
        var info = f.Tensors[^1];
        long dataStart = f.FileLength - info.DataEnd;
        Assert.Equal(0, dataStart % 8);
        Assert.Equal(f.FileLength, dataStart + 3 * 70 * 4 + 5 * 2 + 3 * 2);
        Assert.Equal([Path.GetFileName(path)], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
    }

    [Fact]
    public void OverwritesAtomicallyAndLeavesNoTempFiles()
    {
        using var dir = new TempDir();
        string path = dir.File("c.safetensors");
        SafeTensorsWriter.Write(path, [("x", [2], new float[] { 1, 2 }, SafeTensorDType.F32)], null);
        SafeTensorsWriter.Write(path, [("y", [1], new float[] { 3 }, SafeTensorDType.F32)], null);
        using (var f = SafeTensorsFile.Open(path))
        {
            Assert.Equal(["y"], f.Tensors.Select(t => t.Name));
            Assert.Empty(f.Metadata);
        }

        // a bad request throws before touching the existing file, and leaves no temporary behind
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [("z", [2, 2], new float[3], SafeTensorDType.F32)], null));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [("z", [1], new float[1], SafeTensorDType.F32), ("z", [1], new float[1], SafeTensorDType.F32)], null));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [("z", [1], new float[1], SafeTensorDType.I32)], null));
        using (var f = SafeTensorsFile.Open(path)) Assert.Equal([3f], f.ReadFloats("y"));
        Assert.Single(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void WritesIntoMissingFolderAndSlicesOfLargerBuffers()
    {
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "sub", "w.safetensors");
        var buffer = new float[] { 9, 1, 2, 3, 4, 9 };
        SafeTensorsWriter.Write(path, [("w", [2, 2], buffer.AsMemory(1, 4), SafeTensorDType.F32)]);
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal([1f, 2f, 3f, 4f], f.ReadFloats("w"));
    }
}
