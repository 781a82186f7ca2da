using System.Text;

namespace Cas.Resources.Tests;

public class EmailResourceTests
{
    static string Mbox => Path.Combine(TestFiles.Samples, "email", "project.mbox");

    [Fact]
    public void MboxMessagesAreGroupedIntoThreads()
    {
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(ResourceSpec.Parse($"email:{Mbox}"), report);
        Assert.Equal(["email:thread:<kickoff-1@example.com>", "email:thread:<lunch-4@example.com>"], docs.Select(d => d.Id));

        var kickoff = docs[0];
        Assert.Equal("""
            Subject: Kickoff for the café project

            From: Alice Martín <alice@example.com>
            To: team@example.com
            Date: Tue, 5 Mar 2024 10:00:00 +0000

            Hi team,

            The café project starts on Monday. We will meet in room 4 and review the budget.

            Alice

            From: Bob Stone <bob@example.com>
            To: Alice Martin <alice@example.com>, team@example.com
            Date: Tue, 5 Mar 2024 11:30:00 +0000

            Sounds good. I will bring the café budget sheet.

            From: "Carol Diaz" <carol@example.com>
            To: team@example.com
            Date: Wed, 6 Mar 2024 09:15:00 +0100 (CET)

            I can’t join on Monday & Tuesday.

            Agenda:

            - Budget
            - Timeline
            """, kickoff.Text);
        Assert.Equal("3", kickoff.Metadata["messages"]);
        Assert.Equal("Kickoff for the café project", kickoff.Metadata["subject"]);
        Assert.Equal("Alice Martín, Bob Stone, Carol Diaz", kickoff.Metadata["participants"]);
        Assert.Equal("<kickoff-1@example.com> <reply-2@example.com> <carol-3@example.com>", kickoff.Metadata["message_ids"]);
        Assert.Equal("2024-03-05T10:00:00+00:00", kickoff.Metadata["first_date"]);
        Assert.Equal($"{Mbox}:2", kickoff.Source);

        var lunch = docs[1];
        Assert.Contains("Anyone up for lunch?\nFrom now on, Fridays are pizza days.", lunch.Text); // mboxrd ">From " unescaped
        Assert.EndsWith("Date: Thu, 7 Mar 2024 09:00:00 -0500\n\nCount me in.", lunch.Text); // "Original Message" block trimmed
        Assert.Equal("Dave, Erin", lunch.Metadata["participants"]);

        Assert.Equal(1, report.Count(ResourceIssueKind.AttachmentSkipped)); // budget.pdf
        // Bob: 2 attribution + 2 quoted lines; Carol: 1 blockquote line; Erin: 3 lines of the original message
        Assert.Equal(8, report.Count(ResourceIssueKind.QuotedLinesTrimmed));
        Assert.False(report.HasProblems);
    }

    [Fact]
    public void QuotesAreKeptWhenTrimmingIsOff()
    {
        var docs = TestFiles.ReadAll(new EmailResource(Mbox) { TrimQuotes = false });
        Assert.Contains("> The café project starts on Monday.", docs[0].Text);
        Assert.Contains("> Hi team, the café project starts on Monday.", docs[0].Text); // from the HTML blockquote
        Assert.Contains("-----Original Message-----", docs[1].Text);
    }

    static string Eml(string from, string subject, string id, string date, string body, string extra = "") =>
        $"From: {from}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: {id}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n";

