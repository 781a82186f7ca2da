using Cas.Engine;

namespace Cas.SelfStudy.Tests;

public class SeedPromptTests
{
    [Fact]
    public void Parse_reads_weights_and_round_trips()
    {
        var mix = SeedPromptMix.Parse(" question=2, summarization=0.5 ,USE-CASE=1,creative=0,generic");
        Assert.Equal(2, mix.Weight(SeedPromptKind.Question));
        Assert.Equal(0.5, mix.Weight(SeedPromptKind.Summarization));
        Assert.Equal(1, mix.Weight(SeedPromptKind.UseCase));
        Assert.Equal(1, mix.Weight(SeedPromptKind.Generic));
        Assert.Equal(0, mix.Weight(SeedPromptKind.Creative));
        Assert.Equal(0, mix.Weight(SeedPromptKind.Structuring));
        Assert.Equal(2 / 4.5, mix.Probability(SeedPromptKind.Question), 12);
        Assert.Equal("summarization=0.5,question=2,use_case=1,generic=1", mix.ToString());
        Assert.Equal(mix.ToString(), SeedPromptMix.Parse(mix.ToString()).ToString());
        Assert.Equal("structuring=1,summarization=1,question=1,use_case=1,creative=1,generic=1", SeedPromptMix.Uniform.ToString());
    }

    [Theory]
    [InlineData("questions=1", "unknown kind 'questions'")]
    [InlineData("question=-1", "must be finite and >= 0")]
    [InlineData("question=0,generic=0", "all seed prompt weights are zero")]
    [InlineData("question=1,question=2", "given twice")]
    [InlineData("question=abc", "not a number")]
    [InlineData("question=1,,generic=1", "empty entry")]
    [InlineData("", "empty seed prompt mix")]
    [InlineData("question=NaN", "must be finite")]
    public void Parse_rejects_bad_mixes_with_clear_messages(string spec, string expected)
    {
        var e = Assert.Throws<InvalidRequestException>(() => SeedPromptMix.Parse(spec));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Sampling_is_deterministic_and_follows_the_weights()
    {
        var mix = SeedPromptMix.Parse("question=3,structuring=1");
        var counts = new Dictionary<SeedPromptKind, int>();
        for (int i = 0; i < 8000; i++)
        {
            var p = mix.SampleAt(77, i);
            counts[p.Kind] = counts.GetValueOrDefault(p.Kind) + 1;
            Assert.Equal(p, mix.SampleAt(77, i));
        }
        Assert.Equal(2, counts.Count);
        Assert.InRange(counts[SeedPromptKind.Question], 6000 - 200, 6000 + 200); // sd ~39
        var seqA = Enumerable.Range(0, 30).Select(i => mix.SampleAt(1, i)).ToList();
        var seqB = Enumerable.Range(0, 30).Select(i => mix.SampleAt(2, i)).ToList();
        Assert.NotEqual(seqA, seqB);
    }

    [Fact]
    public void Every_kind_has_several_distinct_phrasings_and_all_get_used()
    {
        foreach (var kind in SeedPromptKinds.All)
        {
            var list = SeedPrompts.Phrasings(kind);
            Assert.True(list.Count >= 4, $"{kind} has {list.Count} phrasings");
            Assert.Equal(list.Count, list.Distinct().Count());
            var used = new HashSet<string>();
            var rng = new DeterministicRng((ulong)kind);
            for (int i = 0; i < 400; i++) used.Add(SeedPrompts.Sample(kind, rng).Text);
            int expected = kind == SeedPromptKind.Structuring ? list.Count * SeedPrompts.StructuringFormats.Count : list.Count;
            Assert.Equal(expected, used.Count);
        }
    }

    [Fact]
    public void Structuring_prompts_name_a_format_and_ask_to_keep_values_exact()
    {
        var rng = new DeterministicRng(3);
        var formats = new HashSet<string>();
        for (int i = 0; i < 200; i++)
        {
            var p = SeedPrompts.Sample(SeedPromptKind.Structuring, rng);
            Assert.NotNull(p.Format);
            formats.Add(p.Format!);
            Assert.Contains(p.Format!, p.Text);
            Assert.DoesNotContain("{format}", p.Text);
            Assert.Contains("date", p.Text);
        }
        Assert.Equal(["JSON", "TOML", "XML", "YAML", "plain text with one fact per line"], formats.Order(StringComparer.Ordinal));
        Assert.Null(SeedPrompts.Sample(SeedPromptKind.Question, rng).Format);
    }

    [Fact]
    public void Kind_names_parse_and_print()
    {
        foreach (var k in SeedPromptKinds.All) Assert.Equal(k, SeedPromptKinds.Parse(SeedPromptKinds.Name(k)));
        Assert.Equal(SeedPromptKind.UseCase, SeedPromptKinds.Parse("Use-Case"));
        Assert.Equal(["structuring", "summarization", "question", "use_case", "creative", "generic"], SeedPromptKinds.All.Select(SeedPromptKinds.Name));
        Assert.Contains("expected one of", Assert.Throws<InvalidRequestException>(() => SeedPromptKinds.Parse("poem")).Message);
    }

    [Fact]
    public void Framing_puts_passage_and_instruction_in_place_and_cleans_outputs()
    {
        string a = BaseModelFraming.AgentAPrompt("  The passage.\n", "Ask something.");
        Assert.Contains("<passage>\nThe passage.\n</passage>", a);
        Assert.Contains("Instruction: Ask something.", a);
        Assert.EndsWith("<message>\n", a);
        Assert.Equal("What year was it?", BaseModelFraming.CleanAgentAOutput("Message: \"What year was it?\"</message>\nmore text"));
        Assert.Equal("Hi", BaseModelFraming.CleanAgentAOutput("  Hi \n"));
        Assert.Equal("", BaseModelFraming.CleanAgentAOutput("</message>"));

        string t = BaseModelFraming.TeacherContext("P") + BaseModelFraming.ConversationPrompt(" Q? ");
        Assert.EndsWith("<passage>\nP\n</passage>\n\nUser: Q?\nAssistant:", t);
        Assert.Equal("It was 1912.", BaseModelFraming.CleanAnswer(" It was 1912.\nUser: and then?"));
        Assert.Equal("a\nb", BaseModelFraming.CleanAnswer("a\nb"));
    }
}
