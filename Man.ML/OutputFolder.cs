// An output folder held by one run at a time. Two runs writing into one folder would leave a mix of both (the arguments
// of one, the checkpoint of the other), so a run holds FOLDER/.manml.lock open with FileShare.None for as long as it
// writes there: .NET takes an advisory flock for it on Unix (a share lock on Windows), which the kernel releases when the
// process ends, however it ends (kill -9 included), so a lock can never be left stale. The file holds the holder's PID
// and command line for the refusal message; it stays in the folder after the run (deleting it would let a third run lock
// a new file while a second still waits on the old one).
using System.Runtime.InteropServices;
using System.Text;

namespace Man.ML;

/// <summary>An output folder locked by this process for one run.</summary>
internal sealed class OutputFolder : IDisposable
{
    /// <summary>The lock file's name inside the folder.</summary>
    public const string LockFileName = ".manml.lock";

    private readonly FileStream lockStream;
    private readonly HashSet<string> entriesBefore;

    /// <summary>The folder as the caller named it.</summary>
    public string Path { get; }

    /// <summary>The folder did not exist: this run created it.</summary>
    public bool Created => createdRoot is not null;

    // The outermost folder this run created (runs/ of runs/latest when neither existed), or null.
    private readonly string? createdRoot;

    /// <summary>Leftover temporary files of writes that never finished (<see cref="AtomicFile"/>), deleted when the folder was locked.</summary>
    public IReadOnlyList<string> DeletedTemporaries { get; }

    private OutputFolder(string path, string? createdRoot, FileStream lockStream, HashSet<string> entriesBefore, IReadOnlyList<string> deleted)
    {
        Path = path;
        this.createdRoot = createdRoot;
        this.lockStream = lockStream;
        this.entriesBefore = entriesBefore;
        DeletedTemporaries = deleted;
    }

    /// <summary>
    /// Creates <paramref name="folder"/> if needed and locks it for this process; <paramref name="option"/> names the folder
    /// in messages ("--out") and <paramref name="command"/> is written into the lock file for a run refused later.
    /// Leftover temporary files of killed writes are deleted once the lock is held.
    /// </summary>
    /// <exception cref="IOException">The folder is locked by another run (the message names it and that run's PID), is a
    /// file, or cannot be created or written.</exception>
    public static OutputFolder Acquire(string folder, string option, string command)
    {
        var full = System.IO.Path.GetFullPath(folder);
        if (File.Exists(full)) throw new IOException($"{option} '{folder}' is a file, not a folder.");
        string? createdRoot = null;
        for (var dir = full; !string.IsNullOrEmpty(dir) && !Directory.Exists(dir); dir = System.IO.Path.GetDirectoryName(dir)) createdRoot = dir;
        var lockPath = System.IO.Path.Combine(full, LockFileName);
        FileStream stream;
        HashSet<string> before;
        try
        {
            Directory.CreateDirectory(full);
            before = Directory.EnumerateFileSystemEntries(full).Select(e => System.IO.Path.GetFileName(e)!).ToHashSet();
            stream = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new IOException($"{option} '{folder}' is not a writable folder: {e.Message}", e);
        }
        catch (IOException e) when (File.Exists(lockPath) && e.GetType() == typeof(IOException))
        {
            var holder = ReadHolder(lockPath);
            throw new IOException($"{option} '{folder}' is in use by another run " +
                (holder is null ? "(its lock file could not be read)" : $"(PID {holder})") +
                ": wait for it to finish, or write somewhere else.", e);
        }
        catch (IOException e)
        {
            throw new IOException($"{option} '{folder}' is not a writable folder: {e.Message}", e);
        }
        try
        {
            var text = Encoding.UTF8.GetBytes($"{Environment.ProcessId}\n{command.ReplaceLineEndings(" ")}\n{DateTime.UtcNow:O}\n");
            stream.SetLength(0);
            stream.Write(text);
            stream.Flush();
            return new OutputFolder(folder, createdRoot, stream, before, AtomicFile.DeleteAbandonedTemporaries(full));
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Removes what this run put there, for a run that failed before writing anything worth keeping: the whole folder when
    /// the run created it (with the folders above it that it created), otherwise only the entries that were not there when
    /// it was locked (files of earlier runs stay).
    /// </summary>
    public void RemoveCreated()
    {
        var full = System.IO.Path.GetFullPath(Path);
        try
        {
            if (createdRoot is not null)
            {
                Directory.Delete(createdRoot, recursive: true);
                return;
            }
            foreach (var entry in Directory.EnumerateFileSystemEntries(full).ToList())
            {
                if (entriesBefore.Contains(System.IO.Path.GetFileName(entry)!)) continue;
                if (Directory.Exists(entry)) Directory.Delete(entry, recursive: true);
                else File.Delete(entry);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // the run's own error is the one to report
    }

    /// <summary>Releases the lock.</summary>
    public void Dispose() => lockStream.Dispose();

    // "PID: command" from a lock file another process holds. .NET's own FileStream would ask for a shared lock and be
    // refused, so the file is read with the runtime's plain open() and read() shims (as InputFiles reads stat).
    private static string? ReadHolder(string lockPath)
    {
        if (OperatingSystem.IsWindows()) return null; // a FileShare.None file cannot be read there at all
        try
        {
            nint fd = Open(lockPath, 0x0010 /* PAL_O_RDONLY | PAL_O_CLOEXEC */, 0);
            if (fd < 0) return null;
            var buffer = new byte[4096];
            int count;
            try { count = Read(fd, buffer, buffer.Length); }
            finally { Close(fd); }
            if (count <= 0) return null;
            var lines = Encoding.UTF8.GetString(buffer, 0, count).Split('\n');
            return lines.Length >= 2 && int.TryParse(lines[0], out int pid) ? $"{pid}: {lines[1]}" : null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    [DllImport("libSystem.Native", EntryPoint = "SystemNative_Open", CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern nint Open(string path, int flags, int mode);

    [DllImport("libSystem.Native", EntryPoint = "SystemNative_Read")]
    private static extern int Read(nint fd, byte[] buffer, int count);

    [DllImport("libSystem.Native", EntryPoint = "SystemNative_Close")]
    private static extern int Close(nint fd);
}
