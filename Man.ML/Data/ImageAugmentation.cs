// Turning uint8 batches into network inputs: per-sample random crop with padding and horizontal flip for training
// (one coin and one offset per image, not per batch), and per-channel normalisation (docs/METHOD.md §4).

using Man.ML.Backend;
namespace Man.ML.Data;

/// <summary>Per-channel normalisation: (x − mean) / std on images scaled to [0, 1].</summary>
public sealed record Normalization(float[] Mean, float[] Std)
{
    /// <summary>CIFAR-10 as in the reference code: mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255.</summary>
    public static Normalization Cifar { get; } = new(
        new[] { 125.3f / 255f, 123.0f / 255f, 113.9f / 255f },
        new[] { 63.0f / 255f, 62.1f / 255f, 66.7f / 255f });

    /// <summary>Normalises a float batch in [0, 1], (B, C, H, W).</summary>
    public Tensor Apply(Tensor x)
    {
        using var scope = NewDisposeScope();
        var mean = tensor(Mean, device: x.device).view(1, -1, 1, 1);
        var std = tensor(Std, device: x.device).view(1, -1, 1, 1);
        return x.sub(mean).div_(std).MoveToOuterDisposeScope();
    }
}

/// <summary>Training-time augmentation of a batch: pad, random crop back to size, random horizontal flip.</summary>
/// <param name="Padding">Pixels of padding on each side before cropping (4 for CIFAR).</param>
/// <param name="Reflect">Reflect padding (CIFAR) rather than zeros (SVHN, STL-10).</param>
/// <param name="Flip">Random horizontal flip with probability 0.5.</param>
/// <remarks>The normalisation is not part of it: that belongs to the model (<see cref="Training.TrainingOptions.Normalization"/>).</remarks>
public sealed record ImageAugmentation(int Padding, bool Reflect, bool Flip)
{
    /// <summary>CIFAR-10: reflect-pad 4, random crop, flip.</summary>
    public static ImageAugmentation Cifar { get; } = new(4, true, true);

    /// <summary>No augmentation: the images as they are.</summary>
    public static ImageAugmentation None { get; } = new(0, false, false);

    /// <summary>
    /// Augments a uint8 batch (B, C, H, W) into floats normalised with <paramref name="normalization"/>, drawing offsets
    /// and flips from <paramref name="random"/>.
    /// </summary>
    public Tensor Apply(Tensor images, Random random, Normalization normalization)
    {
        using var scope = NewDisposeScope();
        var x = images.to_type(ScalarType.Float32).DividedByInPlace(255);              // (B, C, H, W) in [0, 1]
        long batch = x.shape[0], height = x.shape[2], width = x.shape[3];
        if (Padding > 0)
        {
            var padded = nn.functional.pad(x, new long[] { Padding, Padding, Padding, Padding },
                Reflect ? PaddingModes.Reflect : PaddingModes.Constant);       // (B, C, H+2p, W+2p)
            var crops = new Tensor[batch];
            for (int b = 0; b < batch; b++)
            {
                int dy = random.Next(2 * Padding + 1), dx = random.Next(2 * Padding + 1);
                crops[b] = padded[b].narrow(1, dy, height).narrow(2, dx, width);
            }
            x = stack(crops);                                                   // (B, C, H, W)
        }
        if (Flip)
        {
            var coins = new bool[batch];
            for (int b = 0; b < batch; b++) coins[b] = random.Next(2) == 1;
            var mask = tensor(coins).view(batch, 1, 1, 1);
            x = where(mask, x.flip(3), x);
        }
        return normalization.Apply(x).MoveToOuterDisposeScope();
    }
}
