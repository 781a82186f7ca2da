using System.Buffers.Binary;
using Cas.Engine;

namespace Cas.SelfStudy.Tests;

public class DatasetTests : IDisposable
{
    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    static void WriteAll(string path, IEnumerable<Conversation> convs, DatasetWriterOptions? o = null)
    {
        using var w = DatasetWriter.Open(path, resume: false, o ?? Make.NoSync);
        foreach (var c in convs) w.Append(c);
    }

    [Fact]
    public void Round_trip_keeps_every_field_and_metadata()
    {
        var path = dir.File("a.casds");
        var convs = Enumerable.Range(0, 20).Select(i => Make.Conversation((ulong)i * 1000 + 7, answerTokens: i, k: 20)).ToList();
        // An extreme record too: max-like id, no targets, k = 0 positions, -inf log-probs, char-only chunk.
        var inf = new SparseTargets([0, 0, 2], [5, 9], [float.NegativeInfinity, -0.0f]);
        convs.Add(new Conversation(ulong.MaxValue, new ChunkLocation("", -1, -1, 0, 0), "", SeedPromptKind.Generic, "",
            [new ConversationMessage(MessageRole.Assistant, "x", [int.MaxValue, 0], inf), new ConversationMessage(MessageRole.User, "", [])]));
        var meta = new Dictionary<string, string> { ["model"] = "llama-3.2-1b", ["tokenizer"] = "tok ✓", ["top_k"] = "20" };
        WriteAll(path, convs, Make.NoSync with { Metadata = meta });

        using var r = DatasetReader.Open(path);
        Assert.Equal(DatasetFormat.CurrentVersion, r.Version);
        Assert.Equal(meta.OrderBy(kv => kv.Key), r.Metadata.OrderBy(kv => kv.Key));
        var got = r.ReadAll().ToList();
        Assert.Equal(convs.Count, got.Count);
        for (int i = 0; i < convs.Count; i++) Make.SameConversation(convs[i], got[i]);
        Assert.Null(r.TornTail);
        // Second enumeration starts over.
        Assert.Equal(convs.Count, r.ReadAll().Count());
    }

