using System.Text;
using System.Text.RegularExpressions;

namespace Cas.Resources;

/// <summary>
/// kind "latex": a .tex file (with the files it \input's or \include's inlined) as one document.
/// <list type="bullet">
/// <item>Comments are removed: '%' up to the end of the line unless escaped as \%; a line that was only a
/// comment disappears.</item>
/// <item>\input{f} and \include{f} are resolved relative to the main file's folder (then the including
/// file's folder), adding ".tex" when the name has no extension. Missing files and cycles are counted
/// (MissingInclude, IncludeCycle) and left out.</item>
/// <item>The preamble (before \begin{document}) is dropped; \title, \author, \date become metadata and
/// the title is the first line of the text.</item>
/// <item>\part ... \subparagraph titles become lines of their own; metadata "outline" lists them.</item>
/// <item>Formatting macros (\textbf, \emph, ...) keep their text; \footnote{x} becomes " (x)"; \cite{k}
/// and \ref{k} become "[k]"; layout macros (\label, \vspace, \includegraphics, ...) are dropped;
/// \item becomes "- "; unknown macros lose their name and keep their arguments' text.</item>
/// <item>Math ($...$, $$...$$, \(...\), \[...\], equation/align/... environments) is kept as written;
/// verbatim and lstlisting bodies are kept as written.</item>
/// </list>
/// </summary>
public sealed class LatexResource : IResource
{
    readonly HashSet<string> _included = new(StringComparer.Ordinal);

    public LatexResource(string path, string? id = null)
    {
        Path = path;
        Id = id ?? System.IO.Path.GetFileName(path);
    }

    public string Kind => "latex";
    public string Path { get; }
    public string Id { get; }

    /// <summary>Full paths of the files the last <see cref="Read"/> read (the main file and its includes).</summary>
    public IReadOnlyCollection<string> IncludedFiles => _included;

    public IEnumerable<Document> Read(ResourceReport report)
    {
        _included.Clear();
        var full = System.IO.Path.GetFullPath(Path);
        var sb = new StringBuilder();
        if (!Expand(full, Path, System.IO.Path.GetDirectoryName(full)!, [], sb, report)) yield break;

        var tex = Convert(sb.ToString());
        var meta = new Dictionary<string, string> { ["kind"] = Kind };
        if (tex.Title != null) meta["title"] = tex.Title;
        if (tex.Author != null) meta["author"] = tex.Author;
        if (tex.Date != null) meta["date"] = tex.Date;
        if (tex.Outline.Length > 0) meta["outline"] = tex.Outline;
        if (_included.Count > 1) meta["files"] = _included.Count.ToString();
        var doc = new Document(Id, tex.Text, Path, meta, Document.NoQuestions);
        if (report.Accept(doc)) yield return doc;
    }

    static readonly Regex IncludeCommand = new(@"\\(input|include)\s*\{([^{}]*)\}", RegexOptions.CultureInvariant);
    static readonly Regex VerbatimBegin = new(@"\\begin\{(verbatim\*?|Verbatim|lstlisting|minted)\}", RegexOptions.CultureInvariant);

