using System.Text;
using System.Text.Json;

namespace Cas.Resources;

/// <summary>
/// A path to a value inside a JSON record: names separated by dots, each optionally followed by
/// <c>[N]</c> (one array element) or <c>[*]</c> (every element): <c>input</c>, <c>a.b.c</c>,
/// <c>items[*].text</c>, <c>items[0].text</c>, <c>[*]</c> (a record that is an array).
/// </summary>
public sealed class JsonFieldPath
{
    readonly record struct Step(string? Name, int Index); // Name != null: property; Index >= 0: element; -1: every element

    readonly Step[] _steps;

    JsonFieldPath(string text, Step[] steps)
    {
        Text = text;
        _steps = steps;
        foreach (var s in steps) if (s.Name == null && s.Index < 0) HasWildcard = true;
    }

    /// <summary>The path as written.</summary>
    public string Text { get; }

    /// <summary>The last property name in the path (e.g. "passage_id" for "metadata.passage_id"), or the whole text.</summary>
    public string LastName
    {
        get
        {
            for (int i = _steps.Length - 1; i >= 0; i--) if (_steps[i].Name != null) return _steps[i].Name!;
            return Text;
        }
    }

    /// <summary>The first property name in the path (the record field it starts from), or null.</summary>
    internal string? FirstName => _steps.Length > 0 ? _steps[0].Name : null;

    /// <summary>True when the path has a <c>[*]</c> step (it may match several values).</summary>
    public bool HasWildcard { get; }

    /// <summary>Parses a path; throws <see cref="ResourceException"/> saying what is wrong.</summary>
    public static JsonFieldPath Parse(string text)
    {
        if (string.IsNullOrWhiteSpace(text))
            throw new ResourceException("empty JSON field path; write a field name such as 'input', 'a.b.c' or 'items[*].text'");
        var steps = new List<Step>();
        int i = 0;
        while (i < text.Length)
        {
            if (text[i] == '[')
            {
                int close = text.IndexOf(']', i);
                if (close < 0) throw Bad(text, $"'[' at position {i} has no closing ']'");
                var inner = text[(i + 1)..close].Trim();
                if (inner == "*") steps.Add(new Step(null, -1));
                else if (int.TryParse(inner, out int idx) && idx >= 0) steps.Add(new Step(null, idx));
                else throw Bad(text, $"'[{inner}]' is not an index; use [N] or [*]");
                i = close + 1;
                if (i < text.Length && text[i] == '.') i++;
                else if (i < text.Length && text[i] != '[') throw Bad(text, $"expected '.' or '[' after ']' at position {i}");
                continue;
            }
            int end = i;
            while (end < text.Length && text[end] != '.' && text[end] != '[') end++;
            if (end == i) throw Bad(text, $"empty name at position {i}");
            steps.Add(new Step(text[i..end], 0));
            i = end;
            if (i < text.Length && text[i] == '.')
            {
                i++;
                if (i == text.Length) throw Bad(text, "it ends with '.'");
            }
        }
        return new JsonFieldPath(text, steps.ToArray());
    }

    static ResourceException Bad(string text, string why) =>
        new($"bad JSON field path '{text}': {why}. Examples: input, a.b.c, items[*].text, items[0].text");

    /// <summary>Appends every value the path reaches in <paramref name="root"/>, with its concrete path (wildcards filled in).</summary>
    public void Evaluate(JsonElement root, List<(string Path, JsonElement Value)> results) =>
        Walk(root, 0, new StringBuilder(), results);

    void Walk(JsonElement e, int step, StringBuilder path, List<(string, JsonElement)> results)
    {
        if (step == _steps.Length)
        {
            results.Add((path.ToString(), e));
            return;
        }
        var s = _steps[step];
        int mark = path.Length;
        if (s.Name != null)
        {
            if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(s.Name, out var child)) return;
            if (path.Length > 0) path.Append('.');
            path.Append(s.Name);
            Walk(child, step + 1, path, results);
        }
        else if (e.ValueKind == JsonValueKind.Array)
        {
            int len = e.GetArrayLength();
            if (s.Index >= 0)
            {
                if (s.Index >= len) return;
                path.Append('[').Append(s.Index).Append(']');
                Walk(e[s.Index], step + 1, path, results);
            }
            else
            {
                int k = 0;
                foreach (var item in e.EnumerateArray())
                {
                    path.Length = mark;
                    path.Append('[').Append(k++).Append(']');
                    Walk(item, step + 1, path, results);
                }
            }
        }
        path.Length = mark;
    }

    public override string ToString() => Text;
}
