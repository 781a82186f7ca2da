namespace Cas.Engine.Tokenizers;

/// <summary>Opens a tokenizer from a path: a tokenizer.json file, a folder holding one, or a llama2.c .bin tokenizer.</summary>
public static class TokenizerLoader
{
    public static ITokenizer Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path))
        {
            var json = Path.Combine(path, "tokenizer.json");
            if (File.Exists(json)) return HfTokenizer.FromFile(json);
            throw new ModelFormatException($"no tokenizer found in folder {path}: tried {json}. " +
                "Pass a tokenizer.json file, a folder containing one, or a llama2.c tokenizer .bin file.");
        }
        if (!File.Exists(path))
            throw new ModelFormatException($"tokenizer not found: tried {Path.GetFullPath(path)} (no such file or folder).");
        if (path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase)) return Llama2cTokenizer.FromFile(path);
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase) || StartsWithBrace(path)) return HfTokenizer.FromFile(path);
        throw new ModelFormatException($"cannot tell the tokenizer format of {path}: expected a .json (Hugging Face tokenizer.json) " +
            "or a .bin (llama2.c tokenizer) file, or a folder containing tokenizer.json.");
    }

    static bool StartsWithBrace(string path)
    {
        using var f = File.OpenRead(path);
        int b;
        while ((b = f.ReadByte()) is ' ' or '\t' or '\r' or '\n' or 0xEF or 0xBB or 0xBF) { }
        return b == '{';
    }
}
