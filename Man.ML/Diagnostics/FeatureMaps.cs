// One unit's feature maps for one image as a PNG grid (the paper's Figure 3): each channel scaled to its own range and
// drawn in grey, channels in row-major order.
using Man.ML.Data;
using Man.ML.Models;
using SkiaSharp;
using Man.ML.Backend;

namespace Man.ML.Diagnostics;

/// <summary>Draws feature maps.</summary>
public static class FeatureMaps
{
    /// <summary>Writes the feature maps of unit <paramref name="unit"/> for <paramref name="image"/> ((3, H, W) uint8) to <paramref name="path"/>.</summary>
    /// <returns>The number of channels drawn.</returns>
    public static int WriteGrid(UnitChainNetwork network, Tensor image, Normalization normalization, int unit, string path, int scale = 4)
    {
        if (unit < 0 || unit >= network.Units.Count)
            throw new InvalidOptionException("unit", $"The unit must be between 0 and {network.Units.Count - 1} for {network.Architecture} (got {unit}).");
        network.eval();
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var x = normalization.Apply(image.unsqueeze(0).to_type(ScalarType.Float32).DividedBy(255));
        foreach (var u in network.Units.Take(unit + 1)) x = u.call(x);
        var maps = x[0];                                                  // (C, H, W)
        long c = maps.shape[0], h = maps.shape[1], w = maps.shape[2];
        var flat = maps.reshape(c, -1);
        var lo = flat.min(1, keepdim: true).values;
        var hi = flat.max(1, keepdim: true).values;
        var scaled = ((flat - lo) / (hi - lo).Plus(1e-8)).Times(255).Clamped(0, 255).to_type(ScalarType.Byte).data<byte>().ToArray();
        int columns = (int)Math.Ceiling(Math.Sqrt(c)), rows = (int)Math.Ceiling(c / (double)columns), gap = 2;
        int tileW = (int)w * scale, tileH = (int)h * scale;
        using var surface = SKSurface.Create(new SKImageInfo(columns * (tileW + gap) + gap, rows * (tileH + gap) + gap));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var paint = new SKPaint();
        for (int ch = 0; ch < c; ch++)
        {
            int ox = gap + (ch % columns) * (tileW + gap), oy = gap + (ch / columns) * (tileH + gap);
            for (int py = 0; py < h; py++)
                for (int px = 0; px < w; px++)
                {
                    byte v = scaled[ch * h * w + py * w + px];
                    paint.Color = new SKColor(v, v, v);
                    canvas.DrawRect(ox + px * scale, oy + py * scale, scale, scale, paint);
                }
        }
        using var snapshot = surface.Snapshot();
        using var data = snapshot.Encode(SKEncodedImageFormat.Png, 100);
        AtomicFile.Write(path, s => data.SaveTo(s));
        return (int)c;
    }
}
