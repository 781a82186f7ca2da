using System.CommandLine;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;

namespace Cas.Cli.Commands;

/// <summary>What every command shares: model/tokenizer options and loading, error reporting, default paths.</summary>
static class Cli
{
    /// <summary>The folder holding CasService.sln (the executable lives under src/Cas.Cli/bin/...), or the current directory.</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>stories260K beside the repository: the model used when --model is not given.</summary>
    public static string DefaultModel => Path.Combine(RepoRoot, "..", "shared", "models", "stories260K", "stories260K.bin");

    /// <summary>Runs a command body, turning our typed errors into one clear line on stderr and exit code 2.</summary>
    public static int Run(Func<int> body)
    {
        try { return body(); }
        catch (CasException e) { Console.Error.WriteLine($"error: {e.Message}"); return 2; }
        catch (Cas.Resources.ResourceException e) { Console.Error.WriteLine($"error: {e.Message}"); return 2; }
        catch (IOException e) { Console.Error.WriteLine($"error: {e.Message}"); return 2; }
        catch (UnauthorizedAccessException e) { Console.Error.WriteLine($"error: {e.Message}"); return 2; }
        catch (OperationCanceledException) { Console.Error.WriteLine("cancelled."); return 130; }
    }

    public static string ResolveModelPath(string? model)
    {
        var path = string.IsNullOrWhiteSpace(model) ? DefaultModel : model;
        if (!File.Exists(path) && !Directory.Exists(path))
            throw new ModelFormatException(model == null
                ? $"no --model given and the default stories260K checkpoint is not at {Path.GetFullPath(path)}; pass --model PATH."
                : $"model not found: {path} (expected a Hugging Face folder or a llama2.c .bin file).");
        return path;
    }

    /// <summary>The tokenizer to use with a model path: explicit, or found beside the model.</summary>
    public static string ResolveTokenizerPath(string modelPath, string? tokenizer)
    {
        if (!string.IsNullOrWhiteSpace(tokenizer)) return tokenizer;
        if (Directory.Exists(modelPath)) return modelPath; // HF folder: tokenizer.json inside
        var dir = Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        var candidates = Directory.GetFiles(dir, "tok*.bin");
        if (candidates.Length == 1) return candidates[0];
        throw new ModelFormatException(candidates.Length == 0
            ? $"no tokenizer given for {modelPath} and no tok*.bin beside it; pass --tokenizer PATH."
            : $"several tok*.bin files beside {modelPath}; choose one with --tokenizer.");
    }

    public static (Model Model, ITokenizer Tokenizer, string TokenizerPath) Load(string? model, string? tokenizer, WeightStorage storage = WeightStorage.Float32)
    {
        var modelPath = ResolveModelPath(model);
        var tokPath = ResolveTokenizerPath(modelPath, tokenizer);
        var m = ModelLoader.Load(modelPath, storage);
        var t = TokenizerLoader.Load(tokPath);
        if (t.VocabSize > m.Config.VocabSize)
            throw new ModelFormatException($"the tokenizer at {tokPath} has {t.VocabSize} tokens but the model has a vocabulary of {m.Config.VocabSize}; they do not belong together.");
        return (m, t, tokPath);
    }

    static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "CasService.sln"))) return d.FullName;
        return Directory.GetCurrentDirectory();
    }
}

/// <summary>Loading cartridge files for a model and composing them.</summary>
static class CartridgeFiles
{
    /// <summary>
    /// Loads every file (each checked against the model's fingerprint and shapes) and concatenates them in the given
    /// order with <see cref="KvPrefix.Concat"/>: keys are not re-rotated, each cartridge keeps the positions it was
    /// trained at, and tokens after the composition start at position Σp (see eval/COMPOSITION.md).
    /// </summary>
    public static KvPrefix LoadComposed(IReadOnlyList<string> paths, Model model)
    {
        var parts = Load(paths, model);
        return parts.Count == 1 ? parts[0] : KvPrefix.Concat(parts);
    }

    /// <summary>Loads every file, each checked against the model; their total length must leave room in the context.</summary>
    public static IReadOnlyList<KvPrefix> Load(IReadOnlyList<string> paths, Model model)
    {
        if (paths.Count == 0) throw new InvalidRequestException("give at least one --cartridge FILE.");
        string fingerprint = Cartridge.Fingerprint(model);
        var parts = new List<KvPrefix>(paths.Count);
        int total = 0;
        foreach (var path in paths)
        {
            if (!File.Exists(path)) throw new InvalidRequestException($"--cartridge {path} does not exist.");
            var c = Cartridge.Load(path, model, fingerprint);
            parts.Add(c.Prefix);
            total += c.Length;
        }
        if (total >= model.Config.MaxSeqLen)
            throw new InvalidRequestException($"the cartridges together have {total} slots, which leaves no room in the model's context of {model.Config.MaxSeqLen}; load fewer or smaller cartridges.");
        return parts;
    }
}
