using Cas.Collections;
using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Store;

namespace Cas.Service;

/// <summary>How the server runs. Defaults: loopback, HTTP/2 cleartext, no API key, 16 MiB messages.</summary>
public sealed record CasServerOptions
{
    /// <summary>Folder of the catalog and the cartridge store (as `cas collection`/`cas store` use it).</summary>
    public string DataDir { get; init; } = "cas-data";
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0: any free port (see <see cref="CasServer.Address"/>).</summary>
    public int Port { get; init; } = 50051;
    /// <summary>The model a new collection gets when it names none; null: collections must name theirs.</summary>
    public string? ModelPath { get; init; }
    /// <summary>The tokenizer of <see cref="ModelPath"/>.</summary>
    public string? TokenizerPath { get; init; }
    /// <summary>When set, every call but health checks must send it in the x-api-key header (else UNAUTHENTICATED).</summary>
    public string? ApiKey { get; init; }
    /// <summary>A PKCS#12 certificate: serve TLS (HTTP/2 over TLS) instead of cleartext.</summary>
    public string? TlsCertificatePath { get; init; }
    public string? TlsCertificatePassword { get; init; }
    /// <summary>Largest message received or sent (export streams 1 MiB pieces, so this bounds requests).</summary>
    public int MaxMessageBytes { get; init; } = 16 << 20;
    /// <summary>The budget manager's resident (fp32 KV) and host (stored bytes) tiers.</summary>
    public long ResidentBytes { get; init; } = 2L << 30;
    public long HostBytes { get; init; } = 2L << 30;
    /// <summary>How long a question waits for room in the resident budget before RESOURCE_EXHAUSTED.</summary>
    public TimeSpan WaitForRoom { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>
    /// The recipe StartTraining starts from (the request's steps, lr, seed and p override it); the resident budget
    /// is the server's (<see cref="ResidentBytes"/>), not this record's.
    /// </summary>
    public Cas.Jobs.CasTrainingOptions Training { get; init; } = new();
    /// <summary>Most sequences decoded in one batched step per model.</summary>
    public int MaxBatch { get; init; } = 64;
    /// <summary>
    /// Most bytes the decoding sequences' own KV caches hold together (prompt + answer slots; the cartridges they attend to
    /// are resident once and counted in <see cref="ResidentBytes"/>). A question waits for room; one that can never fit
    /// is refused (INVALID_ARGUMENT, saying so).
    /// </summary>
    public long SequenceKvBytes { get; init; } = 2L << 30;
    /// <summary>How loaded models hold their weight matrices: fp32, or the checkpoint's own bf16/fp16 (half the memory and bytes per token).</summary>
    public Cas.Engine.Models.WeightStorage WeightStorage { get; init; } = Cas.Engine.Models.WeightStorage.Float32;
    /// <summary>Least level logged (Information shows one line per refused call).</summary>
    public Microsoft.Extensions.Logging.LogLevel LogLevel { get; init; } = Microsoft.Extensions.Logging.LogLevel.Information;
}

/// <summary>A loaded model with its tokenizer, fingerprint and decode scheduler (one per model path + tokenizer).</summary>
public sealed class ModelHost : IDisposable
{
    internal ModelHost(string modelPath, string tokenizerPath, int maxBatch, WeightStorage storage = WeightStorage.Float32, long maxCacheBytes = long.MaxValue)
    {
        ModelPath = modelPath; TokenizerPath = tokenizerPath;
        Model = ModelLoader.Load(modelPath, storage);
        Tokenizer = TokenizerLoader.Load(tokenizerPath);
        if (Tokenizer.VocabSize > Model.Config.VocabSize)
            throw new ModelFormatException($"the tokenizer at {tokenizerPath} has {Tokenizer.VocabSize} tokens but the model has a vocabulary of {Model.Config.VocabSize}; they do not belong together.");
        Fingerprint = Cartridge.Fingerprint(Model);
        Transformer = new Transformer(Model);
        Scheduler = new DecodeScheduler(Transformer, maxBatch, maxCacheBytes);
    }

    public string ModelPath { get; }
    public string TokenizerPath { get; }
    public Model Model { get; }
    public ITokenizer Tokenizer { get; }
    public string Fingerprint { get; }
    public Transformer Transformer { get; }
    public DecodeScheduler Scheduler { get; }
    public ModelConfig Config => Model.Config;

