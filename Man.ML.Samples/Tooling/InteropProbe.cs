// What Man.ML and PyTorch are compared on (docs/INTEROP.md): weights regenerated from a seed by a counter-based hash
// (splitmix64 of the tensor's PyTorch name and the element's index), so that C# and NumPy produce the same float32
// values bit for bit on every machine without committing the weights; and a fixed input batch given by a formula.
// scripts/pytorch_interop.py implements both again in NumPy.
using System.Text;
using Man.ML.Interop;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Samples.Tooling;

/// <summary>Deterministic, platform-independent weights for cross-framework checks.</summary>
internal static class SyntheticWeights
{
    /// <summary>
    /// Fills every tensor of <paramref name="network"/> from <paramref name="seed"/>: convolution weights uniform in
    /// ±√(6/fan-in), linear weights in ±√(3/fan-in), batch-norm weights 1 ± 0.2, biases and running means ± 0.1,
    /// running variances 1 ± 0.5 (num_batches_tracked left as it is).
    /// </summary>
    public static void Fill(UnitChainNetwork network, int seed)
    {
        using var noGrad = no_grad();
        var state = network.state_dict();
        foreach (var ((_, target), key) in state.Zip(PyTorchWeights.KeysOf(network)))
        {
            if (!target.is_floating_point()) continue;
            var values = Values(seed, key, target.shape);
            using var source = tensor(values, target.shape);
            target.copy_(source);
        }
    }

    /// <summary>The values of the tensor called <paramref name="key"/> of shape <paramref name="shape"/>.</summary>
    public static float[] Values(int seed, string key, long[] shape)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        double scale, offset = 0;
        if (shape.Length == 4) scale = Math.Sqrt(6.0 / (shape[1] * shape[2] * shape[3]));
        else if (shape.Length == 2) scale = Math.Sqrt(3.0 / shape[1]);
        else if (key.EndsWith(".running_var", StringComparison.Ordinal)) (scale, offset) = (0.5, 1);
        else if (key.EndsWith(".weight", StringComparison.Ordinal)) (scale, offset) = (0.2, 1);
        else scale = 0.1; // biases and running means
        ulong start = Fnv1a($"{seed}:{key}");
        var values = new float[count];
        for (long i = 0; i < count; i++) values[i] = (float)(offset + scale * Uniform(start + (ulong)i));
        return values;
    }

    /// <summary>A value in [-1, 1) from the 53 high bits of splitmix64(<paramref name="counter"/>).</summary>
    public static double Uniform(ulong counter)
    {
        ulong z = counter + 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53)) * 2 - 1;
    }

    private static ulong Fnv1a(string text)
    {
        ulong h = 14695981039346656037UL;
        foreach (byte b in Encoding.UTF8.GetBytes(text)) h = (h ^ b) * 1099511628211UL;
        return h;
    }
}

/// <summary>The fixed input batch: x[n, c, h, w] = sin(0.9n + 1.7c + 0.21h + 0.13w + 0.017hw), labels (3n + 1) mod classes.</summary>
internal static class ProbeBatch
{
    /// <summary>Images in the batch.</summary>
    public const int Size = 4;

    /// <summary>The images, (<see cref="Size"/>, 3, S, S) float32, and their labels.</summary>
    public static (Tensor Images, Tensor Labels) Create(int imageSize, int classes)
    {
        var values = new float[Size * 3 * imageSize * imageSize];
        int at = 0;
        for (int n = 0; n < Size; n++)
            for (int c = 0; c < 3; c++)
                for (int h = 0; h < imageSize; h++)
                    for (int w = 0; w < imageSize; w++)
                        values[at++] = (float)Math.Sin(0.9 * n + 1.7 * c + 0.21 * h + 0.13 * w + 0.017 * h * w);
        var labels = Enumerable.Range(0, Size).Select(n => (long)((3 * n + 1) % classes)).ToArray();
        return (tensor(values, new long[] { Size, 3, imageSize, imageSize }), tensor(labels));
    }
}
