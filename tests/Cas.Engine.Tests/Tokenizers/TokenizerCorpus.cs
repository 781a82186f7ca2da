using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>
/// The tokenizer test corpus: committed entries (tests/tokenizers/corpus/extra.json) and prose cut from
/// ../shared/datasets by the rule in tests/tokenizers/corpus/datasets.json — the same rule
/// make-goldens.mjs applies, so the goldens can hold only hashes of the dataset text.
/// </summary>
internal static class TokenizerCorpus
{
    public static string Dir => Path.Combine(TestPaths.RepoRoot, "tests", "tokenizers");
    public static string GoldensDir => Path.Combine(Dir, "goldens");
    public static string NodeModules => Path.Combine(Dir, "node_modules");

    static readonly Lazy<string[]> ExtraLines = new(() =>
        JsonSerializer.Deserialize<string[]>(File.ReadAllText(Path.Combine(Dir, "corpus", "extra.json")))!);

    public static string[] Extra => ExtraLines.Value;

    /// <summary>The dataset entries, or null when ../shared/datasets is not there.</summary>
    public static string[]? TryDataset()
    {
        if (!Directory.Exists(Path.Combine(TestPaths.Shared, "datasets"))) return null;
        using var rule = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "corpus", "datasets.json")));
        var result = new List<string>();
        foreach (var src in rule.RootElement.GetProperty("sources").EnumerateArray())
        {
            string kind = src.GetProperty("kind").GetString()!;
            string field = src.GetProperty("field").GetString()!;
            int docs = src.GetProperty("docs").GetInt32(), lines = src.GetProperty("lines").GetInt32();
            var records = File.ReadLines(Path.Combine(TestPaths.Shared, src.GetProperty("file").GetString()!))
                .Where(l => l.Trim().Length > 0).Take(docs);
            foreach (var rec in records)
            {
                using var doc = JsonDocument.Parse(rec);
                string text = doc.RootElement.GetProperty(field).GetString()!;
                var split = text.Split('\n');
                if (kind == "lines")
                {
                    int maxChars = src.GetProperty("maxChars").GetInt32();
                    result.AddRange(split.Where(l => l.Length <= maxChars && l.Any(c => c is not (' ' or '\t' or '\r'))).Take(lines));
                }
                else if (kind == "chunk") result.Add(string.Join("\n", split.Take(lines)));
                else throw new InvalidDataException("unknown corpus source kind " + kind);
            }
        }
        return result.ToArray();
    }

    /// <summary>First 12 hex digits of SHA-256 of the UTF-8 bytes (as make-goldens.mjs).</summary>
    public static string Hash(string s) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(s)))[..12];

    public static JsonDocument ReadGolden(string name)
    {
        var path = Path.Combine(GoldensDir, name + ".json.gz");
        using var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        return JsonDocument.Parse(gz);
    }
}
