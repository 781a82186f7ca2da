using System.CommandLine;

namespace Cas.Cli.Commands;

/// <summary>
/// Every option that more than one command takes, made in one place so that a name means one thing everywhere (a test
/// walks the command tree and checks that each name has one description). Defaults may differ per command; the
/// meaning may not.
/// </summary>
static class Options
{
    public static Option<string> Model() => new("--model")
    {
        Description = "Hugging Face model folder (config.json + *.safetensors) or llama2.c .bin checkpoint. Default: ../shared/models/stories260K/stories260K.bin",
    };

    public static Option<string?> Collection() => new("--collection")
    {
        Description = "Name of a collection (`cas collection ls` lists them).",
    };

    public static Option<int> MaxTokens(int defaultValue) => new("--max-tokens")
    {
        Description = "Most tokens to generate.", DefaultValueFactory = _ => defaultValue,
    };

    public static Option<float> Temperature() => new("--temperature")
    {
        Description = "0 = greedy.", DefaultValueFactory = _ => 0f,
    };

    /// <summary>How a loaded model's weight matrices are held in memory (<see cref="Cas.Engine.Models.WeightStorage"/>).</summary>
    public static Option<string> WeightStorage()
    {
        var o = new Option<string>("--weight-storage")
        {
            Description = "How the model's weight matrices are held in memory: fp32 (widened, the default) or file (the checkpoint's own " +
                          "precision: a bf16/fp16 Hugging Face model stays 16-bit, half the memory and half the bytes read per token; " +
                          "a llama2.c .bin is fp32 either way).",
            DefaultValueFactory = _ => "fp32",
        };
        o.AcceptOnlyFromAmong("fp32", "file");
        return o;
    }

    public static Cas.Engine.Models.WeightStorage ParseWeightStorage(string? value) =>
        value == "file" ? Cas.Engine.Models.WeightStorage.File : Cas.Engine.Models.WeightStorage.Float32;

    public static Option<string> Tokenizer() => new("--tokenizer")
    {
        Description = "tokenizer.json (or its folder) or llama2.c tok*.bin. Default where a model is loaded: the model folder's tokenizer.json, or the tok*.bin beside a .bin checkpoint.",
    };

    public static Option<ulong> Seed(ulong defaultValue) => new("--seed")
    {
        Description = "Seed of the command's random choices (sampling, probes, example order); the same seed gives the same output.",
        DefaultValueFactory = _ => defaultValue,
    };

    public static Option<bool> Resume() => new("--resume")
    {
        Description = "Continue an interrupted run from what it already wrote (the same settings and data are required).",
    };

    public static Option<string> Out() => new("--out")
    {
        Description = "File to write: a cartridge (.safetensors; cas train also keeps its checkpoint in OUT.ckpt) or, for synthesize, a dataset (.casds).",
        Required = true,
    };

    public static Option<string> Data() => new("--data")
    {
        Description = "A self-study dataset (.casds) or a plain UTF-8 document (probes are made from it).",
        Required = true,
    };

    public static Option<int?> ChunkTokens() => new("--chunk-tokens")
    {
        Description = "Largest chunk of a document, in tokens, that the teacher reads. Default: derived from the model's context.",
    };

    public static Option<int> ProbesPerChunk(int defaultValue) => new("--probes-per-chunk")
    {
        Description = "Document data: probes made per chunk (the teacher continues each one).",
        DefaultValueFactory = _ => defaultValue,
    };

    public static Option<int> ContinuationTokens() => new("--continuation-tokens")
    {
        Description = "Document data: most tokens the teacher writes after each probe (evaluate with the value training used).",
        DefaultValueFactory = _ => new Cas.Training.DocumentProbeOptions().ContinuationTokens,
    };

    public static Option<int?> CartridgeTokens() => new("--tokens")
    {
        Description = "p: cartridge size in KV slots (cas train's default: min(2048, context/4)).",
    };

    public static Option<string> ChatFormat(string defaultValue) => new("--chat-format")
    {
        Description = "auto | chatml | llama3 | llama2 | plain (base also means plain). auto: the tokenizer_config.json template, else the tokenizer's special tokens, else plain text.",
        DefaultValueFactory = _ => defaultValue,
    };

    public static Option<int> TeacherTopK(int defaultValue) => new("--teacher-top-k")
    {
        Description = "Most teacher log-probs kept per target position.",
        DefaultValueFactory = _ => defaultValue,
    };

    public static Option<string[]> Cartridges(bool required) => new("--cartridge")
    {
        Description = "Cartridge file (.safetensors); repeat to compose several, in the given order.",
        Required = required, AllowMultipleArgumentsPerToken = false, Arity = ArgumentArity.OneOrMore,
    };

    public static Option<string> Config() => new("--config")
    {
        Description = "Folder or config.json of the model shape (random weights). Default: SmolLM2-135M's config in ../shared, else the built-in copy of it.",
    };

    public static Option<int?> Steps() => new("--steps")
    {
        Description = "Optimizer steps to run (cas train: in all; collection train: per document, each one batch of its examples). Default: from --epochs.",
    };

    public static Option<long> ResidentMb(long defaultValue) => new("--resident-mb")
    {
        Description = "Budget of the resident tier in MiB: cartridge K/V in compute layout (fp32), plus, when training, their gradients and AdamW moments. Never exceeded.",
        DefaultValueFactory = _ => defaultValue,
    };

    public static Option<int> RetrievalChunkTokens(int defaultValue) => new("--retrieval-chunk-tokens")
    {
        Description = "Size of the chunks kept for retrieval and the RAG baseline, in tokens.", DefaultValueFactory = _ => defaultValue,
    };

    public static Option<string> DataDir() => new("--data-dir")
    {
        Description = "Folder of the collections and the cartridge store.", DefaultValueFactory = _ => "cas-data",
    };

    public static Option<bool> Fp32() => new("--fp32")
    {
        Description = "Store cartridges as F32 on disk (default BF16: half the bytes).",
    };

    public static Option<string[]> Resources() => new("--resource")
    {
        Description = "Input documents as KIND:PATH[#field] (kinds: " + string.Join(", ", Cas.Resources.ResourceSpec.Kinds) + "); repeat for several.",
        Required = true, AllowMultipleArgumentsPerToken = false,
    };

    public static Option<bool> Strict() => new("--strict")
    {
        Description = "Stop at the first input that would be skipped or altered while reading resources.",
    };
}
