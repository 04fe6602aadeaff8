// InfoPro's ImageNet auxiliary network (docs/REFERENCE.md §2.2, §6.1), used for every ImageNet-family network:
// a decoder that up-samples step by step to the image (conv 1x1 to 128, then 3x3 to 32, 12 and 3 for 512-channel
// features; 1x1 to 192 and 64, then 3x3 to 32, 12 and 3 for 1024-channel ones) and a classifier (1x1 conv, two
// stride-2 3x3 convs, 1x1 conv to 2048, global pooling, linear). Features with other widths get the nearer variant;
// up-sampling targets are image/2^k, so features at another resolution skip or merge steps rather than fail.
using Man.ML.Data;
using Man.ML.Models;
using TorchSharp.Modules;

namespace Man.ML.Local;

/// <summary>InfoPro's ImageNet decoder and classifier on one segment's features, with loss λ1·BCE + λ2·(CE | contrast).</summary>
internal sealed class InfoProImageNetHead : AuxiliaryHead, IHasCost
{
    private const int EmbeddingWidth = 128, Pooled = 2048;
    private readonly ModuleList<Sequential> decoder;        // one stage per up-sampling step, in order
    private readonly long[][] stageSizes;                   // the size each stage's input is resized to first
    private readonly Sequential classifier;
    private readonly int outputs;
    private readonly Tensor mean;
    private readonly Tensor std;

    /// <summary>Weight of the reconstruction loss (λ1).</summary>
    public double ReconstructionWeight { get; }

    /// <summary>Weight of the classification loss (λ2).</summary>
    public double ClassificationWeight { get; }

    /// <summary>The classifier's loss.</summary>
    public InfoProLossMode Mode { get; }

    /// <summary>Whether the 1024-channel variant was built (features wider than 512 channels).</summary>
    public bool Wide { get; }

    /// <summary>Creates the head for features of shape <paramref name="input"/> of images of shape <paramref name="image"/>.</summary>
    public InfoProImageNetHead(FeatureShape input, FeatureShape image, int classes, InfoProLossMode mode,
        double reconstructionWeight, double classificationWeight, Normalization normalization) : base(nameof(InfoProImageNetHead))
    {
        Mode = mode;
        ReconstructionWeight = reconstructionWeight;
        ClassificationWeight = classificationWeight;
        Wide = input.Channels > 512;
        outputs = mode == InfoProLossMode.CrossEntropy ? classes : EmbeddingWidth;

        // Decoder: (kernel, width) after each up-sampling step; the first layer runs before any.
        var steps = Wide
            ? new[] { (1, 64), (3, 32), (3, 12), (3, image.Channels) }
            : new[] { (3, 32), (3, 12), (3, image.Channels) };
        int first = Wide ? 192 : 128;
        var stages = new List<Sequential>
        {
            nn.Sequential(new Conv2dLayer(input.Channels, first, 1), BatchNormLayer.TwoDimensional(first), nn.ReLU(inplace: true)),
        };
        var sizes = new List<long[]> { new long[] { input.Height, input.Width } };
        int width = first;
        for (int s = 0; s < steps.Length; s++)
        {
            var (kernel, outWidth) = steps[s];
            bool last = s == steps.Length - 1;
            int shift = steps.Length - 1 - s; // the last step reaches the image, each earlier one half of the next
            sizes.Add(new long[] { Math.Max(input.Height, image.Height >> shift), Math.Max(input.Width, image.Width >> shift) });
            stages.Add(last
                ? nn.Sequential(new Conv2dLayer(width, outWidth, kernel, padding: kernel / 2), new Float32Sigmoid())
                : nn.Sequential(new Conv2dLayer(width, outWidth, kernel, padding: kernel / 2), BatchNormLayer.TwoDimensional(outWidth),
                    nn.ReLU(inplace: true)));
            width = outWidth;
        }
        decoder = new ModuleList<Sequential>(stages.ToArray());
        stageSizes = sizes.ToArray();

        int reduce = Wide ? 256 : 128;
        classifier = nn.Sequential(
            new Conv2dLayer(input.Channels, reduce, 1, bias: false), BatchNormLayer.TwoDimensional(reduce), nn.ReLU(inplace: true),
            new Conv2dLayer(reduce, 256, 3, stride: 2, padding: 1, bias: false), BatchNormLayer.TwoDimensional(256), nn.ReLU(inplace: true),
            new Conv2dLayer(256, 512, 3, stride: 2, padding: 1, bias: false), BatchNormLayer.TwoDimensional(512), nn.ReLU(inplace: true),
            new Conv2dLayer(512, Pooled, 1, bias: false), BatchNormLayer.TwoDimensional(Pooled), nn.ReLU(inplace: true),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            new LinearLayer(Pooled, outputs));
        mean = tensor(normalization.Mean).view(1, -1, 1, 1);
        std = tensor(normalization.Std).view(1, -1, 1, 1);
        RegisterComponents();
        Initialization.ApplyReference(this);
    }

    /// <summary>The classifier's output: class logits or the 128-d embedding.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return classifier.call(x).MoveToOuterDisposeScope(); // (B, outputs)
    }

    /// <summary>The decoder's reconstruction of the input image, (B, 3, H, W) in [0, 1].</summary>
    public Tensor Reconstruct(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x;
        for (int s = 0; s < decoder.Count; s++)
        {
            var size = stageSizes[s];
            if (h.shape[2] != size[0] || h.shape[3] != size[1])
                h = nn.functional.interpolate(h, size, mode: InterpolationMode.Bilinear, align_corners: true); // (B, C, size)
            h = decoder[s].call(h);
        }
        return h.MoveToOuterDisposeScope();
    }

    /// <inheritdoc />
    public override Tensor Loss(Tensor features, LocalTargets targets) =>
        InfoProLoss.Compute(features, targets, ReconstructionWeight, ClassificationWeight, Mode, mean, std, Reconstruct, call);

    /// <summary>
    /// Per layer chain: every tensor a convolution, linear layer or batch norm takes as input, or a ReLU or sigmoid
    /// returns, counted once; the decoder also keeps its target. Terms with zero weight are not run and cost nothing.
    /// </summary>
    public ModuleCost Cost(FeatureShape input)
    {
        long saved = 0, flops = 0;
        if (ReconstructionWeight != 0)
        {
            var shape = input;
            for (int s = 0; s < decoder.Count; s++)
            {
                var size = stageSizes[s];
                bool resized = shape.Height != size[0] || shape.Width != size[1];
                shape = new FeatureShape(shape.Channels, (int)size[0], (int)size[1]);
                var stage = LayerCost.Chain(decoder[s], shape, inputAlreadyCounted: s == 0 || !resized);
                saved += stage.SavedInput + stage.SavedInternal;
                flops += stage.ForwardFlops;
                shape = stage.Output;
            }
            saved += shape.Elements; // the target
        }
        if (ClassificationWeight != 0)
        {
            var chain = LayerCost.Chain(classifier, input, inputAlreadyCounted: true);
            saved += chain.SavedInternal + outputs;
            flops += chain.ForwardFlops;
        }
        return new ModuleCost(new FeatureShape(outputs, 1, 1), input.Elements, saved, false, flops);
    }
}
