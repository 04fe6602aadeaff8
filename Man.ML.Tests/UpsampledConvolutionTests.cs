// The separable route of conv(bilinear up-sampling(x)) against libtorch's own interpolation followed by its
// convolution: the same values and gradients (in float64, to rounding; in float32, to float32 rounding), the routes
// InfoPro's CIFAR decoder takes, and the identity that lets equal sizes skip the interpolation.
using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;
using TorchSharp;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class UpsampledConvolutionTests
{
    // Fixed data (not from the generator): sin of the element index at a frequency.
    private static Tensor Pattern(long[] shape, double frequency) =>
        HeldScalars.Arange(shape.Aggregate(1L, (a, b) => a * b), float64).TimesInPlace(frequency).sin_().view(shape);

    // Value and gradients (input, weight, bias) of Σ conv(up(x)) · pattern along either route.
    private static (Tensor Output, Tensor Input, Tensor Weight, Tensor? Bias) Run(bool separable, long[] inputShape, long outChannels, int kernel,
        bool withBias, int height, int width, ScalarType dtype)
    {
        var x = Pattern(inputShape, 0.7).to(dtype).requires_grad_(true);
        var w = Pattern(new[] { outChannels, inputShape[1], kernel, kernel }, 1.3).TimesInPlace(0.2).to(dtype).requires_grad_(true);
        var b = withBias ? Pattern(new[] { outChannels }, 2.1).to(dtype).requires_grad_(true) : null;
        var y = separable
            ? UpsampledConvolution.Separable(w, b, x, height, width)
            : nn.functional.conv2d(nn.functional.interpolate(x, new long[] { height, width }, mode: InterpolationMode.Bilinear, align_corners: true),
                w, b, padding: new long[] { kernel / 2, kernel / 2 });
        var weights = Pattern(y.shape, 0.37).to(dtype);
        (y * weights).sum().backward();
        return (y.detach(), x.grad!, w.grad!, b?.grad);
    }

    private static double RelativeError(Tensor got, Tensor reference) =>
        (got.to(float64) - reference.to(float64)).abs().max().item<double>() / reference.abs().max().item<double>();

    // Output and every gradient within a relative tolerance.
    private static void AssertAgree((Tensor Output, Tensor Input, Tensor Weight, Tensor? Bias) got,
        (Tensor Output, Tensor Input, Tensor Weight, Tensor? Bias) reference, double tolerance)
    {
        Assert.IsLessThan(tolerance, RelativeError(got.Output, reference.Output), "output");
        Assert.IsLessThan(tolerance, RelativeError(got.Input, reference.Input), "input gradient");
        Assert.IsLessThan(tolerance, RelativeError(got.Weight, reference.Weight), "weight gradient");
        if (reference.Bias is not null) Assert.IsLessThan(tolerance, RelativeError(got.Bias!, reference.Bias), "bias gradient");
    }

    public static IEnumerable<object[]> Shapes => new[]
    {
        new object[] { new long[] { 3, 64, 8, 8 }, 12L, 3, true, 32, 32 },   // InfoPro's CIFAR decoder at stage 3
        new object[] { new long[] { 2, 32, 16, 16 }, 12L, 3, true, 32, 32 }, // stage 2
        new object[] { new long[] { 2, 5, 4, 6 }, 7L, 3, false, 16, 20 },    // non-square, no bias
        new object[] { new long[] { 2, 6, 3, 5 }, 4L, 1, true, 9, 11 },      // 1x1 kernel
        new object[] { new long[] { 1, 4, 4, 4 }, 3L, 5, true, 13, 13 },     // 5x5 kernel, padding 2
    };

    [TestMethod]
    [DynamicData(nameof(Shapes))]
    public void SeparableRouteEqualsInterpolationThenConvolutionInFloat64(long[] input, long outChannels, int kernel, bool bias, int height, int width)
    {
        using var scope = NewDisposeScope();
        AssertAgree(Run(true, input, outChannels, kernel, bias, height, width, float64),
            Run(false, input, outChannels, kernel, bias, height, width, float64), 1e-12);
    }

    [TestMethod]
    [DynamicData(nameof(Shapes))]
    public void SeparableRouteInFloat32MatchesFloat64(long[] input, long outChannels, int kernel, bool bias, int height, int width)
    {
        using var scope = NewDisposeScope();
        AssertAgree(Run(true, input, outChannels, kernel, bias, height, width, float32),
            Run(false, input, outChannels, kernel, bias, height, width, float64), 1e-5);
    }

    [TestMethod]
    public void InfoProDecoderTakesTheCheaperRouteAtEachCifarStage()
    {
        using var conv16 = new Conv2dLayer(16, 12, 3, padding: 1);
        using var conv32 = new Conv2dLayer(32, 12, 3, padding: 1);
        using var conv64 = new Conv2dLayer(64, 12, 3, padding: 1);
        Assert.AreEqual(UpsampleRoute.Identity, UpsampledConvolution.RouteFor(conv16, new FeatureShape(16, 32, 32), 32, 32));
        // 12·9·16·16 + 12·3·16·32 = 46,080 kept elements, within 1.5× the 32×32×32 map's 32,768, and fewer operations: separable.
        Assert.AreEqual(UpsampleRoute.Separable, UpsampledConvolution.RouteFor(conv32, new FeatureShape(32, 16, 16), 32, 32));
        // 4 channels at 16×16 into 12: the products would keep 46,080 against the map's 4,096: interpolate.
        using var conv4 = new Conv2dLayer(4, 12, 3, padding: 1);
        Assert.AreEqual(UpsampleRoute.Interpolate, UpsampledConvolution.RouteFor(conv4, new FeatureShape(4, 16, 16), 32, 32));
        Assert.AreEqual(4_096L, UpsampledConvolution.SavedElements(conv4, new FeatureShape(4, 16, 16), 32, 32));
        // 12·9·8·8 + 12·3·8·32 = 16,128 against the 64×32×32 map's 65,536: separable.
        Assert.AreEqual(UpsampleRoute.Separable, UpsampledConvolution.RouteFor(conv64, new FeatureShape(64, 8, 8), 32, 32));
        Assert.AreEqual(16_128L, UpsampledConvolution.SavedElements(conv64, new FeatureShape(64, 8, 8), 32, 32));
        Assert.AreEqual(46_080L, UpsampledConvolution.SavedElements(conv32, new FeatureShape(32, 16, 16), 32, 32));
        // A strided convolution has no separable form here.
        using var strided = new Conv2dLayer(64, 12, 3, stride: 2, padding: 1);
        Assert.AreEqual(UpsampleRoute.Interpolate, UpsampledConvolution.RouteFor(strided, new FeatureShape(64, 8, 8), 32, 32));
    }

    [TestMethod]
    public void BilinearInterpolationToTheSameSizeIsTheIdentity()
    {
        // Why the identity route may skip it: align_corners maps pixel i to source i exactly, with weights 1 and 0.
        using var scope = NewDisposeScope();
        var x = randn(2, 16, 32, 32);
        var up = nn.functional.interpolate(x, new long[] { 32, 32 }, mode: InterpolationMode.Bilinear, align_corners: true);
        Assert.IsTrue(up.eq(x).all().item<bool>(), "interpolate(x, its own size, bilinear, align_corners) differs from x");
    }

    [TestMethod]
    public void InfoProReconstructionEqualsTheReferenceDecoderAtEveryStage()
    {
        // The head's reconstruction against the reference layer order written out here: interpolate, conv, BN, ReLU, conv, sigmoid.
        using var scope = NewDisposeScope();
        foreach (var shape in new[] { new FeatureShape(16, 32, 32), new FeatureShape(32, 16, 16), new FeatureShape(64, 8, 8) })
        {
            manual_seed(5);
            using var head = new InfoProHead(shape, new FeatureShape(3, 32, 32), 10, AuxClassifierConfig.C2F2,
                InfoProLossMode.CrossEntropy, 1, 1, Normalization.Cifar);
            head.to(float64);
            head.train();
            var x = Pattern(new long[] { 2, shape.Channels, shape.Height, shape.Width }, 0.9);
            var got = head.Reconstruct(x);
            var layers = head.named_modules().Where(m => m.name.StartsWith("decoder.", StringComparison.Ordinal)).Select(m => m.module).ToList();
            var conv1 = (Conv2dLayer)layers[0];
            var conv2 = (Conv2dLayer)layers[3];
            var bn = (TorchSharp.Modules.BatchNorm)layers[1];
            var up = nn.functional.interpolate(x, new long[] { 32, 32 }, mode: InterpolationMode.Bilinear, align_corners: true);
            var h = nn.functional.conv2d(up, conv1.Weight, conv1.Bias, padding: new long[] { 1, 1 });
            h = nn.functional.batch_norm(h, null, null, bn.weight, bn.bias, training: true);
            h = nn.functional.conv2d(nn.functional.relu(h), conv2.Weight, conv2.Bias, padding: new long[] { 1, 1 }).sigmoid();
            Assert.IsLessThan(1e-12, (got - h).abs().max().item<double>(), $"reconstruction from {shape}");
        }
    }
}
