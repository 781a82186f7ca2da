using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Cas.Engine.Models;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Models;

/// <summary>A fresh temporary folder, deleted on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "cas-models-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

static class ModelTestUtil
{
    public static string GoldenModels => Goldens.Path("models");

    public static JsonObject Manifest() =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(GoldenModels, "manifest.json")))!.AsObject();

    /// <summary>Writes a safetensors file byte by byte: 8-byte length, the header text as given, then data.</summary>
    public static void WriteRaw(string path, string headerJson, byte[] data, long? declaredHeaderLength = null)
    {
        var header = Encoding.UTF8.GetBytes(headerJson);
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)(declaredHeaderLength ?? header.Length));
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        File.WriteAllBytes(path, bytes);
    }

    public static byte[] F32Bytes(params float[] values)
    {
        var b = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(4 * i), values[i]);
        return b;
    }

    public static byte[] U16Bytes(params ushort[] values)
    {
        var b = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2 * i), values[i]);
        return b;
    }

    /// <summary>Every tensor of an HF folder (single file or shards), by name, as fp32 with its shape.</summary>
    public static Dictionary<string, (int[] Shape, float[] Data)> ReadAllTensors(string folder)
    {
        var result = new Dictionary<string, (int[], float[])>(StringComparer.Ordinal);
        foreach (var f in Directory.GetFiles(folder, "*.safetensors"))
        {
            using var st = SafeTensorsFile.Open(f);
            foreach (var t in st.Tensors) result[t.Name] = (t.Shape, st.ReadFloats(t));
        }
        return result;
    }

    /// <summary>
    /// Copies a golden HF model into <paramref name="folder"/> as one F32 model.safetensors, letting the
    /// caller edit the tensors and the config on the way.
    /// </summary>
    public static void CopyModel(string goldenName, string folder,
        Action<Dictionary<string, (int[] Shape, float[] Data)>>? editTensors = null,
        Action<JsonObject>? editConfig = null,
        SafeTensorDType dtype = SafeTensorDType.F32)
    {
        string src = Path.Combine(GoldenModels, goldenName);
        var tensors = ReadAllTensors(src);
        editTensors?.Invoke(tensors);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(src, "config.json")))!.AsObject();
        editConfig?.Invoke(config);
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        SafeTensorsWriter.Write(Path.Combine(folder, "model.safetensors"),
            tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal)
                   .Select(kv => (kv.Key, kv.Value.Shape, (ReadOnlyMemory<float>)kv.Value.Data, dtype)));
    }
}
