// Device names, parsed and checked in one place: the options validate the spelling, the run resolves it once, and
// every tensor and module of the run goes to that one device.

namespace Man.ML.Training;

internal static class Devices
{
    /// <summary>The canonical name of a device (cpu, cuda, cuda:N), without asking whether it exists.</summary>
    /// <exception cref="InvalidOptionException">Not a device name.</exception>
    public static string Canonical(string name, string option = nameof(TrainingOptions.Device))
    {
        var lower = name.Trim().ToLowerInvariant();
        if (lower is "cpu" or "cuda") return lower;
        if (lower.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(lower.AsSpan(5), out int index) && index >= 0) return lower;
        throw new InvalidOptionException(option, $"Unknown device '{name}': expected cpu, cuda or cuda:N.");
    }

    /// <summary>The device called <paramref name="name"/>, checked to exist.</summary>
    /// <exception cref="InvalidOptionException">Unknown device, or CUDA is not available.</exception>
    public static Device Resolve(string name, string option = nameof(TrainingOptions.Device))
    {
        var canonical = Canonical(name, option);
        if (canonical == "cpu") return CPU;
        if (!cuda.is_available())
            throw new InvalidOptionException(option,
                $"Device '{name}' was asked for but CUDA is not available (reference a TorchSharp CUDA backend and run on a GPU machine).");
        UseFloat32OnCuda();
        return device(canonical);
    }

    // libtorch lets cuDNN compute float32 convolutions in TF32 (10-bit mantissas) by default; Man.ML's fp32 is IEEE
    // float32 on every device, which its backend check holds it to (TF32's errors are about 1e-3 of a result's size).
    // The tensor cores' speed is what the bf16 precision is for. A process-wide libtorch setting, set once.
    private static void UseFloat32OnCuda()
    {
        if (Interlocked.Exchange(ref float32OnCuda, 1) != 0) return;
        backends.cudnn.allow_tf32 = false;
        backends.cuda.matmul.allow_tf32 = false;
    }

    private static int float32OnCuda;
}
