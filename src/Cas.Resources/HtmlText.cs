using System.Net;
using System.Text;

namespace Cas.Resources;

/// <summary>
/// HTML to plain text for HTML-only email parts: scripts, styles, the head and comments are removed,
/// tags are stripped, entities decoded, block elements (p, div, br, li, tr, h1-h6, ...) end lines,
/// whitespace is collapsed outside &lt;pre&gt;, list items get "- ", and text inside &lt;blockquote&gt;
/// gets a "> " per nesting level (so quoted replies can be trimmed like plain-text ones).
/// </summary>
internal static class HtmlText
{
    static readonly HashSet<string> LineBreak = ["br", "div", "li", "tr", "dt", "dd", "section", "article", "header", "footer", "address", "figcaption"];
    static readonly HashSet<string> ParagraphBreak = ["p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "dl", "pre", "blockquote", "hr", "center", "form", "fieldset"];
    static readonly HashSet<string> Skipped = ["script", "style", "head", "title", "noscript", "template", "svg"];

    public static string ToText(string html)
    {
        var w = new Writer();
        int i = 0, quote = 0, pre = 0;
        while (i < html.Length)
        {
            char c = html[i];
            if (c != '<')
            {
                int next = html.IndexOf('<', i);
                if (next < 0) next = html.Length;
                w.Text(WebUtility.HtmlDecode(html[i..next]).Replace('\u00A0', ' '), quote, pre > 0);
                i = next;
                continue;
            }
            if (string.CompareOrdinal(html, i, "<!--", 0, 4) == 0)
            {
                int end = html.IndexOf("-->", i + 4, StringComparison.Ordinal);
                i = end < 0 ? html.Length : end + 3;
                continue;
            }
            int close = html.IndexOf('>', i + 1);
            if (close < 0) { w.Text(html[i..], quote, pre > 0); break; }
            var (name, closing) = TagName(html, i + 1, close);
            i = close + 1;
            if (name.Length == 0) continue; // <!DOCTYPE>, <?xml?>, stray '<'
            if (!closing && Skipped.Contains(name))
            {
                int end = html.IndexOf("</" + name, i, StringComparison.OrdinalIgnoreCase);
                if (end < 0) { i = html.Length; break; }
                int gt = html.IndexOf('>', end);
                i = gt < 0 ? html.Length : gt + 1;
                continue;
            }
            if (name == "blockquote") { w.Paragraph(); quote = Math.Max(0, quote + (closing ? -1 : 1)); continue; }
            if (name == "pre") { w.Paragraph(); pre = Math.Max(0, pre + (closing ? -1 : 1)); continue; }
            if (name == "li" && !closing) { w.Line(); w.Text("- ", quote, true); continue; }
            if (name is "td" or "th" && closing) { w.Text(" ", quote, false); continue; }
            if (ParagraphBreak.Contains(name)) w.Paragraph();
            else if (LineBreak.Contains(name)) w.Line();
        }
        return TextDecoding.Tidy(w.ToString());
    }

    static (string Name, bool Closing) TagName(string html, int start, int end)
    {
        int i = start;
        bool closing = i < end && html[i] == '/';
        if (closing) i++;
        int n = i;
        while (n < end && char.IsAsciiLetterOrDigit(html[n])) n++;
        return (html[i..n].ToLowerInvariant(), closing);
    }

    sealed class Writer
    {
        readonly StringBuilder _out = new();
        readonly StringBuilder _line = new();
        int _lineQuote;
        bool _space;

        public void Text(string t, int quote, bool keepSpaces)
        {
            if (keepSpaces)
            {
                var parts = t.Split('\n');
                for (int k = 0; k < parts.Length; k++)
                {
                    if (k > 0) Line();
                    Append(parts[k], quote);
                }
                return;
            }
            foreach (char ch in t)
            {
                if (char.IsWhiteSpace(ch)) { _space = _line.Length > 0; continue; }
                if (_space) { _line.Append(' '); _space = false; }
                Append(ch.ToString(), quote);
            }
        }

        void Append(string s, int quote)
        {
            if (s.Length == 0) return;
            if (_line.Length == 0) _lineQuote = quote;
            _line.Append(s);
        }

        public void Line()
        {
            if (_line.Length > 0)
            {
                for (int q = 0; q < _lineQuote; q++) _out.Append("> ");
                _out.Append(_line).Append('\n');
            }
            _line.Clear();
            _space = false;
        }

        public void Paragraph()
        {
            Line();
            _out.Append('\n');
        }

        public override string ToString()
        {
            Line();
            return _out.ToString();
        }
    }
}
