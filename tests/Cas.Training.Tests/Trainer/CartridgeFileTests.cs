using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;

namespace Cas.Training.Tests.Trainer;

public class CartridgeFileTests
{
    static Cartridge Sample(Model model, int p = 6)
    {
        var prefix = CartridgeInit.Random(model, new CharTokenizer(), p, seed: 9);
        var c = Cartridge.ForModel(model, prefix, CartridgeInitKind.Random, frozenSlots: 2);
        c.StepsTrained = 123;
        c.Objective = "distill";
        c.InitialLoss = 3.25;
        c.FinalLoss = 1.0 / 3;
        c.HeldOutLoss = 2.5;
        c.SourceDocuments = ["doc-a.txt", "ünïcode \"quoted\""];
        c.CreatedUtc = new DateTime(2025, 3, 4, 5, 6, 7, DateTimeKind.Utc);
        c.Settings = new Dictionary<string, string> { ["lr"] = "0.02", ["batch"] = "4" };
        return c;
    }

    [Fact]
    public void F32RoundTripKeepsEveryValueAndField()
    {
        var model = TrainerFixtures.Model();
        var c = Sample(model);
        var dir = TrainerFixtures.TempDir();
        var path = Path.Combine(dir, "c.safetensors");
        c.Save(path);
        var r = Cartridge.Load(path, model);
        for (int l = 0; l < c.Prefix.Layers; l++)
        {
            Assert.Equal(c.Prefix.Keys[l], r.Prefix.Keys[l]);
            Assert.Equal(c.Prefix.Values[l], r.Prefix.Values[l]);
        }
        Assert.Equal(c.ModelFingerprint, r.ModelFingerprint);
        Assert.Equal(ModelFingerprint.Compute(model), r.ModelFingerprint);
        Assert.Equal(model.Source, r.ModelSource);
        Assert.Equal(ModelFingerprint.CanonicalConfig(model.Config), r.ModelConfig);
        Assert.Equal(CartridgeInitKind.Random, r.Init);
        Assert.Equal(2, r.FrozenSlots);
        Assert.Equal(123, r.StepsTrained);
        Assert.Equal("distill", r.Objective);
        Assert.Equal(3.25, r.InitialLoss);
        Assert.Equal(1.0 / 3, r.FinalLoss);
        Assert.Equal(2.5, r.HeldOutLoss);
        Assert.Equal(c.SourceDocuments, r.SourceDocuments);
        Assert.Equal(c.CreatedUtc, r.CreatedUtc);
        Assert.Equal(DateTimeKind.Utc, r.CreatedUtc.Kind);
        Assert.Equal("0.02", r.Settings["lr"]);
        Assert.Equal("4", r.Settings["batch"]);

        // The on-disk layout: tensors layers.{l}.keys/values [kv_heads, p, head_dim], only cas.* metadata.
        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(2 * model.Config.Layers, f.Tensors.Count);
        var info = f.GetInfo("layers.1.values");
        Assert.Equal([model.Config.KvHeads, 6, model.Config.HeadDim], info.Shape);
        Assert.Equal(SafeTensorDType.F32, info.DType);
        Assert.All(f.Metadata.Keys, k => Assert.StartsWith("cas.", k));
        Assert.Equal("cas-cartridge", f.Metadata["cas.format"]);
        Assert.Equal("1", f.Metadata["cas.format_version"]);
        Assert.Equal("2025-03-04T05:06:07Z", f.Metadata["cas.created"]);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Bf16KeepsBf16RoundedValues()
    {
        var model = TrainerFixtures.Model();
        var c = Sample(model);
        var dir = TrainerFixtures.TempDir();
        string f32 = Path.Combine(dir, "a.safetensors"), bf16 = Path.Combine(dir, "b.safetensors");
        c.Save(f32);
        c.Save(bf16, SafeTensorDType.BF16);
        // In memory (what the store keeps) the bytes are the file's, in either dtype.
        Assert.Equal(File.ReadAllBytes(f32), c.ToBytes());
        Assert.Equal(File.ReadAllBytes(bf16), c.ToBytes(SafeTensorDType.BF16));
        var r = Cartridge.Load(bf16, model);
        for (int l = 0; l < c.Prefix.Layers; l++)
            for (int i = 0; i < c.Prefix.Keys[l].Length; i++)
            {
                Assert.Equal(HalfPrecision.BF16ToFloat(HalfPrecision.FloatToBF16(c.Prefix.Keys[l][i])), r.Prefix.Keys[l][i]);
                Assert.Equal(HalfPrecision.BF16ToFloat(HalfPrecision.FloatToBF16(c.Prefix.Values[l][i])), r.Prefix.Values[l][i]);
            }
        int data = 2 * model.Config.Layers * model.Config.KvHeads * 6 * model.Config.HeadDim;
        Assert.InRange(new FileInfo(f32).Length - new FileInfo(bf16).Length, 2L * data - 64, 2L * data); // 2 bytes less per value; headers differ slightly
        Assert.Throws<InvalidRequestException>(() => c.Save(Path.Combine(dir, "c.safetensors"), SafeTensorDType.F16));
        Directory.Delete(dir, true);
    }

    [Fact]
    public void AnotherModelIsRefusedWithBothFingerprints()
    {
        var model = TrainerFixtures.Model(seed: 5);
        var other = TrainerFixtures.Model(seed: 6);
        var dir = TrainerFixtures.TempDir();
        var path = Path.Combine(dir, "c.safetensors");
        Sample(model).Save(path);
        var e = Assert.Throws<CartridgeMismatchException>(() => Cartridge.Load(path, other));
        Assert.Contains($"was trained for model {ModelFingerprint.Compute(model)[..12]}", e.Message);
        Assert.Contains($"this model is {ModelFingerprint.Compute(other)[..12]}", e.Message);
        Assert.Contains(model.Source, e.Message);

        // Same fingerprint string but a model with another KV shape: named as a shape problem.
        var wide = RandomWeights.Create(TrainerFixtures.Config() with { KvHeads = 4 }, 5);
        var e2 = Assert.Throws<CartridgeMismatchException>(() => Cartridge.Read(path).EnsureCompatible(wide));
        Assert.Contains("kv_heads 2", e2.Message);
        Assert.Contains("kv_heads 4", e2.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void NonFiniteValuesAreNamedByTensorAndIndex()
    {
        var model = TrainerFixtures.Model();
        var c = Sample(model);
        var dir = TrainerFixtures.TempDir();
        var path = Path.Combine(dir, "c.safetensors");
        c.Save(path);

        // Rewrite the file with one NaN in layers.1.keys at [kv_head 1, slot 3, dim 5].
        int p = 6, hd = model.Config.HeadDim, idx = (1 * p + 3) * hd + 5;
        List<(string, int[], ReadOnlyMemory<float>, SafeTensorDType)> tensors;
        Dictionary<string, string> md;
        using (var f = SafeTensorsFile.Open(path))
        {
            tensors = f.Tensors.Select(t =>
            {
                var data = f.ReadFloats(t);
                if (t.Name == "layers.1.keys") data[idx] = float.NaN;
                return (t.Name, t.Shape, (ReadOnlyMemory<float>)data, SafeTensorDType.F32);
            }).ToList();
            md = f.Metadata.ToDictionary();
        }
        SafeTensorsWriter.Write(path, tensors, md);
        var e = Assert.Throws<CartridgeFormatException>(() => Cartridge.Load(path, model));
        Assert.Contains("'layers.1.keys'", e.Message);
        Assert.Contains($"index {idx} (kv_head 1, slot 3, dim 5)", e.Message);

        // Saving a non-finite cartridge is refused (and leaves no file).
        c.Prefix.Values[0][7] = float.PositiveInfinity;
        var out2 = Path.Combine(dir, "d.safetensors");
        var e2 = Assert.Throws<CartridgeFormatException>(() => c.Save(out2));
        Assert.Contains("'layers.0.values'", e2.Message);
        Assert.Contains("index 7", e2.Message);
        Assert.False(File.Exists(out2));
        Directory.Delete(dir, true);
    }

    [Fact]
    public void FilesThatAreNotCartridgesAreRefused()
    {
        var model = TrainerFixtures.Model();
        var dir = TrainerFixtures.TempDir();
        var c = Sample(model);

        string garbage = Path.Combine(dir, "garbage.safetensors");
        File.WriteAllText(garbage, "this is not a safetensors file at all");
        Assert.Contains("not a readable cartridge", Assert.Throws<CartridgeFormatException>(() => Cartridge.Read(garbage)).Message);

        string plain = Path.Combine(dir, "plain.safetensors");
        SafeTensorsWriter.Write(plain, [("weight", [2, 2], new float[4], SafeTensorDType.F32)]);
        Assert.Contains("not a cartridge", Assert.Throws<CartridgeFormatException>(() => Cartridge.Read(plain)).Message);

        var md = c.BuildMetadata();
        List<(string, int[], ReadOnlyMemory<float>, SafeTensorDType)> Layers(int layers, int[] shape)
        {
            var list = new List<(string, int[], ReadOnlyMemory<float>, SafeTensorDType)>();
            for (int l = 0; l < layers; l++)
            {
                list.Add(($"layers.{l}.keys", shape, new float[shape.Aggregate(1, (a, b) => a * b)], SafeTensorDType.F32));
                list.Add(($"layers.{l}.values", shape, new float[shape.Aggregate(1, (a, b) => a * b)], SafeTensorDType.F32));
            }
            return list;
        }
        int[] good = [model.Config.KvHeads, 6, model.Config.HeadDim];

        string newer = Path.Combine(dir, "newer.safetensors");
        SafeTensorsWriter.Write(newer, Layers(2, good), new Dictionary<string, string>(md) { ["cas.format_version"] = "2" });
        Assert.Contains("format version 2", Assert.Throws<CartridgeFormatException>(() => Cartridge.Read(newer)).Message);

        string missing = Path.Combine(dir, "missing.safetensors");
        SafeTensorsWriter.Write(missing, Layers(1, good), md);
        Assert.Contains("expected 4 tensors", Assert.Throws<CartridgeFormatException>(() => Cartridge.Read(missing)).Message);

        string shape = Path.Combine(dir, "shape.safetensors");
        SafeTensorsWriter.Write(shape, Layers(2, [model.Config.KvHeads, 5, model.Config.HeadDim]), md);
        Assert.Contains("has shape [2, 5, 8]", Assert.Throws<CartridgeFormatException>(() => Cartridge.Read(shape)).Message);

        string nofp = Path.Combine(dir, "nofp.safetensors");
        var md2 = new Dictionary<string, string>(md); md2.Remove("cas.model.fingerprint");
        SafeTensorsWriter.Write(nofp, Layers(2, good), md2);
        Assert.Contains("lacks 'cas.model.fingerprint'", Assert.Throws<CartridgeFormatException>(() => Cartridge.Read(nofp)).Message);

        Assert.Throws<CartridgeFormatException>(() => Cartridge.Read(Path.Combine(dir, "absent.safetensors")));
        Directory.Delete(dir, true);
    }

    [Fact]
    public void InitKindNamesRoundTrip()
    {
        foreach (var k in Enum.GetValues<CartridgeInitKind>()) Assert.Equal(k, CartridgeInitKinds.Parse(k.Name()));
        Assert.Throws<InvalidRequestException>(() => CartridgeInitKinds.Parse("zeros"));
    }
}
