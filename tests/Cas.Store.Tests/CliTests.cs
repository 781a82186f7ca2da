using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Tests.Common;
using static Cas.Store.Tests.StoreTestUtil;

namespace Cas.Store.Tests;

/// <summary>The collection and store commands end to end, with a real cartridge made by `cas train` on stories260K.</summary>
public class CliTests
{
    static (int Rc, string Out, string Err) Cas(params string[] args) => CasCli.Run(args);

    [Fact]
    public void CreateAddImportListExport_RoundTripsARealCartridge()
    {
        TestPaths.RequireShared("models/stories260K/stories260K.bin");
        var dir = TempDir();
        string data = Path.Combine(dir, "data"), doc1 = Path.Combine(dir, "lily.txt"), doc2 = Path.Combine(dir, "tom.txt");
        string story = string.Concat(Enumerable.Repeat("Once upon a time, there was a little girl named Lily. She loved to play with her red ball in the park. ", 3));
        File.WriteAllText(doc1, story);
        File.WriteAllText(doc2, story.Replace("Lily", "Tom").Replace("girl", "boy"));
        string trained = Path.Combine(dir, "lily.safetensors");
        var train = Cas("train", "--data", doc1, "--out", trained, "--tokens", "16", "--steps", "3");
        Assert.True(train.Rc == 0, train.Err);

        Assert.Equal(0, Cas("collection", "create", "tales", "--data-dir", data).Rc);
        var add = Cas("collection", "add", "tales", "--resource", $"text:{doc1}", "--resource", $"text:{doc2}", "--data-dir", data);
        Assert.True(add.Rc == 0, add.Err);
        Assert.Contains("added=2 changed=0 unchanged=0", add.Out);
        Assert.Contains("unchanged=1", Cas("collection", "add", "tales", "--resource", $"text:{doc1}", "--data-dir", data).Out);

        var import = Cas("store", "import", trained, "--collection", "tales", "--document-id", "lily.txt", "--data-dir", data);
        Assert.True(import.Rc == 0, import.Err);
        var ls = Cas("store", "ls", "--data-dir", data);
        string line = Assert.Single(ls.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("tales/lily.txt ", line);
        foreach (var field in new[] { $"source={doc1}", "p=16", "version=1", "dtype=bf16", "state=ok" }) Assert.Contains(field, line);
        Assert.Matches(@" bytes=\d+ ", line);

        string exported = Path.Combine(dir, "out.safetensors");
        Assert.Equal(0, Cas("store", "export", "tales/lily.txt", "--out", exported, "--data-dir", data).Rc);
        var original = Cartridge.Read(trained);
        var back = Cartridge.Read(exported);
        Assert.Equal(original.ModelFingerprint, back.ModelFingerprint);
        for (int l = 0; l < original.Prefix.Layers; l++)
            for (int i = 0; i < original.Prefix.Keys[l].Length; i++)
                Assert.Equal(HalfPrecision.BF16ToFloat(HalfPrecision.FloatToBF16(original.Prefix.Keys[l][i])), back.Prefix.Keys[l][i]);
        var gen = Cas("generate", "--cartridge", exported, "--prompt", "Lily", "--max-tokens", "5");
        Assert.True(gen.Rc == 0, gen.Err);

        var status = Cas("collection", "status", "tales", "--data-dir", data);
        Assert.Contains("fresh=1 stale=0 missing=1 bad=0", status.Out);
        File.WriteAllText(doc1, story + " The end.");
        Assert.Contains("changed=1", Cas("collection", "add", "tales", "--resource", $"text:{doc1}", "--data-dir", data).Out);
        status = Cas("collection", "status", "tales", "--data-dir", data);
        Assert.Contains("lily.txt state=stale", status.Out);
        Assert.Contains("tom.txt state=missing", status.Out);

        var wrongDoc = Cas("store", "import", trained, "--collection", "tales", "--document-id", "nope.txt", "--data-dir", data);
        Assert.Equal(2, wrongDoc.Rc);
        Assert.StartsWith("error: ", wrongDoc.Err.Trim());
        var missing = Cas("store", "export", "tales/nope", "--out", exported, "--data-dir", data);
        Assert.Equal(2, missing.Rc);
        Assert.Contains("cas store ls", missing.Err);

        Assert.Equal(0, Cas("store", "verify", "--data-dir", data).Rc);
        Assert.Contains("removed=tales/lily.txt", Cas("store", "rm", "tales/lily.txt", "--data-dir", data).Out);
        Assert.Equal(0, Cas("store", "compact", "--data-dir", data).Rc);
        Assert.Empty(Cas("store", "ls", "--data-dir", data).Out.Trim());
    }
}
