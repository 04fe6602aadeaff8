// Every file Man.ML reads is opened here. A path that names a FIFO, a device or a socket would block the reader for ever
// (open() on a FIFO waits for a writer) or stream without end, so only regular files are opened; the type is read with
// the .NET runtime's own stat shim (System.Native, present wherever .NET runs on Unix), which follows symbolic links as
// open() does. Sizes are bounded before reading: a file is never read into memory past the caller's limit.
using System.Runtime.InteropServices;

namespace Man.ML;

/// <summary>Opens the files Man.ML reads: regular files only, with bounded reads.</summary>
internal static class InputFiles
{
    /// <summary>
    /// Checks that <paramref name="path"/> exists and is a regular file; <paramref name="what"/> names it in messages
    /// ("Checkpoint", "Weights file").
    /// </summary>
    /// <exception cref="FileNotFoundException">Nothing at <paramref name="path"/>.</exception>
    /// <exception cref="IOException">A directory, FIFO, device or socket.</exception>
    public static void CheckRegular(string path, string what)
    {
        if (Directory.Exists(path)) throw new IOException($"{what} '{path}' is a folder, not a file.");
        if (!File.Exists(path)) throw new FileNotFoundException($"{what} '{path}' does not exist.", path);
        if (TypeOf(path) is { } type && type != RegularFile)
            throw new IOException($"{what} '{path}' is not a regular file (it is a {Describe(type)}); Man.ML reads regular files only.");
    }

    /// <summary>Opens <paramref name="path"/> for reading after <see cref="CheckRegular"/>.</summary>
    public static FileStream OpenRead(string path, string what)
    {
        CheckRegular(path, what);
        return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1 << 16);
    }

    /// <summary>
    /// The bytes of <paramref name="path"/> (a regular file), at most <paramref name="maxBytes"/>: a larger file is an
    /// <see cref="InvalidDataException"/> naming it and the limit, raised before anything is read.
    /// </summary>
    public static byte[] ReadAllBytes(string path, string what, long maxBytes)
    {
        using var stream = OpenRead(path, what);
        long length = stream.Length;
        if (length > maxBytes || length > Array.MaxLength)
            throw new InvalidDataException($"{what} '{path}' has {length:N0} bytes, more than the {Math.Min(maxBytes, Array.MaxLength):N0} Man.ML reads.");
        var bytes = new byte[length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    private const int TypeMask = 0xF000, RegularFile = 0x8000;

    private static string Describe(int type) => type switch
    {
        0x1000 => "FIFO",
        0x2000 => "character device",
        0x6000 => "block device",
        0xC000 => "socket",
        0x4000 => "folder",
        _ => $"file of type 0x{type:X}",
    };

    // The S_IFMT bits of stat(path), or null where they cannot be read (Windows, where FIFOs are not files).
    private static int? TypeOf(string path)
    {
        if (OperatingSystem.IsWindows()) return null;
        try { return Stat(path, out var status) == 0 ? status.Mode & TypeMask : null; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    // The runtime's platform-independent stat record (System.Native's FileStatus): only its first fields are read, and
    // the layout has been the same since .NET Core 2.
    [StructLayout(LayoutKind.Sequential)]
    private struct FileStatus
    {
        public int Flags;
        public int Mode;
        public uint Uid;
        public uint Gid;
        public long Size;
        public long ATime, ATimeNsec, MTime, MTimeNsec, CTime, CTimeNsec, BirthTime, BirthTimeNsec, Dev, RDev, Ino;
        public uint UserFlags;
    }

    // DllImport rather than LibraryImport: the latter would make the whole library unsafe code for one call.
    [DllImport("libSystem.Native", EntryPoint = "SystemNative_Stat", CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern int Stat(string path, out FileStatus status);
}
