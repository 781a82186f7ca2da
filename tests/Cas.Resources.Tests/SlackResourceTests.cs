namespace Cas.Resources.Tests;

public class SlackResourceTests
{
    static string Export => Path.Combine(TestFiles.Samples, "slack");

    [Fact]
    public void ChannelsBecomeDocumentsWithThreadsUnderTheirParents()
    {
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(ResourceSpec.Parse($"slack:{Export}"), report);
        Assert.Equal(["slack:#general", "slack:#random"], docs.Select(d => d.Id));

        var general = docs[0];
        Assert.Equal("""
            [2024-03-01]
            Alice Martin: Kickoff is at 10:00 in #random & online. @Bobby can you book the room?
              Bobby: Booked!
              Alice Martin: One more thing: the room is free again.
            carl.w: Agenda: the agenda doc (https://example.com/agenda)

            [2024-03-02]
            Alice Martin: Notes from yesterday:
              - budget approved
              - next sync @here
            deploybot: Deployed v1.2 to staging
            Gina Guest: Thanks @Alice Martin! See https://example.com/notes
            """, general.Text);
        Assert.Equal("general", general.Metadata["channel"]);
        Assert.Equal("C01GEN", general.Metadata["channel_id"]);
        Assert.Equal("7", general.Metadata["messages"]);
        Assert.Equal("Company-wide announcements", general.Metadata["purpose"]);
        Assert.Equal("2024-03-01", general.Metadata["first_date"]);
        Assert.Equal("2024-03-02", general.Metadata["last_date"]);
        Assert.Equal(Path.Combine(Export, "general"), general.Source);

        Assert.Equal("[2024-03-01]\nBobby: [file: Team photo]", docs[1].Text);
        Assert.False(docs[1].Metadata.ContainsKey("purpose")); // empty purpose is left out

        Assert.Equal(2, report.Count(ResourceIssueKind.SystemMessageSkipped)); // a join notice and a blank message
        Assert.Equal(1, report.EmptyDocumentsSkipped);                          // #quiet has no folder, so no messages
        Assert.Equal("slack:#quiet", report.Issues.Single().Message.Split('\'')[1]);
    }

    [Fact]
    public void MentionsLinksAndEntitiesAreResolved()
    {
        var users = new Dictionary<string, string> { ["U1"] = "Ann Lee" };
        var channels = new Dictionary<string, string> { ["C9"] = "dev" };
        Assert.Equal("@Ann Lee and @old-name and @U2", SlackResource.ResolveText("<@U1> and <@U3|old-name> and <@U2>", users, channels));
        Assert.Equal("see #dev, #ops", SlackResource.ResolveText("see <#C9>, <#C8|ops>", users, channels));
        Assert.Equal("@channel @here @devs", SlackResource.ResolveText("<!channel> <!here> <!subteam^S1|@devs>", users, channels));
        Assert.Equal("mail a@b.c and docs (https://x.y/?a=1&b=2)", SlackResource.ResolveText("mail <mailto:a@b.c|a@b.c> and <https://x.y/?a=1&amp;b=2|docs>", users, channels));
        Assert.Equal("1 < 2 & 3 > 2", SlackResource.ResolveText("1 &lt; 2 &amp; 3 &gt; 2", users, channels));
    }

    [Fact]
    public void MalformedDayFileAndMissingUsersAreReported()
    {
        using var t = new TempDir();
        t.Write("channels.json", """[{"id": "C1", "name": "team"}, {"id": "C2", "name": "../outside"}]""");
        t.Write("team/2024-01-01.json", """[{"user": "U5", "user_profile": {"display_name": "dee"}, "text": "hi", "ts": "1704103200.000100"}, {"user": "U6", "text": "no ts"}]""");
        t.Write("team/2024-01-02.json", """[{"user": "U5", "text": "broken", """);
        var report = new ResourceReport();
        var doc = Assert.Single(TestFiles.ReadAll(new SlackResource(t.Root), report));
        Assert.Equal("[2024-01-01]\ndee: hi", doc.Text);

        Assert.Equal(1, report.MalformedJsonLines);
        Assert.EndsWith("2024-01-02.json", report.IssuesOf(ResourceIssueKind.MalformedJson).Single().Path);
        var messages = report.IssuesOf(ResourceIssueKind.MalformedMessage).ToList();
        Assert.Equal(3, messages.Count);
        Assert.Contains("users.json is missing", messages[0].Message);
        Assert.Contains("'../outside' is not a folder name", messages[1].Message);
        Assert.Contains("no valid \"ts\"", messages[2].Message);
    }

    [Fact]
    public void ExportWithoutChannelsJsonReadsSubfolders()
    {
        using var t = new TempDir();
        t.Write("users.json", """[{"id": "U1", "name": "zed"}]""");
        t.Write("b-chan/2024-01-01.json", """[{"user": "U1", "text": "in b", "ts": "1704103200.1"}]""");
        t.Write("a-chan/2024-01-01.json", """[{"user": "U1", "text": "in a", "ts": "1704103200.1"}]""");
        var report = new ResourceReport();
        var docs = TestFiles.ReadAll(new SlackResource(t.Root), report);
        Assert.Equal(["slack:#a-chan", "slack:#b-chan"], docs.Select(d => d.Id));
        Assert.Equal("[2024-01-01]\nzed: in a", docs[0].Text);
        Assert.Contains("no channels.json", report.Issues.Single().Message);
    }
}
