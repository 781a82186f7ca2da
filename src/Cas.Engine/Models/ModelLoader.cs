namespace Cas.Engine.Models;

/// <summary>Loads a model from a path, choosing the format from what the path is.</summary>
public static class ModelLoader
{
    /// <summary>
    /// A folder is read as a Hugging Face model (config.json + safetensors); a <c>.bin</c> file as a
    /// llama2.c v0 checkpoint. Anything else, or a missing path, is a <see cref="ModelFormatException"/>.
    /// </summary>
    public static Model Load(string path) => Load(path, WeightStorage.Float32);

    /// <summary>As <see cref="Load(string)"/>; <paramref name="storage"/> = File keeps a Hugging Face model's bf16/fp16
    /// matrices in 16 bits (llama2.c files are fp32 either way).</summary>
    public static Model Load(string path, WeightStorage storage)
    {
        ArgumentNullException.ThrowIfNull(path);
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) return HfModelLoader.Load(full, storage);
        if (File.Exists(full))
        {
            if (string.Equals(Path.GetExtension(full), ".bin", StringComparison.OrdinalIgnoreCase))
                return Llama2cLoader.Load(full);
            throw new ModelFormatException(
                $"cannot tell the model format of {full}: give a Hugging Face model folder (config.json + model.safetensors) or a llama2.c .bin checkpoint.");
        }
        throw new ModelFormatException($"model path not found: {full}");
    }
}