    /// <summary>Appends the file's text with comments removed and includes inlined; false if it cannot be read.</summary>
    bool Expand(string full, string display, string mainDir, List<string> stack, StringBuilder sb, ResourceReport report)
    {
        var text = TextDecoding.ReadFile(full == System.IO.Path.GetFullPath(Path) ? Path : full, report);
        if (text == null) return false;
        _included.Add(full);
        stack.Add(full);
        var lines = text.Split('\n');
        string? verbatimEnd = null;
        for (int n = 0; n < lines.Length; n++)
        {
            var line = lines[n];
            if (verbatimEnd != null)
            {
                sb.Append(line).Append('\n');
                if (line.Contains(verbatimEnd, StringComparison.Ordinal)) verbatimEnd = null;
                continue;
            }
            var code = StripComment(line, out bool hadComment);
            if (hadComment && code.Trim().Length == 0) continue; // a comment line vanishes entirely

            var v = VerbatimBegin.Match(code);
            if (v.Success)
            {
                var end = $"\\end{{{v.Groups[1].Value}}}";
                if (!line.Contains(end, StringComparison.Ordinal))
                {
                    verbatimEnd = end;
                    sb.Append(line).Append('\n'); // keep the line whole: '%' inside verbatim is text
                    continue;
                }
            }

            int at = 0;
            foreach (Match m in IncludeCommand.Matches(code))
            {
                sb.Append(code, at, m.Index - at);
                at = m.Index + m.Length;
                Include(m.Groups[1].Value, m.Groups[2].Value.Trim(), full, display, n + 1, mainDir, stack, sb, report);
            }
            sb.Append(code, at, code.Length - at);
            // '%' eats the line end, as in TeX ("corpus.%" joins the next line); after a space the line end
            // would only be another space, so it is kept to keep the lines readable
            if (!hadComment || (code.Length > 0 && char.IsWhiteSpace(code[^1]))) sb.Append('\n');
        }
        stack.RemoveAt(stack.Count - 1);
        return true;
    }

    void Include(string command, string name, string current, string display, int line, string mainDir,
        List<string> stack, StringBuilder sb, ResourceReport report)
    {
        var candidates = new List<string>();
        foreach (var dir in new[] { mainDir, System.IO.Path.GetDirectoryName(current)! })
        {
            var p = System.IO.Path.GetFullPath(System.IO.Path.Combine(dir, name));
            if (!p.EndsWith(".tex", StringComparison.OrdinalIgnoreCase)) candidates.Add(p + ".tex");
            candidates.Add(p);
        }
        string? found = null;
        foreach (var c in candidates)
            if (File.Exists(c)) { found = c; break; }
        if (found == null)
        {
            report.Add(ResourceIssueKind.MissingInclude, display, line,
                $"\\{command}{{{name}}}: no such file (looked for {candidates[0]}); left out");
            return;
        }
        if (stack.Contains(found))
        {
            var chain = string.Join(" -> ", stack.Select(System.IO.Path.GetFileName)) + " -> " + System.IO.Path.GetFileName(found);
            report.Add(ResourceIssueKind.IncludeCycle, display, line,
                $"\\{command}{{{name}}} would include {System.IO.Path.GetFileName(found)} again (cycle: {chain}); left out");
            return;
        }
        if (command == "include") sb.Append("\n\n");
        Expand(found, found, mainDir, stack, sb, report);
        if (command == "include") sb.Append("\n\n");
    }

    /// <summary>The line up to an unescaped '%'.</summary>
    internal static string StripComment(string line, out bool hadComment)
    {
        for (int i = 0; i < line.Length; i++)
        {
            if (line[i] == '\\') { i++; continue; }
            if (line[i] == '%')
            {
                hadComment = true;
                return line[..i];
            }
        }
        hadComment = false;
        return line;
    }

    internal sealed record Converted(string Text, string? Title, string? Author, string? Date, string Outline);

    /// <summary>Comment-free LaTeX (includes already inlined) to plain text and metadata.</summary>
    internal static Converted Convert(string tex)
    {
        const string Begin = @"\begin{document}", End = @"\end{document}";
        int begin = tex.IndexOf(Begin, StringComparison.Ordinal);
        var body = begin >= 0 ? tex[(begin + Begin.Length)..] : tex;
        int end = body.IndexOf(End, StringComparison.Ordinal);
        if (end >= 0) body = body[..end];

        string? title = Fragment(FindArgument(tex, "title"));
        var authors = FindArgument(tex, "author");
        string? author = authors == null ? null : Fragment(Regex.Replace(authors, @"\s*\\and(?![A-Za-z])\s*", ", "));
        string? date = Fragment(FindArgument(tex, "date"));

        var c = new LatexText(body);
        var text = c.Run();
        if (title != null) text = title + "\n\n" + text;
        return new Converted(TextDecoding.Tidy(text), title, author, date, MarkdownResource.Outline(c.Headings));
    }