    [Fact]
    public void File_starts_with_the_documented_header_and_frame_layout()
    {
        var path = dir.File("layout.casds");
        var c = Make.Conversation(3);
        WriteAll(path, [c]);
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 0x89, (byte)'C', (byte)'A', (byte)'S', (byte)'D', (byte)'S', 0x0D, 0x0A }, bytes[..8]);
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8)));
        uint metaLen = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(12));
        Assert.Equal(1u, metaLen); // empty metadata: a single varint 0
        int data = 16 + (int)metaLen + 4;
        Assert.Equal(Crc32.Compute(bytes.AsSpan(0, data - 4)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(data - 4)));
        Assert.Equal("REC"u8.ToArray(), bytes[data..(data + 3)]);
        Assert.Equal(0xD5, bytes[data + 3]);
        int len = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(data + 4));
        Assert.Equal(Crc32.Compute(bytes.AsSpan(data + 4, 4)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(data + 8)));
        Assert.Equal(bytes.Length, data + 12 + len + 4);
        Assert.Equal(c.Id, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(data + 12)));
        Assert.Equal(Crc32.Compute(bytes.AsSpan(data + 12, len)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(data + 12 + len)));
    }

    [Fact]
    public void Empty_dataset_has_a_header_and_no_records()
    {
        var path = dir.File("empty.casds");
        using (var w = DatasetWriter.Open(path, resume: false)) { Assert.Equal(0, w.Count); Assert.Null(w.MaxId); }
        Assert.Empty(Make.ReadAll(path));
        using (var w = DatasetWriter.Open(path, resume: true, Make.NoSync))
        {
            Assert.Equal(0, w.ExistingCount);
            Assert.Null(w.RepairedTornTail);
            w.Append(Make.Conversation(1));
        }
        Assert.Single(Make.ReadAll(path));
        Assert.False(File.Exists(path + ".lock"));
    }

    [Fact]
    public void Resume_appends_after_existing_records_and_reports_ids()
    {
        var path = dir.File("append.casds");
        var first = new[] { 10ul, 3ul, 77ul }.Select(i => Make.Conversation(i)).ToList();
        WriteAll(path, first);
        var more = new[] { 5ul, 100ul }.Select(i => Make.Conversation(i)).ToList();
        using (var w = DatasetWriter.Open(path, resume: true, Make.NoSync))
        {
            Assert.Equal(3, w.ExistingCount);
            Assert.Equal(new HashSet<ulong> { 10, 3, 77 }, w.Ids.ToHashSet());
            Assert.Equal(77ul, w.MaxId);
            Assert.True(w.Contains(3));
            Assert.False(w.TryAppend(Make.Conversation(3)));
            var e = Assert.Throws<DatasetException>(() => w.Append(Make.Conversation(77)));
            Assert.Contains("already in", e.Message);
            foreach (var c in more) w.Append(c);
            Assert.Equal(5, w.Count);
            Assert.Equal(100ul, w.MaxId);
        }
        var got = Make.ReadAll(path);
        var want = first.Concat(more).ToList();
        Assert.Equal(want.Count, got.Count);
        for (int i = 0; i < want.Count; i++) Make.SameConversation(want[i], got[i]);
    }

    [Fact]
    public void Existing_file_is_refused_without_resume_and_replaced_with_overwrite()
    {
        var path = dir.File("exists.casds");
        WriteAll(path, [Make.Conversation(1)]);
        var e = Assert.Throws<DatasetException>(() => DatasetWriter.Open(path, resume: false));
        Assert.Contains("already exists", e.Message);
        Assert.False(File.Exists(path + ".lock"));
        Assert.Single(Make.ReadAll(path));
        using (var w = DatasetWriter.Open(path, resume: false, Make.NoSync with { Overwrite = true })) w.Append(Make.Conversation(2));
        Assert.Equal(2ul, Assert.Single(Make.ReadAll(path)).Id);
    }

    [Fact]
    public void Torn_tail_at_every_byte_of_the_last_record_is_never_accepted_and_resume_repairs_it()
    {
        var full = dir.File("full.casds");
        var convs = new[] { Make.Conversation(1), Make.Conversation(2), Make.Conversation(3, answerTokens: 10, k: 4) };
        WriteAll(full, convs);
        long lastStart;
        using (var r = DatasetReader.Open(full)) lastStart = r.Scan().Last().Offset;
        var bytes = File.ReadAllBytes(full);
        Assert.InRange(bytes.Length - lastStart, 100, 2000);
        var extra = Make.Conversation(4);
        var path = dir.File("torn.casds");

        for (long cut = lastStart; cut < bytes.Length; cut++)
        {
            File.WriteAllBytes(path, bytes[..(int)cut]);

            // Default reader: the complete records, then a torn-tail error.
            var seen = new List<Conversation>();
            using (var r = DatasetReader.Open(path))
            {
                if (cut == lastStart) seen.AddRange(r.ReadAll());
                else
                {
                    var e = Assert.Throws<DatasetTornTailException>(() => { foreach (var c in r.ReadAll()) seen.Add(c); });
                    Assert.Equal(lastStart, e.TornTail.Offset);
                    Assert.Equal(cut - lastStart, e.TornTail.Length);
                }
            }
            Assert.Equal(2, seen.Count);

            // Stop-at-torn-tail reader: exactly the complete records, tail reported.
            using (var r = DatasetReader.Open(path, new DatasetReadOptions(StopAtTornTail: true)))
            {
                var got = r.ReadAll().ToList();
                Assert.Equal(2, got.Count);
                Make.SameConversation(convs[0], got[0]);
                Make.SameConversation(convs[1], got[1]);
                if (cut == lastStart) Assert.Null(r.TornTail);
                else Assert.Equal(new TornTail(lastStart, cut - lastStart, r.TornTail!.Reason), r.TornTail);
            }

            // Resume: truncates, knows ids 1 and 2, continues without duplicates.
            using (var w = DatasetWriter.Open(path, resume: true, Make.NoSync))
            {
                Assert.Equal(2, w.ExistingCount);
                Assert.Equal(lastStart, w.Length);
                Assert.Equal(cut == lastStart ? null : lastStart, w.RepairedTornTail?.Offset);
                foreach (var c in convs.Append(extra)) w.TryAppend(c);
                Assert.Equal(4, w.Count);
            }
            var after = Make.ReadAll(path);
            Assert.Equal(new ulong[] { 1, 2, 3, 4 }, after.Select(c => c.Id));
            Make.SameConversation(convs[2], after[2]);
            Assert.Equal(bytes, File.ReadAllBytes(path)[..bytes.Length]); // the repaired file re-creates the original bytes
        }
    }

    [Fact]
    public void Truncated_header_is_an_error_for_readers_and_writers()
    {
        var full = dir.File("h.casds");
        WriteAll(full, [Make.Conversation(1)], Make.NoSync with { Metadata = new Dictionary<string, string> { ["m"] = "v" } });
        long dataOffset;
        using (var r = DatasetReader.Open(full)) dataOffset = r.DataOffset;
        var bytes = File.ReadAllBytes(full);
        var path = dir.File("h2.casds");
        for (int cut = 1; cut < dataOffset; cut++)
        {
            File.WriteAllBytes(path, bytes[..cut]);
            Assert.Throws<DatasetException>(() => DatasetReader.Open(path));
            Assert.Throws<DatasetException>(() => DatasetWriter.Open(path, resume: true));
            Assert.Equal(cut, new FileInfo(path).Length); // never clobbered
        }
    }

    [Fact]
    public void Checksum_damage_in_the_middle_is_corruption_at_every_byte()
    {
        var path = dir.File("c.casds");
        WriteAll(path, Enumerable.Range(1, 3).Select(i => Make.Conversation((ulong)i)));
        DatasetRecordInfo mid;
        using (var r = DatasetReader.Open(path)) mid = r.Scan().ElementAt(1);
        var bytes = File.ReadAllBytes(path);
        var bad = dir.File("bad.casds");
        for (long i = mid.Offset; i < mid.Offset + mid.Length; i++)
        {
            var copy = (byte[])bytes.Clone();
            copy[i] ^= 0x20;
            File.WriteAllBytes(bad, copy);
            foreach (bool stop in new[] { false, true })
            {
                using var r = DatasetReader.Open(bad, new DatasetReadOptions(stop));
                var seen = 0;
                var e = Assert.Throws<DatasetCorruptException>(() => { foreach (var _ in r.ReadAll()) seen++; });
                Assert.Equal(mid.Offset, e.Offset);
                Assert.Equal(1, seen);
            }
            var we = Assert.Throws<DatasetCorruptException>(() => DatasetWriter.Open(bad, resume: true));
            Assert.Equal(mid.Offset, we.Offset);
            Assert.Equal(copy.Length, new FileInfo(bad).Length); // resume does not truncate corruption
        }
    }

    [Fact]
    public void Damage_in_the_last_record_is_never_accepted()
    {
        var path = dir.File("l.casds");
        WriteAll(path, [Make.Conversation(1), Make.Conversation(2)]);
        DatasetRecordInfo last;
        using (var r = DatasetReader.Open(path)) last = r.Scan().Last();
        var bytes = File.ReadAllBytes(path);
        var bad = dir.File("lb.casds");
        for (long i = last.Offset; i < last.Offset + last.Length; i++)
        {
            var copy = (byte[])bytes.Clone();
            copy[i] ^= 0x01;
            File.WriteAllBytes(bad, copy);
            using var r = DatasetReader.Open(bad, new DatasetReadOptions(StopAtTornTail: true));
            var got = new List<Conversation>();
            if (i < last.Offset + DatasetFormat.FrameHeaderSize)
            {
                // A damaged frame header leaves the frame's extent unknown and non-zero bytes follow: corruption.
                var e = Assert.Throws<DatasetCorruptException>(() => { foreach (var c in r.ReadAll()) got.Add(c); });
                Assert.Equal(last.Offset, e.Offset);
            }
            else
            {
                // Payload or its checksum damaged in the final frame: a torn tail, reported and skipped.
                got.AddRange(r.ReadAll());
                Assert.Equal(last.Offset, r.TornTail!.Offset);
                Assert.Contains("checksum", r.TornTail.Reason);
            }
            Assert.Equal(1ul, Assert.Single(got).Id);
        }
    }

    [Fact]
    public void Zero_filled_tail_is_a_torn_tail_but_garbage_after_it_is_corruption()
    {
        var path = dir.File("z.casds");
        WriteAll(path, [Make.Conversation(1), Make.Conversation(2)]);
        long len = new FileInfo(path).Length;
        using (var f = new FileStream(path, FileMode.Append)) f.Write(new byte[5000]);
        using (var r = DatasetReader.Open(path, new DatasetReadOptions(StopAtTornTail: true)))
        {
            Assert.Equal(2, r.ReadAll().Count());
            Assert.Equal(new TornTail(len, 5000, r.TornTail!.Reason), r.TornTail);
            Assert.Contains("zero", r.TornTail.Reason);
        }
        using (var f = new FileStream(path, FileMode.Append)) f.Write([1, 2, 3]);
        Assert.Throws<DatasetCorruptException>(() => Make.ReadAll(path, stopAtTornTail: true));
        File.WriteAllBytes(path, File.ReadAllBytes(path)[..(int)(len + 5000)]);
        using (var w = DatasetWriter.Open(path, resume: true, Make.NoSync))
        {
            Assert.Equal(len, w.RepairedTornTail!.Offset);
            w.Append(Make.Conversation(3));
        }
        Assert.Equal(new ulong[] { 1, 2, 3 }, Make.ReadAll(path).Select(c => c.Id));
    }

    [Fact]
    public void Not_a_dataset_and_newer_versions_give_clear_errors()
    {
        var txt = dir.File("notes.txt");
        File.WriteAllText(txt, "hello, this is not a dataset at all");
        var e1 = Assert.Throws<DatasetException>(() => DatasetReader.Open(txt));
        Assert.Contains("not a CasService self-study dataset", e1.Message);
        var e1w = Assert.Throws<DatasetException>(() => DatasetWriter.Open(txt, resume: true));
        Assert.Contains("not a CasService self-study dataset", e1w.Message);
        Assert.Equal("hello, this is not a dataset at all", File.ReadAllText(txt));

        var path = dir.File("v.casds");
        WriteAll(path, [Make.Conversation(1)]);
        var bytes = File.ReadAllBytes(path);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 2);
        File.WriteAllBytes(path, bytes);
        var e2 = Assert.Throws<DatasetException>(() => DatasetReader.Open(path));
        Assert.Contains("version 2", e2.Message);
        Assert.Contains("reads versions up to 1", e2.Message);

        var e3 = Assert.Throws<DatasetException>(() => DatasetReader.Open(dir.File("missing.casds")));
        Assert.Contains("does not exist", e3.Message);

        var bytes2 = File.ReadAllBytes(path);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes2.AsSpan(8), 1);
        bytes2[16] ^= 0xFF; // metadata byte: header checksum fails
        File.WriteAllBytes(path, bytes2);
        Assert.Contains("checksum", Assert.Throws<DatasetException>(() => DatasetReader.Open(path)).Message);
    }

    [Fact]
    public void Second_writer_is_refused_while_the_first_is_open()
    {
        var path = dir.File("lock.casds");
        using (var w = DatasetWriter.Open(path, resume: false, Make.NoSync))
        {
            w.Append(Make.Conversation(1));
            var e = Assert.Throws<DatasetException>(() => DatasetWriter.Open(path, resume: true));
            Assert.Contains("another writer", e.Message);
            // A reader can read alongside the writer.
            Assert.Single(Make.ReadAll(path));
        }
        using (var w = DatasetWriter.Open(path, resume: true, Make.NoSync)) Assert.Equal(1, w.ExistingCount);
    }

    [Fact]
    public void Resume_refuses_different_metadata()
    {
        var path = dir.File("m.casds");
        var meta = new Dictionary<string, string> { ["model"] = "a" };
        using (DatasetWriter.Open(path, resume: false, Make.NoSync with { Metadata = meta })) { }
        var e = Assert.Throws<DatasetException>(() => DatasetWriter.Open(path, resume: true,
            Make.NoSync with { Metadata = new Dictionary<string, string> { ["model"] = "b" } }));
        Assert.Contains("model", e.Message);
        using (var w = DatasetWriter.Open(path, resume: true, Make.NoSync with { Metadata = meta })) Assert.Equal("a", w.Metadata["model"]);
        using (var w = DatasetWriter.Open(path, resume: true, Make.NoSync)) Assert.Equal("a", w.Metadata["model"]);
    }

    [Fact]
    public void Invalid_conversations_are_rejected_before_anything_is_written()
    {
        var path = dir.File("inv.casds");
        using (var w = DatasetWriter.Open(path, resume: false, Make.NoSync))
        {
            var ok = Make.Conversation(1, answerTokens: 4);
            var asst = ok.Messages[2];
            var mismatched = ok with { Messages = [asst with { Tokens = [1, 2, 3] }] };
            Assert.Contains("must match", Assert.Throws<InvalidRequestException>(() => w.Append(mismatched)).Message);
            var dup = ok with { Messages = [new ConversationMessage(MessageRole.Assistant, "a", [1], new SparseTargets([0, 2], [7, 7], [-1, -2]))] };
            Assert.Contains("twice", Assert.Throws<InvalidRequestException>(() => w.Append(dup)).Message);
            Assert.Throws<InvalidRequestException>(() => w.Append(ok with { Chunk = new ChunkLocation("d", 5, -1, 0, 1) }));
            Assert.Throws<InvalidRequestException>(() => w.Append(ok with { Messages = [new ConversationMessage(MessageRole.User, "u", [-3])] }));
            Assert.Throws<InvalidRequestException>(() => w.Append(ok with { SeedKind = (SeedPromptKind)17 }));
            // k is one byte in the format: 256 entries at a position is a valid SparseTargets but not a storable one.
            var wide = new SparseTargets([0, 256], Enumerable.Range(0, 256).ToArray(), Enumerable.Repeat(-6f, 256).ToArray());
            Assert.Contains("at most 255", Assert.Throws<InvalidRequestException>(() => w.Append(ok with { Messages = [new ConversationMessage(MessageRole.Assistant, "a", [1], wide)] })).Message);
            Assert.Equal(0, w.Count);
            w.Append(ok);
        }
        Assert.Single(Make.ReadAll(path));
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [3], [float.NaN]));
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 1], [3], [0.5f]));
        Assert.Throws<InvalidRequestException>(() => new SparseTargets([0, 2, 1], [3, 4], [-1, -1]));
    }

    [Fact]
    public void Scan_and_ReadAt_give_random_access()
    {
        var path = dir.File("s.casds");
        var convs = Enumerable.Range(0, 10).Select(i => Make.Conversation((ulong)(i * 31))).ToList();
        WriteAll(path, convs);
        using var r = DatasetReader.Open(path);
        var index = r.Scan().ToList();
        Assert.Equal(convs.Select(c => c.Id), index.Select(x => x.Id));
        Assert.Equal(r.DataOffset, index[0].Offset);
        Assert.Equal(r.FileLength, index[^1].Offset + index[^1].Length);
        foreach (int i in new[] { 7, 0, 9, 3 }) Make.SameConversation(convs[i], r.ReadAt(index[i].Offset));
        Assert.Throws<DatasetCorruptException>(() => r.ReadAt(index[2].Offset + 1));
    }

    [Fact]
    public void Fixed_k_targets_and_builder_agree()
    {
        var ids = new[] { 1, 2, 3, 4, 5, 6 };
        var lps = new[] { -0.1f, -1f, -2f, -0.5f, -0.7f, -3f };
        var f = SparseTargets.FromFixedK(2, 3, ids, lps);
        var b = new SparseTargets.Builder().Add(ids.AsSpan(0, 3), lps.AsSpan(0, 3)).Add(ids.AsSpan(3), lps.AsSpan(3)).Build();
        Assert.Equal(f.Offsets.ToArray(), b.Offsets.ToArray());
        Assert.Equal(new[] { 4, 5, 6 }, f.IdsAt(1).ToArray());
        Assert.Equal(new[] { -0.5f, -0.7f, -3f }, f.LogProbsAt(1).ToArray());
        Assert.Equal(3.0, f.MeanK);
        Assert.Equal(6, f.TotalEntries);
    }

    [Fact]
    public void Default_options_fsync_and_the_data_is_readable()
    {
        // Exercises the fsync path (FlushEveryRecords 2 with 5 records: fsync at 2, 4 and close).
        var path = dir.File("sync.casds");
        using (var w = DatasetWriter.Open(path, resume: false, new DatasetWriterOptions { FlushEveryRecords = 2 }))
            for (ulong i = 0; i < 5; i++) w.Append(Make.Conversation(i));
        Assert.Equal(5, Make.ReadAll(path).Count);
    }
}

