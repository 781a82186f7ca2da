using System.Text;
using Cas.Engine.Tokenizers;

namespace Cas.SelfStudy.Tests;

/// <summary>One token per UTF-16 char (id = char code); round-trips any text.</summary>
sealed class CharTokenizer : ITokenizer
{
    public int VocabSize => 65536;
    public int? BosId => null;
    public int? EosId => null;
    public IReadOnlyList<int> StartTokens => [];
    public int[] Encode(string text)
    {
        var ids = new int[text.Length];
        for (int i = 0; i < text.Length; i++) ids[i] = text[i];
        return ids;
    }
    public string Decode(ReadOnlySpan<int> ids)
    {
        var sb = new StringBuilder(ids.Length);
        foreach (var id in ids) sb.Append((char)id);
        return sb.ToString();
    }
    public int? SpecialTokenId(string content) => null;
}

/// <summary>
/// Word tokens: a run of non-space characters together with the whitespace after it (so the text
/// round-trips exactly). The vocabulary grows as new words are seen.
/// </summary>
sealed class WordTokenizer : ITokenizer
{
    readonly Dictionary<string, int> ids = new(StringComparer.Ordinal);
    readonly List<string> words = [];
    public int VocabSize => words.Count;
    public int? BosId => null;
    public int? EosId => null;
    public IReadOnlyList<int> StartTokens => [];
    public int[] Encode(string text)
    {
        var result = new List<int>();
        int i = 0;
        while (i < text.Length)
        {
            int s = i;
            while (i < text.Length && !char.IsWhiteSpace(text[i])) i++;
            while (i < text.Length && char.IsWhiteSpace(text[i])) i++;
            string w = text[s..i];
            if (!ids.TryGetValue(w, out int id)) { id = words.Count; words.Add(w); ids[w] = id; }
            result.Add(id);
        }
        return [.. result];
    }
    public string Decode(ReadOnlySpan<int> t)
    {
        var sb = new StringBuilder();
        foreach (var id in t) sb.Append(words[id]);
        return sb.ToString();
    }
    public int? SpecialTokenId(string content) => null;
}

/// <summary>Does not round-trip: lower-cases words and joins them with single spaces.</summary>
sealed class LossyTokenizer : ITokenizer
{
    readonly WordTokenizer inner = new();
    public int VocabSize => inner.VocabSize;
    public int? BosId => null;
    public int? EosId => null;
    public IReadOnlyList<int> StartTokens => [];
    public int[] Encode(string text) => inner.Encode(string.Join(' ', text.ToLowerInvariant().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)) );
    public string Decode(ReadOnlySpan<int> ids) => inner.Decode(ids);
    public int? SpecialTokenId(string content) => null;
}

/// <summary>A folder under the temp directory, deleted on dispose.</summary>
sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "cas-selfstudy-tests-" + Guid.NewGuid().ToString("N"));
    public TempDir() => Directory.CreateDirectory(Path);
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
}

static class Make
{
    public static readonly DatasetWriterOptions NoSync = new() { Fsync = false };

    /// <summary>A conversation with varied content whose sizes are driven by <paramref name="answerTokens"/> and <paramref name="k"/>.</summary>
    public static Conversation Conversation(ulong id, int answerTokens = 12, int k = 5, bool variableK = true, string? doc = null)
    {
        var rng = new DeterministicRng(id * 7919 + 1);
        var user = new int[3 + (int)(id % 4)];
        for (int i = 0; i < user.Length; i++) user[i] = rng.NextInt(50000);
        var answer = new int[answerTokens];
        var b = new SparseTargets.Builder();
        for (int p = 0; p < answerTokens; p++)
        {
            answer[p] = rng.NextInt(50000);
            int kp = variableK ? rng.NextInt(0, k) : k;
            var ids = new int[kp];
            var lps = new float[kp];
            float lp = 0;
            for (int j = 0; j < kp; j++)
            {
                ids[j] = j * 50000 + rng.NextInt(50000); // distinct by construction
                lp -= (float)rng.NextDouble() * 3;
                lps[j] = lp;
            }
            b.Add(ids, lps);
        }
        string d = doc ?? $"doc-{id % 3}";
        int at = (int)(id % 100000);
        return new Conversation(id,
            new ChunkLocation(d, at, at + 40, at * 3, at * 3 + 170),
            $"chunk {id}: Ünïcödé ✓ 𝄞 text\nline two",
            (SeedPromptKind)(id % 6),
            $"seed prompt for {id}",
            [
                new ConversationMessage(MessageRole.System, "", []),
                new ConversationMessage(MessageRole.User, $"question {id}?", user),
                new ConversationMessage(MessageRole.Assistant, $"answer {id} — with “quotes”", answer, b.Build()),
            ]);
    }

    public static void SameConversation(Conversation want, Conversation got)
    {
        Assert.Equal(want.Id, got.Id);
        Assert.Equal(want.Chunk, got.Chunk);
        Assert.Equal(want.ChunkText, got.ChunkText);
        Assert.Equal(want.SeedKind, got.SeedKind);
        Assert.Equal(want.SeedPrompt, got.SeedPrompt);
        Assert.Equal(want.Messages.Count, got.Messages.Count);
        for (int m = 0; m < want.Messages.Count; m++)
        {
            var a = want.Messages[m];
            var b = got.Messages[m];
            Assert.Equal(a.Role, b.Role);
            Assert.Equal(a.Text, b.Text);
            Assert.Equal(a.Tokens, b.Tokens);
            Assert.Equal(a.Targets is null, b.Targets is null);
            if (a.Targets is null) continue;
            Assert.Equal(a.Targets.Offsets.ToArray(), b.Targets!.Offsets.ToArray());
            Assert.Equal(a.Targets.Ids.ToArray(), b.Targets.Ids.ToArray());
            Assert.Equal(a.Targets.LogProbs.ToArray(), b.Targets.LogProbs.ToArray());
        }
    }

    public static List<Conversation> ReadAll(string path, bool stopAtTornTail = false)
    {
        using var r = DatasetReader.Open(path, new DatasetReadOptions(stopAtTornTail));
        return [.. r.ReadAll()];
    }
}