    /// <summary>A short piece of LaTeX (a title) as one line of text, or null when empty.</summary>
    static string? Fragment(string? tex)
    {
        if (tex == null) return null;
        var s = Regex.Replace(new LatexText(tex).Run(), @"\s+", " ").Trim();
        return s.Length == 0 ? null : s;
    }

    /// <summary>The argument of the first \name{...} (after an optional [...]), or null.</summary>
    static string? FindArgument(string tex, string name)
    {
        var m = Regex.Match(tex, @"\\" + name + @"(?![A-Za-z])");
        if (!m.Success) return null;
        var c = new LatexText(tex) { Pos = m.Index + m.Length };
        c.SkipOptional();
        return c.ReadArgument();
    }
}

/// <summary>The LaTeX-to-text scanner used by <see cref="LatexResource"/>.</summary>
internal sealed class LatexText(string s)
{
    readonly StringBuilder _o = new(s.Length);
    public int Pos;
    public readonly List<(int Level, string Title)> Headings = [];

    static readonly Dictionary<string, int> SectionLevel = new()
    {
        ["part"] = -1, ["chapter"] = 0, ["section"] = 1, ["subsection"] = 2, ["subsubsection"] = 3,
        ["paragraph"] = 4, ["subparagraph"] = 5,
    };

    // Macros whose name is dropped and whose argument text stays (through the group rule).
    static readonly HashSet<string> KeepText =
    [
        "textbf", "textit", "emph", "underline", "texttt", "textsc", "textrm", "textsf", "textup", "textsl",
        "textmd", "textnormal", "mbox", "hbox", "text", "uline", "caption", "fbox", "centerline", "MakeUppercase",
        "MakeLowercase", "textsuperscript", "textsubscript", "enquote", "mathrm",
    ];

    // Macros dropped together with this many arguments (optional [...] arguments are skipped too).
    static readonly Dictionary<string, int> DropArgs = new()
    {
        ["label"] = 1, ["vspace"] = 1, ["hspace"] = 1, ["includegraphics"] = 1, ["bibliographystyle"] = 1,
        ["bibliography"] = 1, ["usepackage"] = 1, ["documentclass"] = 1, ["pagestyle"] = 1, ["thispagestyle"] = 1,
        ["setlength"] = 2, ["addtolength"] = 2, ["setcounter"] = 2, ["addtocounter"] = 2, ["addcontentsline"] = 3,
        ["graphicspath"] = 1, ["hypersetup"] = 1, ["newcommand"] = 2, ["renewcommand"] = 2, ["providecommand"] = 2,
        ["DeclareMathOperator"] = 2, ["newenvironment"] = 3, ["renewenvironment"] = 3, ["newtheorem"] = 2,
        ["title"] = 1, ["author"] = 1, ["date"] = 1, ["thanks"] = 1, ["color"] = 1, ["textcolor"] = 1,
        ["definecolor"] = 3, ["nocite"] = 1, ["input"] = 1, ["include"] = 1, ["vspace*"] = 1, ["pagenumbering"] = 1,
        ["url"] = 0, ["href"] = 1,
    };

    static readonly HashSet<string> DropWord =
    [
        "maketitle", "tableofcontents", "listoffigures", "listoftables", "newpage", "clearpage", "cleardoublepage",
        "pagebreak", "centering", "noindent", "indent", "raggedright", "raggedleft", "flushbottom", "bf", "it", "em",
        "sl", "sc", "tt", "rm", "sf", "bfseries", "itshape", "slshape", "scshape", "ttfamily", "rmfamily", "sffamily",
        "mdseries", "upshape", "normalfont", "tiny", "scriptsize", "footnotesize", "small", "normalsize", "large",
        "Large", "LARGE", "huge", "Huge", "medskip", "bigskip", "smallskip", "hline", "toprule", "midrule",
        "bottomrule", "appendix", "frontmatter", "mainmatter", "backmatter", "protect", "hfill", "vfill", "selectfont",
        "leavevmode", "relax", "sloppy", "onecolumn", "twocolumn", "nolinebreak", "nopagebreak", "today", "and",
    ];

