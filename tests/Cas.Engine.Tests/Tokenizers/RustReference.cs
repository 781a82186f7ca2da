using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Tokenizers;

/// <summary>
/// Hugging Face's Rust tokenizers library (through NuGet Tokenizers.DotNet 1.4.1, a test-only dependency):
/// the reference our tokenizer.json encoder must equal. Two quirks of the wrapper are undone here, never in
/// the product: it always prepends BOS for Llama 2 files (its Encode adds special tokens), and it throws on
/// text holding a lone surrogate (a Rust string cannot hold one), for which the reference is the text with
/// each lone surrogate replaced by U+FFFD, which is what we document and do.
/// </summary>
internal sealed class RustReference : IDisposable
{
    static readonly Dictionary<string, RustReference> Loaded = new();
    static readonly object Gate = new();

    readonly global::Tokenizers.DotNet.Tokenizer _rust;
    readonly int? _prependedBos;

    RustReference(string path, int? prependedBos)
    {
        _rust = new global::Tokenizers.DotNet.Tokenizer(path);
        _prependedBos = prependedBos;
    }

    /// <summary>The reference for a golden's tokenizer (patched as the golden says); skips where the native library cannot load.</summary>
    public static RustReference For(string name)
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux) || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            Assert.Skip("the Rust tokenizers reference ships a linux-x64 native library only; skipped on this platform.");
        lock (Gate)
        {
            if (Loaded.TryGetValue(name, out var r)) return r;
            var tok = TokenizerCorpus.LoadTokenizer(name); // skips when the file is absent
            using var golden = TokenizerCorpus.ReadGolden(name);
            var root = golden.RootElement;
            string src = TokenizerCorpus.SourcePath(root);
            var json = JsonNode.Parse(File.ReadAllText(src))!.AsObject();
            if (root.GetProperty("patch").ValueKind == JsonValueKind.Object)
                foreach (var p in root.GetProperty("patch").EnumerateObject())
                    json[p.Name] = JsonNode.Parse(p.Value.GetRawText());
            // The wrapper reads a file: write the (patched) JSON once, named by its content, and reuse it.
            string text = json.ToJsonString();
            string hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];
            var dir = Path.Combine(Path.GetTempPath(), "cas-rust-reference");
            Directory.CreateDirectory(dir);
            var path = Path.Combine(dir, $"{name}-{hash}.json");
            if (!File.Exists(path))
            {
                var tmp = path + "." + Environment.ProcessId + ".tmp";
                File.WriteAllText(tmp, text);
                File.Move(tmp, path, overwrite: true);
            }
            // Its Encode applies the post-processor: a TemplateProcessing "single" that starts with BOS adds it.
            int? bos = tok.StartTokens.Count == 1 ? tok.StartTokens[0] : null;
            r = new RustReference(path, bos);
            Loaded[name] = r;
            return r;
        }
    }

    /// <summary>The Rust library's ids for text, without the post-processor's BOS.</summary>
    public int[] Encode(string text)
    {
        uint[] ids = _rust.Encode(ReplaceLoneSurrogates(text));
        int skip = _prependedBos is { } b && ids.Length > 0 && ids[0] == b ? 1 : 0;
        var result = new int[ids.Length - skip];
        for (int i = 0; i < result.Length; i++) result[i] = (int)ids[i + skip];
        return result;
    }

    public static string ReplaceLoneSurrogates(string text)
    {
        if (!text.AsSpan().ContainsAnyInRange('\uD800', '\uDFFF')) return text;
        var sb = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { sb.Append(c).Append(text[++i]); continue; }
            sb.Append(char.IsSurrogate(c) ? '\uFFFD' : c);
        }
        return sb.ToString();
    }

    public void Dispose() => _rust.Dispose();
}
