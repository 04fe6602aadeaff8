using Man.ML.Data;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

/// <summary>
/// Man.ML's managed crop-and-resize (ImagePixels, shared with the ONNX scoring sample) against libtorch's
/// interpolate(bilinear, antialias, align_corners false) computed independently on the same images.
/// </summary>
[TestClass]
public sealed class ImagePixelsTests
{
    [TestMethod]
    [DataRow(32, 32, 64, 0, 0, 32, 32)]    // up-scaling (CIFAR images for a 64x64 network)
    [DataRow(120, 90, 64, 0, 0, 120, 90)]  // down-scaling, non-square (antialiased)
    [DataRow(300, 200, 64, 50, 10, 180, 180)] // a centre-style crop, then down-scaling
    [DataRow(40, 40, 32, 3, 5, 21, 33)]    // a crop up in one direction, down in the other
    [DataRow(64, 48, 64, 0, 0, 64, 48)]    // one direction unchanged
    public void TheManagedResizeAgreesWithLibtorchsAntialiasedBilinear(int width, int height, int size, int x, int y, int w, int h)
    {
        var random = new Random(width * 31 + height);
        var planar = new byte[3 * width * height];
        random.NextBytes(planar);
        var ours = new byte[3 * size * size];
        ImagePixels.CropResize(planar, width, height, (x, y, w, h), size, ours);

        using var scope = NewDisposeScope();
        var region = tensor(planar, new long[] { 1, 3, height, width }, dtype: ScalarType.Byte)
            .narrow(2, y, h).narrow(3, x, w).to_type(ScalarType.Float32);
        var resized = nn.functional.interpolate(region, new long[] { size, size }, mode: InterpolationMode.Bilinear, align_corners: false, antialias: true);
        var theirs = resized.round().Clamped(0, 255).to_type(ScalarType.Byte).contiguous().data<byte>().ToArray();

        int differing = 0, largest = 0;
        for (int i = 0; i < ours.Length; i++)
        {
            int d = Math.Abs(ours[i] - theirs[i]);
            if (d > 0) differing++;
            largest = Math.Max(largest, d);
        }
        // Rounding of float sums taken in another order can put a value that lies within float error of k + ½ on the
        // other side: one level, rarely.
        Assert.IsTrue(largest <= 1, $"a pixel differs from libtorch's by {largest} levels");
        Assert.IsTrue(differing <= ours.Length / 1000 + 1, $"{differing} of {ours.Length} pixels differ from libtorch's by one level");
    }

    [TestMethod]
    public void ACropOutsideTheImageIsRefused() =>
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ImagePixels.CropResize(new byte[3 * 16], 4, 4, (2, 0, 3, 4), 8, new byte[3 * 64]));
}
