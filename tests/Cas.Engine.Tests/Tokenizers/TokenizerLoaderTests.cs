using Cas.Engine.Tokenizers;
using Cas.Tests.Common;

namespace Cas.Engine.Tests.Tokenizers;

public class TokenizerLoaderTests
{
    [Fact]
    public void LoadsTokenizerJson_FromTheFileOrItsFolder()
    {
        var file = TestPaths.RequireShared("models/smollm2-135m-instruct-tokenizer/tokenizer.json");
        var a = TokenizerLoader.Load(file);
        var b = TokenizerLoader.Load(Path.GetDirectoryName(file)!);
        Assert.IsType<HfTokenizer>(a);
        Assert.Equal(49152, a.VocabSize);
        Assert.Equal(a.Encode("Hello world"), b.Encode("Hello world"));
        Assert.Equal(new[] { 19556, 905 }, a.Encode("Hello world"));
        Assert.Equal(2, a.SpecialTokenId("<|im_end|>"));
        Assert.Equal(0, a.EosId); // <|endoftext|>, no tokenizer_config.json beside it
    }

    [Fact]
    public void LoadsLlama2cBin()
    {
        var tok = TokenizerLoader.Load(TestPaths.RequireShared("models/stories260K/tok512.bin"));
        Assert.IsType<Llama2cTokenizer>(tok);
        Assert.Equal(512, tok.VocabSize);
    }

    [Fact]
    public void MissingPaths_SayWhatWasTried()
    {
        var dir = Directory.CreateTempSubdirectory("cas-tok-").FullName;
        try
        {
            var e1 = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(dir));
            Assert.Contains(Path.Combine(dir, "tokenizer.json"), e1.Message);
            var missing = Path.Combine(dir, "nothing.json");
            Assert.Contains(missing, Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(missing)).Message);
            var odd = Path.Combine(dir, "weights.dat");
            File.WriteAllBytes(odd, new byte[] { 1, 2, 3 });
            Assert.Contains(".bin", Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(odd)).Message);
            var broken = Path.Combine(dir, "tokenizer.json");
            File.WriteAllText(broken, "{\"model\": ");
            var e4 = Assert.Throws<ModelFormatException>(() => TokenizerLoader.Load(dir));
            Assert.Contains("not valid JSON", e4.Message);
            Assert.Contains(broken, e4.Message);
        }
        finally { Directory.Delete(dir, true); }
    }
}
