// Process memory on Linux from /proc: resident set size and its high-water mark, which can be reset, so a peak over a
// chosen stretch of work can be read. glibc keeps freed memory unless MALLOC_MMAP_THRESHOLD_ is small; peaks are only
// comparable between processes started alike (docs/PLATFORM.md §Memory).
namespace Man.ML.Diagnostics;

/// <summary>Reads and resets the process's peak resident memory (Linux only).</summary>
internal static class ProcessMemory
{
    /// <summary>Whether /proc/self/status is readable here.</summary>
    public static bool IsSupported => File.Exists("/proc/self/status");

    /// <summary>Current resident set size (VmRSS), bytes.</summary>
    public static long ResidentBytes() => ReadStatusKilobytes("VmRSS:") * 1024;

    /// <summary>Peak resident set size since start or the last <see cref="ResetPeak"/> (VmHWM), bytes.</summary>
    public static long PeakResidentBytes() => ReadStatusKilobytes("VmHWM:") * 1024;

    /// <summary>Resets the peak to the current resident size (writes 5 to /proc/self/clear_refs).</summary>
    /// <exception cref="PlatformNotSupportedException">The kernel does not allow it.</exception>
    public static void ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new PlatformNotSupportedException("Cannot reset the peak resident size (/proc/self/clear_refs).", e);
        }
    }

    private static long ReadStatusKilobytes(string key)
    {
        if (!IsSupported) throw new PlatformNotSupportedException("Process memory is read from /proc/self/status (Linux).");
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key, StringComparison.Ordinal))
                return long.Parse(line.AsSpan(key.Length).Trim().ToString().Split(' ')[0]);
        throw new PlatformNotSupportedException($"/proc/self/status has no {key} line.");
    }
}
