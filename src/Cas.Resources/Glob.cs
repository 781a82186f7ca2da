namespace Cas.Resources;

/// <summary>
/// A file pattern relative to a folder, '/'-separated: <c>*</c> matches any characters within one name,
/// <c>?</c> one character, <c>**</c> (a whole segment) any number of folders, including none.
/// Like the shell, <c>*</c>, <c>?</c> and <c>**</c> do not match names that begin with '.'.
/// Matching is case-sensitive (ordinal).
/// </summary>
public sealed class Glob
{
    readonly string[] _segments;

    public Glob(string pattern)
    {
        if (string.IsNullOrWhiteSpace(pattern)) throw new ResourceException("empty glob pattern; use e.g. **/*.md");
        Pattern = pattern.Replace('\\', '/').Trim('/');
        _segments = Pattern.Split('/', StringSplitOptions.RemoveEmptyEntries);
    }

    /// <summary>Every file at any depth (not hidden ones).</summary>
    public static Glob All { get; } = new("**/*");

    public string Pattern { get; }

    /// <summary>True when a string holds a glob character (<c>*</c> or <c>?</c>).</summary>
    public static bool HasWildcard(string s) => s.AsSpan().IndexOfAny('*', '?') >= 0;

    /// <summary>Does the '/'-separated relative path match?</summary>
    public bool IsMatch(string relativePath) => Match(0, relativePath.Split('/'), 0, prefix: false);

    /// <summary>Could a file somewhere below this relative folder match? (to prune the walk)</summary>
    public bool CouldMatchBelow(string relativeFolder) =>
        relativeFolder.Length == 0 || Match(0, relativeFolder.Split('/'), 0, prefix: true);

    bool Match(int p, string[] path, int s, bool prefix)
    {
        while (true)
        {
            if (s == path.Length) return prefix || p == _segments.Length || (p == _segments.Length - 1 && _segments[p] == "**");
            if (p == _segments.Length) return false;
            if (_segments[p] == "**")
            {
                if (path[s].StartsWith('.')) { p++; continue; } // ** does not enter hidden folders
                // ** matches nothing, or swallows this segment and stays
                return Match(p + 1, path, s, prefix) || Match(p, path, s + 1, prefix);
            }
            if (!MatchName(_segments[p], path[s])) return false;
            p++;
            s++;
        }
    }

    /// <summary>Wildcard match of one name against one pattern segment.</summary>
    internal static bool MatchName(string pattern, string name)
    {
        if (name.StartsWith('.') && !pattern.StartsWith('.')) return false;
        int p = 0, n = 0, starP = -1, starN = 0;
        while (n < name.Length)
        {
            if (p < pattern.Length && (pattern[p] == '?' || pattern[p] == name[n])) { p++; n++; }
            else if (p < pattern.Length && pattern[p] == '*') { starP = p++; starN = n; }
            else if (starP >= 0) { p = starP + 1; n = ++starN; }
            else return false;
        }
        while (p < pattern.Length && pattern[p] == '*') p++;
        return p == pattern.Length;
    }

    public override string ToString() => Pattern;
}
