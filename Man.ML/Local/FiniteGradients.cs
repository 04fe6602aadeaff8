// The non-finite gradient check of a training step. Reading a value from the device is a host synchronisation (on a
// GPU it waits for every queued kernel), so a healthy step reads once for all gradients together; only when that read
// says one is bad does the check go segment by segment, so the message can name the first segment that holds it.
using TorchSharp.Modules;

namespace Man.ML.Local;

internal static class FiniteGradients
{
    /// <summary>The first segment (in the order given) whose parameters hold a NaN or infinite gradient, or null when every
    /// gradient is finite. <paramref name="read"/> brings a boolean scalar from the device: once when all are finite.</summary>
    public static int? FirstNonFinite(IReadOnlyList<(int Segment, Parameter Parameter)> parameters, Func<Tensor, bool> read)
    {
        using var scope = NewDisposeScope();
        var flags = parameters.Select(p => p.Parameter.grad).OfType<Tensor>().Select(g => g.isfinite().all()).ToArray();
        if (flags.Length == 0 || read(stack(flags).all())) return null;
        foreach (var (segment, p) in parameters)
            if (p.grad is { } g && !read(g.isfinite().all()))
                return segment;
        return null;
    }

    /// <summary>How the training step reads a flag: one host synchronisation.</summary>
    public static bool ReadFromDevice(Tensor flag) => flag.item<bool>();
}
