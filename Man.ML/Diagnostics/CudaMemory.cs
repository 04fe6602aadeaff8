// Device memory on NVIDIA GPUs through NVML (libnvidia-ml.so.1 / nvml.dll), sampled on a background thread, since
// TorchSharp 0.107 has no CUDA memory statistics (docs/PLATFORM.md §Memory). NVML reports the whole device's used memory,
// including what PyTorch's caching allocator keeps reserved; run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (manml bench does)
// so that usage tracks live tensors. Not exercised by the CPU-only test suite.
using System.Runtime.InteropServices;

namespace Man.ML.Diagnostics;

/// <summary>Samples a GPU's used memory while work runs and reports the peak.</summary>
internal sealed class CudaMemorySampler : IDisposable
{
    [StructLayout(LayoutKind.Sequential)]
    private struct NvmlMemory
    {
        public ulong Total;
        public ulong Free;
        public ulong Used;
    }

    private static class Nvml
    {
        private const string Library = "nvidia-ml";

        [DllImport(Library, EntryPoint = "nvmlInit_v2")]
        public static extern int Init();

        [DllImport(Library, EntryPoint = "nvmlDeviceGetHandleByIndex_v2")]
        public static extern int DeviceGetHandleByIndex(uint index, out IntPtr device);

        [DllImport(Library, EntryPoint = "nvmlDeviceGetMemoryInfo")]
        public static extern int DeviceGetMemoryInfo(IntPtr device, out NvmlMemory memory);

        [DllImport(Library, EntryPoint = "nvmlShutdown")]
        public static extern int Shutdown();
    }

    private readonly IntPtr device;
    private readonly Thread thread;
    private volatile bool running = true;
    private long peak;

    /// <summary>Starts sampling GPU <paramref name="index"/> every millisecond.</summary>
    /// <exception cref="PlatformNotSupportedException">NVML is not available.</exception>
    public CudaMemorySampler(int index = 0)
    {
        try
        {
            if (Nvml.Init() != 0 || Nvml.DeviceGetHandleByIndex((uint)index, out device) != 0)
                throw new PlatformNotSupportedException($"NVML could not open GPU {index}.");
        }
        catch (DllNotFoundException e)
        {
            throw new PlatformNotSupportedException("NVML (libnvidia-ml.so.1) is not installed; CUDA memory cannot be measured.", e);
        }
        peak = UsedBytes();
        thread = new Thread(() =>
        {
            while (running)
            {
                long used = UsedBytes();
                if (used > Interlocked.Read(ref peak)) Interlocked.Exchange(ref peak, used);
                Thread.Sleep(1);
            }
        }) { IsBackground = true };
        thread.Start();
    }

    /// <summary>Device memory in use now, bytes.</summary>
    public long UsedBytes() => Nvml.DeviceGetMemoryInfo(device, out var memory) == 0 ? (long)memory.Used : 0;

    /// <summary>Highest use seen since the last reset, bytes.</summary>
    public long PeakBytes => Interlocked.Read(ref peak);

    /// <summary>Starts a new peak from the current use.</summary>
    public void ResetPeak() => Interlocked.Exchange(ref peak, UsedBytes());

    /// <inheritdoc />
    public void Dispose()
    {
        running = false;
        thread.Join();
        Nvml.Shutdown();
    }
}
