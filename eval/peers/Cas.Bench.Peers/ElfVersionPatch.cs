using System.Buffers.Binary;
using System.Text;

namespace Cas.Bench.Peers;

/// <summary>
/// TorchSharp 0.107's native <c>libLibTorchSharp.so</c> asks for GLIBCXX_3.4.32 (GCC 13's libstdc++); Debian 12 ships
/// GCC 12's, so the dynamic loader refuses the library. Its only use of that version is a dummy iostream-init
/// reference, so marking the requirement weak (VER_FLG_WEAK on its entry in <c>.gnu.version_r</c>) lets glibc load it
/// with a missing version. This class does that to the copy in the benchmark's own output folder, never to the
/// package cache and never in the product. Written from the ELF64 / GNU symbol-versioning layout (no other code).
/// </summary>
static class ElfVersionPatch
{
    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 0x2;

    /// <summary>
    /// Marks every requirement named <paramref name="version"/> weak in the ELF file at <paramref name="path"/>, in place.
    /// Returns how many entries it changed (0 when already weak or absent).
    /// </summary>
    public static int MakeVersionWeak(string path, string version)
    {
        var b = File.ReadAllBytes(path);
        if (b.Length < 64 || b[0] != 0x7f || b[1] != 'E' || b[2] != 'L' || b[3] != 'F')
            throw new InvalidDataException($"{path} is not an ELF file.");
        if (b[4] != 2 || b[5] != 1) throw new InvalidDataException($"{path}: only little-endian ELF64 is supported.");
        var s = b.AsSpan();
        ulong shoff = U64(s, 0x28);
        int shentsize = U16(s, 0x3A), shnum = U16(s, 0x3C);
        int changed = 0;
        for (int i = 0; i < shnum; i++)
        {
            int sh = checked((int)shoff + i * shentsize);
            if (U32(s, sh + 4) != ShtGnuVerneed) continue;
            int offset = checked((int)U64(s, sh + 0x18));
            int link = (int)U32(s, sh + 0x28), count = (int)U32(s, sh + 0x2C);
            int strtab = checked((int)U64(s, checked((int)shoff + link * shentsize) + 0x18));
            int vn = offset;
            for (int n = 0; n < count; n++)
            {
                // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32.
                int cnt = U16(s, vn + 2);
                int aux = vn + (int)U32(s, vn + 8);
                for (int k = 0; k < cnt; k++)
                {
                    // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32.
                    string name = CString(s, strtab + (int)U32(s, aux + 8));
                    if (name == version)
                    {
                        ushort flags = U16(s, aux + 4);
                        if ((flags & VerFlgWeak) == 0) { BinaryPrimitives.WriteUInt16LittleEndian(s[(aux + 4)..], (ushort)(flags | VerFlgWeak)); changed++; }
                    }
                    uint next = U32(s, aux + 12);
                    if (next == 0) break;
                    aux += (int)next;
                }
                uint vnNext = U32(s, vn + 12);
                if (vnNext == 0) break;
                vn += (int)vnNext;
            }
        }
        if (changed > 0)
        {
            string tmp = path + ".tmp";
            File.WriteAllBytes(tmp, b);
            File.Move(tmp, path, overwrite: true);
        }
        return changed;
    }

    /// <summary>Whether the system's libstdc++ defines <paramref name="version"/> (when it does, no patch is needed).</summary>
    public static bool SystemLibStdCxxHas(string version)
    {
        foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu" })
        {
            string p = Path.Combine(dir, "libstdc++.so.6");
            if (!File.Exists(p)) continue;
            var needle = Encoding.ASCII.GetBytes(version + "\0");
            return File.ReadAllBytes(p).AsSpan().IndexOf(needle) >= 0;
        }
        return false;
    }

    static ushort U16(ReadOnlySpan<byte> s, int o) => BinaryPrimitives.ReadUInt16LittleEndian(s[o..]);
    static uint U32(ReadOnlySpan<byte> s, int o) => BinaryPrimitives.ReadUInt32LittleEndian(s[o..]);
    static ulong U64(ReadOnlySpan<byte> s, int o) => BinaryPrimitives.ReadUInt64LittleEndian(s[o..]);
    static string CString(ReadOnlySpan<byte> s, int o) { int e = s[o..].IndexOf((byte)0); return Encoding.ASCII.GetString(s.Slice(o, e)); }
}