/// <summary>
/// The streaming-memory test reads the process-wide heap size (GC.GetTotalMemory), so nothing else in
/// the assembly may allocate while it runs: in parallel with other classes it once saw 10 MB that
/// another test held and failed CI.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class HeapMeasurementCollection
{
    public const string Name = "process-wide heap measurement";
}

[Collection(HeapMeasurementCollection.Name)]
public class DatasetStreamingMemoryTests : IDisposable
{
    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    [Fact]
    public void Large_file_is_streamed_with_bounded_memory()
    {
        var path = dir.File("big.casds");
        const int n = 400, answer = 512, k = 20; // ~83 KB of targets per record, ~33 MB in all
        using (var w = DatasetWriter.Open(path, resume: false, Make.NoSync with { FlushEveryRecords = 0 }))
            for (int i = 0; i < n; i++) w.Append(Make.Conversation((ulong)i, answerTokens: answer, k: k, variableK: false));
        long fileBytes = new FileInfo(path).Length;
        Assert.True(fileBytes > 30_000_000, $"file is {fileBytes} bytes");

        long baseline = GC.GetTotalMemory(forceFullCollection: true);
        long peak = 0, count = 0, entries = 0;
        using (var r = DatasetReader.Open(path))
            foreach (var c in r.ReadAll())
            {
                Assert.Equal((ulong)count, c.Id);
                entries += c.Messages[2].Targets!.TotalEntries;
                if (++count % 40 == 0) peak = Math.Max(peak, GC.GetTotalMemory(forceFullCollection: true) - baseline);
            }
        Assert.Equal(n, count);
        Assert.Equal((long)n * answer * k, entries);
        Assert.True(peak < 4_000_000, $"reader held {peak} bytes while streaming a {fileBytes}-byte file");
    }
}
