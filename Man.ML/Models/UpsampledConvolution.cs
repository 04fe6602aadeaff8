// A convolution of a bilinearly up-sampled map (align_corners = true), as InfoPro's decoder computes it, without
// building the up-sampled map when that is cheaper.
//
// Up-sampling acts on each channel alone and a convolution's channel mixing acts on each pixel alone, so the two
// commute: conv_k(up(x)) = Σ over the k×k taps (dy, dx) of A_dy · (W_dy,dx x) · A_dxᵀ, where W_dy,dx mixes channels
// at the low resolution and A_d is the (H × h) interpolation matrix with its rows shifted by d − k/2 (rows that fall
// outside the image are zero: the convolution's zero padding). Three matrix products do it: the channel mixing at h×w
// (O·k² maps), the taps and interpolation along the height, then along the width. Where the input has more channels
// than the output (InfoPro's decoders), that is both faster and keeps smaller tensors for backward than convolving the
// up-sampled map (docs/BENCHMARKS.md has the measurements). The separable route is taken when it does fewer operations
// and keeps at most 1.5× the up-sampled map; at equal sizes up-sampling with align_corners is the identity and is
// skipped.
// The result equals the plain path's up to float32 rounding (another summation order).

using Man.ML.Backend;
namespace Man.ML.Models;

/// <summary>How <see cref="UpsampledConvolution"/> computes conv(up(x)).</summary>
internal enum UpsampleRoute
{
    /// <summary>Input already at the target size: the convolution alone (up-sampling is the identity).</summary>
    Identity,

    /// <summary>libtorch's bilinear interpolation, then the convolution.</summary>
    Interpolate,

    /// <summary>Channel mixing at the low resolution, then the taps and interpolation as two matrix products.</summary>
    Separable,
}

/// <summary>conv(interpolate(x, size, bilinear, align_corners: true)) computed along the cheaper route.</summary>
internal static class UpsampledConvolution
{
    /// <summary>The route for a convolution <paramref name="conv"/> of <paramref name="input"/> up-sampled to
    /// <paramref name="height"/> × <paramref name="width"/>.</summary>
    public static UpsampleRoute RouteFor(Conv2dLayer conv, FeatureShape input, int height, int width)
    {
        if (input.Height == height && input.Width == width) return UpsampleRoute.Identity;
        int k = conv.KernelSize;
        bool separable = conv.Groups == 1 && conv.Stride == 1 && k % 2 == 1 && conv.Padding == k / 2
                         && input.Height <= height && input.Width <= width;
        if (!separable) return UpsampleRoute.Interpolate;
        // Fewer operations, and at most half as much again kept for backward as the up-sampled map would be.
        return 2 * SeparableSaved(conv, input, height, width) <= 3L * input.Channels * height * width
               && SeparableFlops(conv, input, height, width)
                  < LayerCost.ConvFlops(new FeatureShape(input.Channels, height, width), new FeatureShape(conv.OutChannels, height, width), k)
            ? UpsampleRoute.Separable
            : UpsampleRoute.Interpolate;
    }

    /// <summary>Elements per sample the route keeps for backward besides the input and the output: the up-sampled map
    /// (interpolate), the two reshaped products (separable), nothing (identity; the convolution keeps the input itself).</summary>
    public static long SavedElements(Conv2dLayer conv, FeatureShape input, int height, int width) =>
        RouteFor(conv, input, height, width) switch
        {
            UpsampleRoute.Identity => 0,
            UpsampleRoute.Interpolate => (long)input.Channels * height * width,
            _ => SeparableSaved(conv, input, height, width),
        };

    /// <summary>Whether the route keeps the input itself for backward (the convolution's or the channel mixing's input).</summary>
    public static bool KeepsInput(Conv2dLayer conv, FeatureShape input, int height, int width) =>
        RouteFor(conv, input, height, width) != UpsampleRoute.Interpolate;

