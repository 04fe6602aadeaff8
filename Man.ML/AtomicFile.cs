// Every file Man.ML writes (checkpoints, models, weights, ONNX graphs, reports) goes through a temporary name in the
// same folder and a rename, so a crash or a full disk never leaves a half-written file under the real name. A missing
// folder is created (every command that writes a file behaves alike), and a failed write is reported under the name the
// caller asked for: the temporary name means nothing to the user.
using System.Text;
using System.Text.RegularExpressions;

namespace Man.ML;

/// <summary>Writes files through a temporary name in the same folder and a rename.</summary>
internal static partial class AtomicFile
{
    /// <summary>Writes <paramref name="path"/> with <paramref name="write"/>; the old file stays until the new one is complete.</summary>
    /// <exception cref="IOException">The folder cannot be created or the file cannot be written (a full disk, no permission):
    /// "Could not write 'PATH': reason", naming <paramref name="path"/>; the previous file, if any, is left as it was.</exception>
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var temp = TempPath(full);
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // .NET's messages end with " : 'path'" of the file it was opening: the temporary name, or a parent folder.
            var reason = FileAmongParents(full) is { } file ? $"'{file}' is a file, not a folder"
                : e.Message.Replace($" : '{temp}'", "", StringComparison.Ordinal).Replace(temp, full, StringComparison.Ordinal).TrimEnd('.');
            throw new IOException($"Could not write '{path}': {reason}.", e);
        }
        finally
        {
            try { if (File.Exists(temp)) File.Delete(temp); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // the write's own error is the one to report
        }
    }

    // The first of the folders above fullPath that is a file (Directory.CreateDirectory says only that it "already exists").
    private static string? FileAmongParents(string fullPath)
    {
        for (var dir = Path.GetDirectoryName(fullPath); !string.IsNullOrEmpty(dir); dir = Path.GetDirectoryName(dir))
        {
            if (Directory.Exists(dir)) return null;
            if (File.Exists(dir)) return dir;
        }
        return null;
    }

    /// <summary>Writes text atomically (UTF-8).</summary>
    public static void WriteText(string path, string text) =>
        Write(path, s => { var bytes = Encoding.UTF8.GetBytes(text); s.Write(bytes, 0, bytes.Length); });

    /// <summary>The temporary name <see cref="Write"/> uses for <paramref name="fullPath"/> in this process: <c>.NAME.PID.tmp</c>.</summary>
    internal static string TempPath(string fullPath) =>
        Path.Combine(Path.GetDirectoryName(fullPath)!, $".{Path.GetFileName(fullPath)}.{Environment.ProcessId}.tmp");

    [GeneratedRegex(@"^\..+\.(?<pid>[0-9]+)\.tmp$", RegexOptions.CultureInvariant)]
    private static partial Regex TempName();

    /// <summary>
    /// Deletes the temporary files of writes that never finished in <paramref name="folder"/> (a process killed mid-write,
    /// with kill -9 or a power cut, cannot delete its own): those of a process that no longer runs, and this process's own
    /// (it writes nothing there yet). Returns the names deleted.
    /// </summary>
    internal static IReadOnlyList<string> DeleteAbandonedTemporaries(string folder)
    {
        var deleted = new List<string>();
        foreach (var file in Directory.EnumerateFiles(folder, ".*.tmp"))
        {
            var match = TempName().Match(Path.GetFileName(file));
            if (!match.Success || !int.TryParse(match.Groups["pid"].Value, out int pid)) continue;
            if (pid != Environment.ProcessId && IsRunning(pid)) continue; // another process may be writing it now
            try
            {
                File.Delete(file);
                deleted.Add(Path.GetFileName(file));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // left for the next run
        }
        return deleted;
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException) { return false; }
    }
}
