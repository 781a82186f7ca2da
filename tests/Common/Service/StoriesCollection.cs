using Cas.Engine;
using Cas.Engine.Cartridges;
using Cas.Engine.Models;
using Cas.Engine.Tokenizers;
using Cas.Service.V1;
using Google.Protobuf;

namespace Cas.Tests.Common;

/// <summary>
/// The small collection the service tests put on a server with stories260K: three short documents ("cat", "ship",
/// "moon"), first-k cartridges (p = 16) for "cat" and "ship" imported over gRPC, "moon" without one. Test projects that
/// talk to a <c>CasServer</c> include this folder (<c>tests/Common/Service/*.cs</c>).
/// </summary>
public static class StoriesCollection
{
    public const string Name = "stories";
    public const int CartridgeTokens = 16;
    public const int ChunkTokens = 16;

    public static readonly (string Id, string Text)[] Docs =
    [
        ("cat", "Lily had a small cat named Tom. The cat liked to play with a red ball in the garden. One day the cat ran after the ball and found a frog."),
        ("ship", "Ben saw a big ship on the sea. The ship had white sails and a loud horn. Ben waved at the sailors and they waved back."),
        ("moon", "At night Sue looked at the moon. The moon was round and bright. Sue wished she could fly to the moon in a rocket."),
    ];

    /// <summary>The documents that get a cartridge.</summary>
    public static readonly string[] WithCartridges = ["cat", "ship"];

    /// <summary>
    /// Creates the collection through <paramref name="invoker"/>, adds the documents (streamed) and imports the cartridges,
    /// written as files under <paramref name="dir"/>; returns document id → cartridge file.
    /// </summary>
    public static async Task<Dictionary<string, string>> CreateAsync(Grpc.Core.CallInvoker invoker, Model model, ITokenizer tokenizer, string dir)
    {
        var collections = new CollectionService.CollectionServiceClient(invoker);
        await collections.CreateCollectionAsync(new CreateCollectionRequest { Name = Name, ChunkTokens = ChunkTokens });
        await AddDocs(collections, Name, Docs);
        var files = new Dictionary<string, string>();
        foreach (var id in WithCartridges)
        {
            var file = Path.Combine(dir, id + ".safetensors");
            MakeCartridge(model, tokenizer, Docs.First(d => d.Id == id).Text, file);
            files[id] = file;
            await Import(new CartridgeService.CartridgeServiceClient(invoker), file, Name, id);
        }
        return files;
    }

    /// <summary>A first-k cartridge of the document (its BOS + first tokens' KV), saved for import.</summary>
    public static void MakeCartridge(Model model, ITokenizer tokenizer, string text, string file)
    {
        var ids = Prompting.Encode(tokenizer, text, addStart: true);
        var prefix = CartridgeInit.FirstK(model, ids, CartridgeTokens);
        Cartridge.ForModel(model, prefix, CartridgeInitKind.FirstK).Save(file);
    }

    /// <summary>AddDocuments with one document per message, the collection named in the first.</summary>
    public static async Task<AddDocumentsResponse> AddDocs(CollectionService.CollectionServiceClient client, string collection, IEnumerable<(string Id, string Text)> docs)
    {
        using var call = client.AddDocuments();
        bool first = true;
        foreach (var (id, text) in docs)
        {
            var m = new AddDocumentsRequest { Collection = first ? collection : "" };
            m.Documents.Add(new DocumentUpload { Id = id, Text = text });
            await call.RequestStream.WriteAsync(m);
            first = false;
        }
        await call.RequestStream.CompleteAsync();
        return await call;
    }

    /// <summary>ImportCartridge of a file in 4 KiB pieces, labelled as the collection's document.</summary>
    public static async Task<CartridgeInfo> Import(CartridgeService.CartridgeServiceClient client, string file, string collection, string document)
    {
        var bytes = await File.ReadAllBytesAsync(file);
        using var call = client.ImportCartridge();
        const int piece = 4096;
        for (int at = 0; at < bytes.Length; at += piece)
        {
            var m = new ImportCartridgeRequest { Data = ByteString.CopyFrom(bytes, at, Math.Min(piece, bytes.Length - at)) };
            if (at == 0) { m.Collection = collection; m.DocumentId = document; }
            await call.RequestStream.WriteAsync(m);
        }
        await call.RequestStream.CompleteAsync();
        return await call;
    }
}