    /// <summary>conv(up(x)) for x of shape (B, C, h, w), up to (B, O, <paramref name="height"/>, <paramref name="width"/>).</summary>
    public static Tensor Forward(Conv2dLayer conv, Tensor x, int height, int width)
    {
        var shape = new FeatureShape((int)x.shape[1], (int)x.shape[2], (int)x.shape[3]);
        switch (RouteFor(conv, shape, height, width))
        {
            case UpsampleRoute.Identity:
                return conv.call(x);
            case UpsampleRoute.Interpolate:
            {
                using var scope = NewDisposeScope();
                var up = nn.functional.interpolate(x, new long[] { height, width }, mode: InterpolationMode.Bilinear, align_corners: true);
                return conv.call(up).MoveToOuterDisposeScope();
            }
            default:
                // conv.call casts at its boundary on the other routes; this one multiplies the weight itself.
                return MixedPrecision.Result(Separable(MixedPrecision.Operand(conv.Weight)!, MixedPrecision.Operand(conv.Bias),
                    MixedPrecision.Operand(x)!, height, width));
        }
    }

    /// <summary>The separable route on its own (a test compares it with the plain one).</summary>
    internal static Tensor Separable(Tensor weight, Tensor? bias, Tensor x, int height, int width)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        long o = weight.shape[0], k = weight.shape[2];
        var rows = ShiftedInterpolation(height, (int)h, (int)k, x.dtype, x.device);   // (k·h, H): [A_0 … A_k−1]ᵀ
        var columns = ShiftedInterpolation(width, (int)w, (int)k, x.dtype, x.device); // (k·w, W)
        // Channel mixing for every tap at h×w: (B, O·k·k, h·w), rows ordered (o, dy, dx). bmm against the expanded
        // weight keeps x and the weight for backward, not a copy of either.
        var mixing = weight.permute(0, 2, 3, 1).reshape(o * k * k, c);
        var z = mixing.expand(b, o * k * k, c).bmm(x.reshape(b, c, h * w));
        // Height: contract (dy, row) with the shifted interpolation along the height.
        var byHeight = z.view(b, o, k, k, h, w).permute(0, 1, 3, 5, 2, 4).reshape(b * o * k * w, k * h)
            .mm(rows);                                                                   // (B·O·k·w, H)
        // Width: contract (dx, column) likewise; the product comes out as (B, O, H, W), contiguous.
        var y = byHeight.view(b, o, k, w, height).permute(0, 1, 4, 2, 3).reshape(b * o * height, k * w)
            .mm(columns).view(b, o, height, width);
        if (bias is not null) y = y.Plus(bias.view(1, -1, 1, 1));
        return y.MoveToOuterDisposeScope();
    }

    // The interpolation matrices A_d (out × in) for the k taps, each shifted by d − k/2 and stacked side by side, then
    // transposed: (k·in, out). Row i of A takes output pixel i from source position i·(in − 1)/(out − 1).
    private static Tensor ShiftedInterpolation(int outSize, int inSize, int k, ScalarType dtype, Device device)
    {
        var values = new double[k * inSize * outSize]; // [d, source, output]
        for (int d = 0; d < k; d++)
            for (int i = 0; i < outSize; i++)
            {
                int shifted = i + d - k / 2;
                if (shifted < 0 || shifted >= outSize) continue; // the convolution's zero padding
                double source = outSize > 1 ? shifted * (double)(inSize - 1) / (outSize - 1) : 0;
                int low = Math.Min((int)Math.Floor(source), inSize - 1), high = Math.Min(low + 1, inSize - 1);
                double fraction = source - low;
                values[(d * inSize + low) * outSize + i] += 1 - fraction;
                values[(d * inSize + high) * outSize + i] += fraction;
            }
        return tensor(values, new long[] { k * inSize, outSize }, float64).to(dtype, device);
    }

    private static long SeparableSaved(Conv2dLayer conv, FeatureShape input, int height, int width)
    {
        long o = conv.OutChannels, k = conv.KernelSize;
        return o * k * k * input.Height * input.Width + o * k * input.Width * height;
    }

    private static long SeparableFlops(Conv2dLayer conv, FeatureShape input, int height, int width)
    {
        long o = conv.OutChannels, k = conv.KernelSize, c = input.Channels;
        return 2 * (c * o * k * k * input.Height * input.Width + o * k * input.Width * k * input.Height * height + o * height * k * input.Width * width);
    }
}
