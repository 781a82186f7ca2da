using System.Globalization;
using System.Text;
using Cas.Engine.Tokenizers;

namespace Cas.Data;

/// <summary>What <see cref="DatasetShow"/> prints.</summary>
public sealed record DatasetShowOptions
{
    /// <summary>Conversations to show.</summary>
    public int Count { get; init; } = 3;
    /// <summary>Conversations to skip first.</summary>
    public int Skip { get; init; }
    /// <summary>Decodes token ids to text when given; otherwise ids are shown.</summary>
    public ITokenizer? Tokenizer { get; init; }
    /// <summary>Top-k entries listed per position (the rest are counted).</summary>
    public int TopKShown { get; init; } = 5;
    /// <summary>Target positions listed per message (0: all).</summary>
    public int MaxPositions { get; init; } = 32;
    /// <summary>Whether to print the chunk text.</summary>
    public bool ShowChunk { get; init; }
}

/// <summary>Renders conversations with their top-k targets as text, for <c>cas dataset show FILE --n N</c>.</summary>
public static class DatasetShow
{
    /// <summary>Reads the first Skip + Count records of <paramref name="path"/> (streaming) and renders Count of them.</summary>
    public static string Format(string path, DatasetShowOptions? options = null)
    {
        options ??= new DatasetShowOptions();
        using var r = DatasetReader.Open(path, new DatasetReadOptions(StopAtTornTail: true));
        var text = Format(r.ReadAll(), options);
        return r.TornTail is { } t ? text + $"(file ends in a {t})\n" : text;
    }

    /// <summary>Renders conversations Skip .. Skip + Count - 1 of <paramref name="conversations"/>.</summary>
    public static string Format(IEnumerable<Conversation> conversations, DatasetShowOptions options)
    {
        var sb = new StringBuilder();
        int index = 0, shown = 0;
        foreach (var c in conversations)
        {
            if (shown >= options.Count) break;
            if (index++ < options.Skip) continue;
            Render(sb, c, index - 1, options);
            shown++;
        }
        if (shown == 0) sb.Append(index == 0 ? "(no conversations)\n" : $"(no conversations after the first {index})\n");
        return sb.ToString();
    }

    /// <summary>Renders one conversation.</summary>
    public static string Format(Conversation c, DatasetShowOptions? options = null)
    {
        var sb = new StringBuilder();
        Render(sb, c, -1, options ?? new DatasetShowOptions());
        return sb.ToString();
    }

    static void Render(StringBuilder sb, Conversation c, int index, DatasetShowOptions o)
    {
        var ci = CultureInfo.InvariantCulture;
        sb.Append("=== ");
        if (index >= 0) sb.Append(ci, $"#{index} ");
        sb.Append(ci, $"id {c.Id:x16}  {SeedPromptKinds.Name(c.SeedKind)}  {c.Chunk}\n");
        if (c.SeedPrompt.Length > 0) sb.Append("seed: ").Append(c.SeedPrompt).Append('\n');
        if (o.ShowChunk && c.ChunkText.Length > 0) sb.Append("chunk:\n").Append(Indent(c.ChunkText)).Append('\n');
        foreach (var m in c.Messages)
        {
            string role = m.Role switch { MessageRole.System => "system", MessageRole.User => "user", _ => "assistant" };
            sb.Append(ci, $"[{role}] ({m.Tokens.Length} tokens)\n").Append(Indent(m.Text)).Append('\n');
            if (m.Targets is not { } t) continue;
            int np = o.MaxPositions > 0 ? Math.Min(o.MaxPositions, t.Length) : t.Length;
            sb.Append(ci, $"  top-k targets ({t.Length} positions, mean k {t.MeanK:F1}):\n");
            for (int p = 0; p < np; p++)
            {
                sb.Append(ci, $"  {p,4} {Piece(o.Tokenizer, m.Tokens[p]),-16} |");
                var ids = t.IdsAt(p);
                var lps = t.LogProbsAt(p);
                int shown = Math.Min(ids.Length, o.TopKShown);
                for (int i = 0; i < shown; i++)
                    sb.Append(ci, $" {Piece(o.Tokenizer, ids[i])} {lps[i]:F3}");
                if (ids.Length > shown) sb.Append(ci, $" (+{ids.Length - shown})");
                sb.Append('\n');
            }
            if (np < t.Length) sb.Append(ci, $"  ... {t.Length - np} more positions\n");
        }
    }

    /// <summary>A token shown as quoted decoded text with control characters escaped, or as #id without a tokenizer.</summary>
    static string Piece(ITokenizer? tok, int id)
    {
        if (tok is null) return "#" + id.ToString(CultureInfo.InvariantCulture);
        string s = tok.Decode([id]);
        var sb = new StringBuilder("'");
        foreach (char ch in s)
            sb.Append(ch switch { '\n' => "\\n", '\t' => "\\t", '\r' => "\\r", '\'' => "\\'", _ when char.IsControl(ch) => $"\\u{(int)ch:x4}", _ => ch.ToString() });
        return sb.Append('\'').ToString();
    }

    static string Indent(string s) => "    " + s.Replace("\n", "\n    ");
}