    static readonly Dictionary<string, string> Symbols = new()
    {
        ["ldots"] = "...", ["dots"] = "...", ["textellipsis"] = "...", ["LaTeX"] = "LaTeX", ["TeX"] = "TeX",
        ["textendash"] = "\u2013", ["textemdash"] = "\u2014", ["textbackslash"] = "\\", ["ss"] = "\u00DF",
        ["S"] = "\u00A7", ["P"] = "\u00B6", ["copyright"] = "\u00A9", ["textasciitilde"] = "~", ["textbar"] = "|",
        ["textless"] = "<", ["textgreater"] = ">", ["ae"] = "\u00E6", ["oe"] = "\u0153", ["o"] = "\u00F8",
        ["aa"] = "\u00E5", ["quad"] = " ", ["qquad"] = " ", ["linebreak"] = "\n", ["newline"] = "\n", ["par"] = "\n\n",
    };

    static readonly HashSet<string> MathEnvironments =
    [
        "equation", "equation*", "align", "align*", "gather", "gather*", "multline", "multline*", "eqnarray",
        "eqnarray*", "displaymath", "math", "flalign", "flalign*", "alignat", "alignat*",
    ];

    static readonly HashSet<string> VerbatimEnvironments = ["verbatim", "verbatim*", "Verbatim", "lstlisting", "minted"];

    public string Run()
    {
        while (Pos < s.Length)
        {
            char c = s[Pos];
            switch (c)
            {
                case '\\': Command(); break;
                case '$': MathInline(); break;
                case '{' or '}': Pos++; break;
                case '~': _o.Append(' '); Pos++; break;
                case '&': _o.Append(" | "); Pos++; break;
                case '`' when At("``"): _o.Append('"'); Pos += 2; break;
                case '\'' when At("''"): _o.Append('"'); Pos += 2; break;
                default: _o.Append(c); Pos++; break;
            }
        }
        return _o.ToString();
    }

    bool At(string t) => string.CompareOrdinal(s, Pos, t, 0, t.Length) == 0;

    void Command()
    {
        int start = Pos++;
        if (Pos >= s.Length) return;
        char ch = s[Pos];
        if (!char.IsAsciiLetter(ch))
        {
            Pos++;
            switch (ch)
            {
                case '%' or '&' or '_' or '#' or '$' or '{' or '}': _o.Append(ch); break;
                case '\\': if (Pos < s.Length && s[Pos] == '*') Pos++; SkipOptional(); _o.Append('\n'); break;
                case '[': CopyUntil(start, @"\]"); break;
                case '(': CopyUntil(start, @"\)"); break;
                case ' ' or ',' or ';' or ':': _o.Append(' '); break;
                case '\'' or '`' or '^' or '"' or '~' or '=' or '.': Accent(ch); break;
                default: break; // \- \! \/ \@ and friends produce nothing
            }
            return;
        }
        while (Pos < s.Length && char.IsAsciiLetter(s[Pos])) Pos++;
        var name = s[(start + 1)..Pos];
        if (Pos < s.Length && s[Pos] == '*') Pos++;

        if (SectionLevel.TryGetValue(name, out int level))
        {
            SkipOptional();
            var title = System.Text.RegularExpressions.Regex.Replace(Sub(ReadArgument()), @"\s+", " ").Trim();
            ParagraphBreak();
            _o.Append(title).Append("\n\n");
            if (title.Length > 0) Headings.Add((level, title));
            return;
        }
        if (KeepText.Contains(name)) { SkipOptional(); return; }
        if (DropWord.Contains(name)) { SkipSpaces(); return; }
        if (Symbols.TryGetValue(name, out var sym)) { _o.Append(sym); SkipSpaces(); return; }
        if (DropArgs.TryGetValue(name, out int n))
        {
            if (name == "url") { _o.Append(ReadArgument()); return; }
            SkipOptional();
            for (int k = 0; k < n; k++) { ReadArgument(); SkipOptional(); }
            return;
        }
        switch (name)
        {
            case "footnote":
                SkipOptional();
                _o.Append(" (").Append(Sub(ReadArgument()).Trim()).Append(')');
                return;
            case "cite" or "citep" or "citet" or "citealp" or "parencite" or "textcite" or "autocite"
                or "ref" or "eqref" or "autoref" or "cref" or "Cref" or "pageref" or "nameref":
                SkipOptional();
                SkipOptional();
                _o.Append('[').Append(ReadArgument().Trim()).Append(']');
                return;
            case "item":
                NewLine();
                _o.Append("- ");
                var label = SkipOptional();
                if (label != null) _o.Append(Sub(label).Trim()).Append(' ');
                SkipSpaces();
                return;
            case "bibitem":
                SkipOptional();
                NewLine();
                _o.Append('[').Append(ReadArgument().Trim()).Append("] ");
                SkipSpaces();
                return;
            case "c" or "v" or "u" or "H" or "r" or "k": Accent(name[0]); return;
            case "begin": BeginEnvironment(start); return;
            case "end": ReadArgument(); ParagraphBreak(); return;
            default: SkipSpaces(); return; // unknown macro: drop the name, its arguments' text stays
        }
    }

