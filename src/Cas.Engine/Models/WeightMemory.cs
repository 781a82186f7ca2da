using System.Runtime.InteropServices;

namespace Cas.Engine.Models;

/// <summary>
/// Arrays for weight matrices, on 2 MB pages where Linux allows it. Decode streams every weight once per token, and on
/// 4 KB pages each 4 KB costs a TLB miss and restarts the hardware prefetcher; with transparent huge pages in the
/// usual "madvise" mode a region only gets 2 MB pages when asked. So a weight array is allocated pinned and
/// uninitialised (the pinned heap never moves it, and places consecutive ones side by side), and the 2 MB-aligned
/// range around it is advised MADV_HUGEPAGE before the caller fills it: a model's matrices (most of them 0.4–4 MB)
/// then share huge pages. The advice is only a hint about this process's own heap; memory that was already touched
/// keeps its pages. Measured on the 2-core dev VM: a two-thread matrix-vector pass over 540 MB read 5–9% faster
/// (paired median ratio over 80 pairs). Small arrays, other systems, or a kernel that ignores the advice get
/// ordinary arrays; nothing else changes.
/// </summary>
public static unsafe class WeightMemory
{
    const long HugePage = 2 << 20;
    const long MinBytes = 256 << 10;
    const int MadvHugePage = 14, MadvCollapse = 25;

    /// <summary>Whether new weight arrays ask for huge pages (on by default; CAS_HUGE_PAGES=0 turns it off, and
    /// benchmarks switch it to compare).</summary>
    public static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("CAS_HUGE_PAGES") != "0";

    [DllImport("libc", EntryPoint = "madvise")]
    static extern int Madvise(void* address, nuint length, int advice);

    /// <summary>A new array of <paramref name="length"/> uninitialised elements, on huge pages when it is large.</summary>
    public static T[] Allocate<T>(int length) where T : unmanaged
    {
        long bytes = (long)length * sizeof(T);
        if (bytes < MinBytes || !Enabled || !OperatingSystem.IsLinux()) return GC.AllocateUninitializedArray<T>(length);
        var a = GC.AllocateUninitializedArray<T>(length, pinned: true);
        fixed (T* p = a) Advise(p, bytes, MadvHugePage);
        return a;
    }

    /// <summary>
    /// After a model's matrices are filled: asks the kernel to move the 2 MB ranges around each of them onto huge pages
    /// now (MADV_COLLAPSE, Linux 6.1+). Needed because the garbage collector commits its heap in pieces, and a 2 MB
    /// range that was not one mapping when first touched got 4 KB pages despite the advice. Best effort: ranges the
    /// kernel will not collapse keep their pages.
    /// </summary>
    public static void Collapse(ModelWeights weights)
    {
        if (!Enabled || !OperatingSystem.IsLinux()) return;
        Collapse(weights.TokenEmbedding);
        if (!weights.LmHead.SameStorage(weights.TokenEmbedding)) Collapse(weights.LmHead);
        foreach (var l in weights.Layers)
            foreach (var m in l.Matrices) Collapse(m);
    }

    static void Collapse(WeightTensor w)
    {
        if (w.Precision == WeightPrecision.Float32) Collapse(w.Floats); else Collapse(w.Bits);
    }

    /// <summary>The same for one filled array (for example a benchmark's buffer that should read like weights).</summary>
    public static void Collapse<T>(T[] array) where T : unmanaged
    {
        long bytes = (long)array.Length * sizeof(T);
        if (bytes < MinBytes || !Enabled || !OperatingSystem.IsLinux()) return;
        fixed (T* p = array) Advise(p, bytes, MadvCollapse);
    }

    static void Advise(void* p, long bytes, int advice)
    {
        long start = (long)p & ~(HugePage - 1), end = ((long)p + bytes + HugePage - 1) & ~(HugePage - 1);
        try { Madvise((void*)start, (nuint)(end - start), advice); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
    }
}
