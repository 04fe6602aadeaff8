// libtorch allocates its CPU tensors with glibc's malloc. A training step frees and re-allocates the same multi-megabyte
// activation buffers every step; by default glibc serves such blocks with mmap (or trims them off the heap when freed)
// and gives them back to the kernel, so every step page-faults and zero-fills them afresh (docs/BENCHMARKS.md, "Speed").
// Keeping freed blocks in the heap is what PyTorch's own caching allocators do on GPUs: peak memory is unchanged (the
// same buffers, reused), only the resident size no longer drops between steps. mallopt changes the whole process's
// allocator, so the library never calls it on its own: an application that trains (the manml CLI does) opts in.
using System.Runtime.InteropServices;

namespace Man.ML.Backend;

/// <summary>
/// Opt-in tuning of this process's native heap for CPU training: large freed blocks stay in glibc's heap instead of
/// going back to the kernel, so the activation buffers a training step frees are reused by the next step without page
/// faults. It changes malloc for the whole process, so Man.ML never applies it by itself (neither <c>Trainer</c> nor the
/// ML.NET trainer does); an application that trains on the CPU may call <see cref="Apply"/> once at start-up.
/// </summary>
public static class HeapTuning
{
    /// <summary>Set to <c>off</c> to make <see cref="Apply"/> leave glibc's malloc as it is.</summary>
    public const string EnvironmentVariable = "MANML_HEAP_TUNING";

    private const int MTrimThreshold = -1, MMmapThreshold = -3; // malloc.h
    private static int applied; // 0 not asked, 1 applied, 2 left alone

    /// <summary>Whether <see cref="Apply"/> has tuned this process's heap.</summary>
    public static bool Applied => Volatile.Read(ref applied) == 1;

    /// <summary>
    /// On Linux with glibc, once per process: large blocks come from the heap and freed memory stays there (mallopt
    /// M_MMAP_THRESHOLD and M_TRIM_THRESHOLD at 1 GiB). The resident size then stays near the training peak between
    /// steps instead of dropping. Left alone on other systems, when the user set either threshold through the
    /// environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES: the memory probes run with
    /// MALLOC_MMAP_THRESHOLD_=65536 so that peaks are exact) or set MANML_HEAP_TUNING=off. Later calls change nothing.
    /// </summary>
    /// <returns>Whether the tuning is in effect (<see cref="Applied"/>).</returns>
    public static bool Apply()
    {
        if (Volatile.Read(ref applied) != 0) return Applied;
        bool leave = !OperatingSystem.IsLinux()
                     || Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null
                     || Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is not null
                     || Environment.GetEnvironmentVariable("GLIBC_TUNABLES") is not null
                     || string.Equals(Environment.GetEnvironmentVariable(EnvironmentVariable), "off", StringComparison.OrdinalIgnoreCase);
        int result = 2;
        if (!leave)
        {
            try
            {
                const int OneGiB = 1 << 30;
                result = mallopt(MMmapThreshold, OneGiB) == 1 && mallopt(MTrimThreshold, OneGiB) == 1 ? 1 : 2;
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
                result = 2; // not glibc (musl, for example): nothing to tune
            }
        }
        Interlocked.CompareExchange(ref applied, result, 0);
        return Applied;
    }

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int mallopt(int parameter, int value);
}