    void BeginEnvironment(int start)
    {
        var env = ReadArgument().Trim();
        if (MathEnvironments.Contains(env))
        {
            NewLine();
            CopyUntil(start, $"\\end{{{env}}}");
            _o.Append('\n');
            return;
        }
        if (VerbatimEnvironments.Contains(env))
        {
            SkipOptional();
            if (env == "minted") ReadArgument();
            var endTag = $"\\end{{{env}}}";
            int stop = s.IndexOf(endTag, Pos, StringComparison.Ordinal);
            if (stop < 0) stop = s.Length;
            NewLine();
            _o.Append(s, Pos, stop - Pos).Append('\n');
            Pos = Math.Min(s.Length, stop + endTag.Length);
            return;
        }
        switch (env)
        {
            case "comment":
                int stop = s.IndexOf(@"\end{comment}", Pos, StringComparison.Ordinal);
                Pos = stop < 0 ? s.Length : stop + @"\end{comment}".Length;
                return;
            case "tabular" or "array":
                SkipOptional();
                ReadArgument();
                break;
            case "tabular*" or "tabularx":
                ReadArgument();
                SkipOptional();
                ReadArgument();
                break;
            case "minipage":
                SkipOptional();
                ReadArgument();
                break;
            case "abstract":
                ParagraphBreak();
                _o.Append("Abstract\n\n");
                return;
            case "thebibliography":
                ReadArgument();
                ParagraphBreak();
                _o.Append("References\n\n");
                return;
            default:
                SkipOptional();
                break;
        }
        ParagraphBreak();
    }

    /// <summary>Copies s[start..] up to and including <paramref name="close"/> verbatim (math).</summary>
    void CopyUntil(int start, string close)
    {
        int stop = s.IndexOf(close, Pos, StringComparison.Ordinal);
        int endPos = stop < 0 ? s.Length : stop + close.Length;
        _o.Append(s, start, endPos - start);
        Pos = endPos;
    }

    void MathInline()
    {
        int start = Pos;
        string delim = At("$$") ? "$$" : "$";
        Pos += delim.Length;
        int i = Pos;
        while (i < s.Length)
        {
            if (s[i] == '\\') { i += 2; continue; }
            if (string.CompareOrdinal(s, i, delim, 0, delim.Length) == 0)
            {
                _o.Append(s, start, i + delim.Length - start);
                Pos = i + delim.Length;
                return;
            }
            i++;
        }
        _o.Append(s, start, s.Length - start); // unclosed: keep as written
        Pos = s.Length;
    }

