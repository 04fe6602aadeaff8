// Batch normalisation as torch.nn.BatchNorm1d/2d computes it (the same functional batch_norm call, parameters, buffers
// and state-dict names), with the one difference that matters here: TorchSharp's BatchNorm counts num_batches_tracked
// with add_(1), a Scalar converted from an int that nothing holds during the native call. A garbage collection on
// another thread can finalize it while libtorch reads it (docs/BACKEND.md, "Scalars freed during the call"); with many
// threads training at once (pipeline stages) that crashed runs with libtorch's "Expected false to be true" in
// Scalar::toLong. This layer counts with a Scalar that is never collected.
using TorchSharp.Modules;
using Man.ML.Backend;

namespace Man.ML.Models;

/// <summary>Batch normalisation over (N, C) or (N, C, L) inputs (<see cref="OneDimensional"/>) or (N, C, H, W) ones.</summary>
internal sealed class BatchNormLayer : BatchNorm
{
    private readonly bool oneDimensional;

    private BatchNormLayer(long features, bool oneDimensional)
        : base(features, 1e-5, 0.1, affine: true, track_running_stats: true, device: null, dtype: null,
            oneDimensional ? "BatchNorm1d" : "BatchNorm2d") => this.oneDimensional = oneDimensional;

    /// <summary>Like <c>torch.BatchNormLayer.TwoDimensional(features)</c>.</summary>
    public static BatchNormLayer TwoDimensional(long features) => new(features, oneDimensional: false);

    /// <summary>Like <c>torch.BatchNormLayer.OneDimensional(features)</c>.</summary>
    public static BatchNormLayer OneDimensional(long features) => new(features, oneDimensional: true);

    protected override void ValidateInputDimensions(Tensor input)
    {
        bool valid = oneDimensional ? input.dim() is 2 or 3 : input.dim() == 4;
        if (!valid)
            throw new ArgumentException($"{(oneDimensional ? "BatchNorm1d expects a 2-D or 3-D" : "BatchNorm2d expects a 4-D")} input, got {input.dim()}-D.");
    }

    public override Tensor forward(Tensor input)
    {
        ValidateInputDimensions(input);
        double factor = momentum ?? 0.0;
        if (training && track_running_stats && num_batches_tracked is { } count)
        {
            count.add_(HeldScalars.One, HeldScalars.One);
            if (momentum is null) factor = 1.0 / count.item<long>(); // a cumulative average, as PyTorch's momentum=None
        }
        // PyTorch: batch statistics in training, and in evaluation when there are no running statistics.
        bool batchStatistics = training || running_mean is null || running_var is null;
        bool passStatistics = !training || track_running_stats;
        return nn.functional.batch_norm(input, passStatistics ? running_mean : null, passStatistics ? running_var : null, weight, bias,
            batchStatistics, factor, eps);
    }
}
