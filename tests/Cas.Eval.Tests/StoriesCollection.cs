using Cas.Resources;
using Cas.Service;
using Cas.Tests.Common;

namespace Cas.Eval.Tests;

/// <summary>The scoring tests' server state: stories260K and a collection "s" (16-token retrieval chunks) holding the
/// given documents, under a directory the test owns. Skips the test when ../shared is absent.</summary>
static class StoriesCollection
{
    public static (ServiceState State, ModelHost Host) Create(string dir, IEnumerable<(string Id, string Text)> docs)
    {
        string model = TestPaths.RequireShared("models/stories260K/stories260K.bin");
        string tok = Path.Combine(Path.GetDirectoryName(model)!, "tok512.bin");
        var state = new ServiceState(new CasServerOptions { DataDir = dir, ResidentBytes = 64L << 20 });
        var host = state.Model(model, tok);
        state.Catalog.Create("s", model, host.Fingerprint, tok, 16);
        state.Catalog.AddDocuments("s", docs.Select(d => (new Document(d.Id, d.Text, d.Id, Document.NoMetadata, Document.NoQuestions), "text")), host.Tokenizer);
        return (state, host);
    }
}