    // accent + letter -> precomposed letter, for the common Latin ones (other letters lose the accent)
    static readonly Dictionary<char, string> AccentTable = new()
    {
        ['\''] = "a\u00E1e\u00E9i\u00EDo\u00F3u\u00FAy\u00FDA\u00C1E\u00C9I\u00CDO\u00D3U\u00DAc\u0107n\u0144s\u015Bz\u017A",
        ['`'] = "a\u00E0e\u00E8i\u00ECo\u00F2u\u00F9A\u00C0E\u00C8I\u00CCO\u00D2U\u00D9",
        ['^'] = "a\u00E2e\u00EAi\u00EEo\u00F4u\u00FBA\u00C2E\u00CAI\u00CEO\u00D4U\u00DB",
        ['"'] = "a\u00E4e\u00EBi\u00EFo\u00F6u\u00FCy\u00FFA\u00C4E\u00CBI\u00CFO\u00D6U\u00DC",
        ['~'] = "a\u00E3n\u00F1o\u00F5A\u00C3N\u00D1O\u00D5",
        ['c'] = "c\u00E7C\u00C7s\u015F",
        ['v'] = "c\u010Ds\u0161z\u017Er\u0159e\u011BC\u010CS\u0160Z\u017D",
    };

    void Accent(char accent)
    {
        var arg = ReadArgument();
        if (arg == @"\i") arg = "i";
        if (arg.Length == 1 && AccentTable.TryGetValue(accent, out var table))
        {
            for (int k = 0; k + 1 < table.Length; k += 2)
                if (table[k] == arg[0]) { _o.Append(table[k + 1]); return; }
        }
        _o.Append(arg);
    }

    string Sub(string tex)
    {
        var inner = new LatexText(tex);
        var text = inner.Run();
        Headings.AddRange(inner.Headings);
        return text;
    }

    /// <summary>A {...} argument's inside (braces balanced, escapes respected), or the next token.</summary>
    public string ReadArgument()
    {
        while (Pos < s.Length && char.IsWhiteSpace(s[Pos])) Pos++;
        if (Pos >= s.Length) return "";
        if (s[Pos] == '\\')
        {
            int st = Pos++;
            if (Pos < s.Length && char.IsAsciiLetter(s[Pos])) while (Pos < s.Length && char.IsAsciiLetter(s[Pos])) Pos++;
            else Pos++;
            return s[st..Math.Min(Pos, s.Length)];
        }
        if (s[Pos] != '{') return s[Pos++].ToString();
        int depth = 0, begin = Pos + 1;
        for (int i = Pos; i < s.Length; i++)
        {
            if (s[i] == '\\') { i++; continue; }
            if (s[i] == '{') depth++;
            else if (s[i] == '}' && --depth == 0)
            {
                Pos = i + 1;
                return s[begin..i];
            }
        }
        Pos = s.Length; // unbalanced: take the rest
        return s[begin..];
    }

    /// <summary>Skips a [...] argument if one follows (returns its inside), else leaves the position.</summary>
    public string? SkipOptional()
    {
        int i = Pos;
        while (i < s.Length && (s[i] == ' ' || s[i] == '\t')) i++;
        if (i >= s.Length || s[i] != '[') return null;
        int depth = 0;
        for (int j = i + 1; j < s.Length; j++)
        {
            if (s[j] == '\\') { j++; continue; }
            if (s[j] == '{') depth++;
            else if (s[j] == '}') depth--;
            else if (s[j] == ']' && depth == 0)
            {
                Pos = j + 1;
                return s[(i + 1)..j];
            }
        }
        return null;
    }

    void SkipSpaces()
    {
        while (Pos < s.Length && (s[Pos] == ' ' || s[Pos] == '\t')) Pos++;
    }

    void NewLine()
    {
        TrimEndSpaces();
        if (_o.Length > 0 && _o[^1] != '\n') _o.Append('\n');
    }

    void ParagraphBreak()
    {
        TrimEndSpaces();
        if (_o.Length == 0) return;
        if (_o[^1] != '\n') _o.Append('\n');
        if (_o.Length < 2 || _o[^2] != '\n') _o.Append('\n');
    }

    void TrimEndSpaces()
    {
        int n = _o.Length;
        while (n > 0 && (_o[n - 1] == ' ' || _o[n - 1] == '\t')) n--;
        _o.Length = n;
    }
}