    [Fact]
    public void FolderOfEmlFilesThreadsAcrossFilesByReferencesAndSubject()
    {
        using var t = new TempDir();
        // the reply is stored first and dated later; a second reply only shares the subject
        t.Write("mail/b/reply.eml", Eml("Bo <bo@x.org>", "Re: Budget", "<r1@x.org>", "Mon, 1 Jan 2024 12:00:00 +0000",
            "Approved.\r\n\r\nOn Mon, 1 Jan 2024, Al wrote:\r\n> Please approve.", "In-Reply-To: <root@x.org>\r\n"));
        t.Write("mail/a/root.eml", Eml("Al <al@x.org>", "Budget", "<root@x.org>", "Mon, 1 Jan 2024 09:00:00 +0000", "Please approve."));
        t.Write("mail/c/late.eml", Eml("Cy <cy@x.org>", "AW: [team] Budget", "<c1@x.org>", "Tue, 2 Jan 2024 08:00:00 +0000", "Late to the party."));
        t.Write("mail/d/other.eml", Eml("Di <di@x.org>", "Budget", "<other@x.org>", "Wed, 3 Jan 2024 08:00:00 +0000", "A new topic with the same subject."));
        t.Write("mail/notes.txt", "not an email");

        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new EmailResource(t.PathOf("mail")), report);
        Assert.Equal(["email:thread:<root@x.org>", "email:thread:<other@x.org>"], docs.Select(d => d.Id));
        Assert.Equal("Al, Bo, Cy", docs[0].Metadata["participants"]); // ordered by date, not by file
        Assert.Contains("Late to the party.", docs[0].Text);
        Assert.Single(docs[0].Text.Split('\n'), l => l.StartsWith("Subject:")); // "AW: [team] Budget" is the same subject
        Assert.Equal(4, report.FilesRead);
        Assert.Equal(t.PathOf("mail/a/root.eml"), docs[0].Source);
    }

    [Fact]
    public void DuplicateMessageIdsAreReadOnce()
    {
        using var t = new TempDir();
        var eml = Eml("Al <al@x.org>", "Hi", "<same@x.org>", "Mon, 1 Jan 2024 09:00:00 +0000", "Hello.");
        t.Write("m/1.eml", eml);
        t.Write("m/2.eml", eml);
        var report = new ResourceReport();
        var doc = Assert.Single(TestFiles.ReadAll(new EmailResource(t.PathOf("m")), report));
        Assert.Equal("1", doc.Metadata["messages"]);
        Assert.Contains("seen before", report.Issues.Single().Message);
    }

    [Fact]
    public void UnknownCharsetAndBadUtf8AreReported()
    {
        using var t = new TempDir();
        var raw = new List<byte>();
        raw.AddRange(Encoding.ASCII.GetBytes("From: a@x.org\nSubject: odd\nMessage-ID: <odd@x.org>\nContent-Type: text/plain; charset=x-unknown-8\n\ncaf"));
        raw.Add(0xE9);
        raw.AddRange("\n"u8.ToArray());
        var path = t.WriteBytes("odd.eml", raw.ToArray());
        var report = new ResourceReport();
        var doc = Assert.Single(TestFiles.ReadAll(new EmailResource(path), report));
        Assert.EndsWith("caf\uFFFD", doc.Text);
        Assert.Contains("unknown charset 'x-unknown-8'", report.IssuesOf(ResourceIssueKind.MalformedMessage).Single().Message);
        Assert.Equal(1, report.FilesDecodedWithReplacement);
    }

    [Fact]
    public void WindowsCharsetsDecode()
    {
        using var t = new TempDir();
        var raw = new List<byte>();
        raw.AddRange(Encoding.ASCII.GetBytes("From: a@x.org\r\nSubject: =?windows-1252?Q?=93quoted=94?=\r\nContent-Type: text/plain; charset=\"windows-1252\"\r\n\r\n"));
        raw.AddRange([0x93, (byte)'h', (byte)'i', 0x94, (byte)' ', 0x80, (byte)'5']);
        var path = t.WriteBytes("w.eml", raw.ToArray());
        var doc = Assert.Single(TestFiles.ReadAll(new EmailResource(path)));
        Assert.Equal("email:thread:w.eml:0", doc.Id); // no Message-ID: named by file
        Assert.Equal("\u201cquoted\u201d", doc.Metadata["subject"]);
        Assert.EndsWith("\u201chi\u201d \u20ac5", doc.Text);
    }

    [Theory]
    [InlineData("=?UTF-8?B?Q2Fmw6kgbWVldGluZw==?=", "Café meeting")]
    [InlineData("=?utf-8?q?caf=C3=A9_au_lait?=", "café au lait")]
    [InlineData("=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard")]
    [InlineData("=?UTF-8?Q?a?= =?UTF-8?Q?b?=", "ab")]       // white space between encoded words goes
    [InlineData("=?UTF-8?Q?a?= plain =?UTF-8?Q?b?=", "a plain b")]
    [InlineData("=?UTF-8*en?Q?hi?=", "hi")]              // RFC 2231 language tag
    [InlineData("no encoding here", "no encoding here")]
    [InlineData("=?bogus-charset?Q?x?=", "=?bogus-charset?Q?x?=")] // left as written
    public void EncodedWords(string input, string expected) => Assert.Equal(expected, Mime.DecodeEncodedWords(input));

    [Fact]
    public void FoldedHeadersAreUnfolded()
    {
        var h = MailHeaders.Parse("Subject: a long\r\n\tsubject line\r\nTo: x@y,\r\n  z@w\r\nX-Empty:\r\n\r\nbody"u8, out int bodyStart);
        Assert.Equal("a long\tsubject line", h["subject"]);
        Assert.Equal("x@y,  z@w", h["To"]);
        Assert.Equal("", h["X-Empty"]);
        Assert.Null(h["Cc"]);
        Assert.Equal("body", Encoding.ASCII.GetString("Subject: a long\r\n\tsubject line\r\nTo: x@y,\r\n  z@w\r\nX-Empty:\r\n\r\nbody"u8[bodyStart..]));
    }

    [Theory]
    [InlineData("Tue, 5 Mar 2024 10:00:00 +0000", "2024-03-05T10:00:00+00:00")]
    [InlineData("5 Mar 2024 10:00 -0500", "2024-03-05T10:00:00-05:00")]
    [InlineData("Wed, 06 Mar 2024 09:15:00 +0100 (CET)", "2024-03-06T09:15:00+01:00")]
    [InlineData("Thu, 7 Mar 24 08:00:00 PST", "2024-03-07T08:00:00-08:00")]
    [InlineData("Fri, 1 Jan 1999 23:59:60 GMT", "1999-01-01T23:59:59+00:00")] // leap second clamped
    public void Dates(string input, string expected) =>
        Assert.Equal(expected, Mime.ParseDate(input)!.Value.ToString("yyyy-MM-ddTHH:mm:sszzz"));

    [Theory]
    [InlineData("")]
    [InlineData("yesterday")]
    [InlineData("32 Foo 2024 10:00")]
    public void BadDatesAreNull(string input) => Assert.Null(Mime.ParseDate(input));

    [Theory]
    [InlineData("Re: Budget", "budget", true)]
    [InlineData("RE: Re[2]: Fwd: [team]  Budget  plan", "budget plan", true)]
    [InlineData("AW: Budget", "budget", true)]
    [InlineData("[team] Budget", "budget", false)]
    [InlineData("Regarding the budget", "regarding the budget", false)]
    public void SubjectsNormalize(string subject, string expected, bool reply)
    {
        Assert.Equal(expected, Mime.NormalizeSubject(subject, out bool isReply));
        Assert.Equal(reply, isReply);
    }

    [Fact]
    public void QuotedPrintableAndBase64Decode()
    {
        var ctx = new MailContext(new ResourceReport(), "x", 0);
        Assert.Equal("café = costly, soft break", Encoding.UTF8.GetString(
            Mime.DecodeTransfer("caf=C3=A9 =3D costly, soft =\r\nbreak"u8, "quoted-printable", ctx)));
        Assert.Equal("hello world", Encoding.UTF8.GetString(Mime.DecodeTransfer("aGVsbG8g\r\nd29ybGQ="u8, "Base64", ctx)));
        Assert.Equal("hello world", Encoding.UTF8.GetString(Mime.DecodeTransfer("aGVsbG8gd29ybGQ"u8, "base64", ctx))); // padding missing
        Assert.Equal("as is", Encoding.UTF8.GetString(Mime.DecodeTransfer("as is"u8, "8bit", ctx)));
    }

    [Fact]
    public void HtmlBecomesText()
    {
        var html = """
            <!DOCTYPE html><html><head><title>T</title><style>.a{}</style></head>
            <body><script type="text/javascript">var x = "<p>";</script>
            <h1>Title</h1><p>One&nbsp;&amp;   two<br>three &lt;four&gt; &#233;</p>
            <!-- hidden -->
            <table><tr><td>a</td><td>b</td></tr></table>
            <pre>  keep   spaces
            here</pre>
            <blockquote>quoted <blockquote>deeper</blockquote></blockquote>
            </body></html>
            """;
        Assert.Equal("Title\n\nOne & two\nthree <four> é\n\na b\n\n  keep   spaces\nhere\n\n> quoted\n\n> > deeper", HtmlText.ToText(html));
    }

    [Fact]
    public void AttributionIsOnlyTrimmedBeforeQuotes()
    {
        var text = EmailResource.TrimQuoted("I think she wrote:\nthe plan is fine.\n\nOn Mon, Al <a@x>\nwrote:\n\n> old\n> text\nBye", out int trimmed);
        Assert.Equal("I think she wrote:\nthe plan is fine.\n\n\nBye", text);
        Assert.Equal(4, trimmed);
    }

    [Fact]
    public void MissingMailboxIsReported()
    {
        using var t = new TempDir();
        var report = new ResourceReport();
        Assert.Empty(TestFiles.ReadAll(new EmailResource(t.PathOf("none.mbox")), report));
        Assert.Equal(1, report.UnreadableFiles);
    }
}