    // A second Transformer over the same weights (Transformer belongs to the decode scheduler's thread), made on first use.
    readonly object _sideGate = new();
    Transformer? _side;

    /// <summary>
    /// Runs <paramref name="work"/> on this model's one Transformer for work off the decode thread (scoring an answer,
    /// embedding a text for dense retrieval), one caller at a time.
    /// </summary>
    public T OffDecodeThread<T>(Func<Transformer, T> work)
    {
        lock (_sideGate) return work(_side ??= new Transformer(Model));
    }

    public void Dispose() => Scheduler.Dispose();
}

/// <summary>
/// What the services share for the life of the process: the catalog, the one store and budget manager, and the models
/// (loaded on first use).
/// </summary>
public sealed class ServiceState : IDisposable
{
    readonly Dictionary<(string, string), Lazy<ModelHost>> _models = new();
    readonly object _gate = new();

    public ServiceState(CasServerOptions options)
    {
        Options = options;
        Catalog = new CollectionCatalog(options.DataDir);
        try
        {
            Store = new FasterCartridgeStore(options.DataDir);
            Budget = new BudgetManager(Store, new BudgetOptions { ResidentBytes = options.ResidentBytes, HostBytes = options.HostBytes, WaitForRoom = options.WaitForRoom });
        }
        catch { Store?.Dispose(); Catalog.Dispose(); throw; }
        Training = new TrainingRuns(this);
        Dense = new DenseIndex(Catalog);
    }

    public CasServerOptions Options { get; }
    public CollectionCatalog Catalog { get; }
    public ICartridgeStore Store { get; }
    public BudgetManager Budget { get; }
    /// <summary>The training jobs running in this process.</summary>
    public TrainingRuns Training { get; }
    /// <summary>Dense retrieval: chunk vectors from the collections' own models.</summary>
    public DenseIndex Dense { get; }

    /// <summary>The model (loaded once, shared by every collection of it).</summary>
    public ModelHost Model(string modelPath, string tokenizerPath)
    {
        Lazy<ModelHost> lazy;
        lock (_gate)
        {
            var key = (Path.GetFullPath(modelPath), Path.GetFullPath(tokenizerPath));
            if (!_models.TryGetValue(key, out lazy!))
                _models[key] = lazy = new Lazy<ModelHost>(() => new ModelHost(key.Item1, key.Item2, Options.MaxBatch, Options.WeightStorage, Options.SequenceKvBytes));
        }
        try { return lazy.Value; }
        catch
        {
            lock (_gate) { var key = (Path.GetFullPath(modelPath), Path.GetFullPath(tokenizerPath)); if (_models.TryGetValue(key, out var l) && l == lazy) _models.Remove(key); }
            throw;
        }
    }

    /// <summary>The collection, or NOT_FOUND.</summary>
    public CollectionInfo Collection(string name)
    {
        if (string.IsNullOrEmpty(name)) throw new InvalidRequestException("name the collection.");
        return Catalog.Find(name) ?? throw new NotFoundException($"no collection '{name}'; ListCollections shows the ones there are.");
    }

    /// <summary>The collection's model, checked against the fingerprint recorded when it was created.</summary>
    public ModelHost ModelOf(CollectionInfo c)
    {
        var host = Model(c.ModelPath, c.TokenizerPath);
        if (!string.Equals(host.Fingerprint, c.ModelFingerprint, StringComparison.OrdinalIgnoreCase))
            throw new FailedPreconditionException($"the model at {c.ModelPath} is not the one collection '{c.Name}' was created with (fingerprint {Cartridge.ShortFingerprint(host.Fingerprint)}, recorded {Cartridge.ShortFingerprint(c.ModelFingerprint)}).");
        return host;
    }

    public void Dispose()
    {
        Training.StopAll(); // jobs save their snapshot and record themselves cancelled before the store closes
        List<Lazy<ModelHost>> models;
        lock (_gate) { models = [.. _models.Values]; _models.Clear(); }
        foreach (var m in models) if (m.IsValueCreated) m.Value.Dispose();
        Budget.Dispose();
        Store.Dispose();
        Catalog.Dispose();
    }
}
