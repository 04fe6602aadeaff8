// libtorch allocates its CPU tensors with glibc's malloc. A training step frees and re-allocates the same multi-megabyte
// activation buffers every step; by default glibc serves such blocks with mmap (or trims them off the heap when freed)
// and gives them back to the kernel, so every step page-faults and zero-fills them afresh. Measured on the project's
// 2-core EPYC (docs/BENCHMARKS.md, "Speed"): an end-to-end ResNet-32 step at batch 128 takes about 500 ms that way and
// about 340 ms with freed blocks kept. Keeping them is what PyTorch's own caching allocators do on GPUs: peak memory is
// unchanged (the same buffers, reused), only the resident size no longer drops between steps.
using System.Runtime.InteropServices;

namespace Man.ML.Backend;

/// <summary>How this process's native heap treats large freed blocks.</summary>
internal static class HeapTuning
{
    /// <summary>Set to <c>off</c> to leave glibc's malloc as it is.</summary>
    public const string EnvironmentVariable = "MANML_HEAP_TUNING";

    private const int MTrimThreshold = -1, MMmapThreshold = -3; // malloc.h
    private static int applied; // 0 not yet, 1 applied, 2 left alone

    /// <summary>Whether the tuning is in effect in this process.</summary>
    public static bool Applied => Volatile.Read(ref applied) == 1;

    /// <summary>
    /// Once per process, on Linux with glibc: large blocks come from the heap and freed memory stays there (mallopt
    /// M_MMAP_THRESHOLD and M_TRIM_THRESHOLD at 1 GiB). Left alone when the user set either through the environment
    /// (the memory probes run with MALLOC_MMAP_THRESHOLD_=65536 so that peaks are exact) or set MANML_HEAP_TUNING=off.
    /// </summary>
    public static void Apply()
    {
        if (Volatile.Read(ref applied) != 0) return;
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
    }

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int mallopt(int parameter, int value);
}
