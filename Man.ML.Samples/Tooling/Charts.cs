// Small PNG charts (lines with markers, grouped bars) drawn with SkiaSharp, on the SkiaSharp 3 that ML.NET
// ImageAnalytics 6.0.0 brings (one process can load only one SkiaSharp). They were written when ImageAnalytics 5.0.1
// held the process to SkiaSharp 2.88, which ScottPlot 5 cannot use; a few charts did not justify moving to it since.
using SkiaSharp;

namespace Man.ML.Samples.Tooling;

/// <summary>A named series of (x, y) points.</summary>
public sealed record ChartSeries(string Name, IReadOnlyList<double> X, IReadOnlyList<double> Y);

/// <summary>Draws line and bar charts to PNG files.</summary>
public static class Charts
{
    private const int Width = 900, Height = 560, Left = 90, Right = 220, Top = 50, Bottom = 70;
    private static readonly SKColor[] Palette =
    {
        new(31, 119, 180), new(255, 127, 14), new(44, 160, 44), new(214, 39, 40), new(148, 103, 189), new(140, 86, 75),
        new(227, 119, 194), new(127, 127, 127), new(188, 189, 34), new(23, 190, 207),
    };

    /// <summary>A line chart of <paramref name="series"/>; <paramref name="logX"/> spaces x by log2 (for K = 1, 2, 4, …).</summary>
    public static void Line(string path, string title, string xLabel, string yLabel, IReadOnlyList<ChartSeries> series, bool logX = false)
    {
        var points = series.SelectMany(s => s.X.Zip(s.Y)).Where(p => double.IsFinite(p.Second)).ToList();
        if (points.Count == 0) throw new InvalidOptionException("runs", "Nothing to plot: no finite figures in the runs given.");
        double Tx(double x) => logX ? Math.Log2(x) : x;
        var (xMin, xMax) = Range(points.Select(p => Tx(p.First)));
        var (yMin, yMax) = Range(points.Select(p => p.Second).Append(0));
        var yTicks = NiceTicks(yMin, yMax);
        yMin = yTicks[0]; yMax = yTicks[^1];
        var xTicks = logX ? points.Select(p => p.First).Distinct().OrderBy(v => v).ToArray() : NiceTicks(xMin, xMax);
        if (!logX) { xMin = xTicks[0]; xMax = xTicks[^1]; }
        Draw(path, title, xLabel, yLabel, canvas =>
        {
            float X(double x) => Left + (float)((Tx(x) - xMin) / Math.Max(xMax - xMin, 1e-12) * (Width - Left - Right));
            float Y(double y) => Height - Bottom - (float)((y - yMin) / Math.Max(yMax - yMin, 1e-12) * (Height - Top - Bottom));
            Axes(canvas, xTicks.Select(t => (X(t), Label(t))), yTicks.Select(t => (Y(t), Label(t))));
            for (int s = 0; s < series.Count; s++)
            {
                using var paint = new SKPaint { Color = Palette[s % Palette.Length], StrokeWidth = 2.5f, IsAntialias = true, Style = SKPaintStyle.Stroke };
                using var dot = new SKPaint { Color = Palette[s % Palette.Length], IsAntialias = true, Style = SKPaintStyle.Fill };
                var pts = series[s].X.Zip(series[s].Y).Where(p => double.IsFinite(p.Second)).Select(p => new SKPoint(X(p.First), Y(p.Second))).ToArray();
                for (int i = 1; i < pts.Length; i++) canvas.DrawLine(pts[i - 1], pts[i], paint);
                foreach (var p in pts) canvas.DrawCircle(p, 4, dot);
            }
            Legend(canvas, series.Select(s => s.Name).ToList());
        });
    }

    /// <summary>A grouped bar chart: one group per category, one bar per series.</summary>
    public static void Bars(
        string path, string title, string yLabel, IReadOnlyList<string> categories, IReadOnlyList<(string Name, IReadOnlyList<double> Values)> series)
    {
        var (_, yMax) = Range(series.SelectMany(s => s.Values).Where(double.IsFinite).Append(0));
        var yTicks = NiceTicks(0, yMax);
        Draw(path, title, "", yLabel, canvas =>
        {
            float plotWidth = Width - Left - Right, group = plotWidth / categories.Count, bar = group * 0.8f / series.Count;
            float Y(double y) => Height - Bottom - (float)(y / yTicks[^1] * (Height - Top - Bottom));
            Axes(canvas, categories.Select((c, i) => (Left + group * (i + 0.5f), c)), yTicks.Select(t => (Y(t), Label(t))));
            for (int s = 0; s < series.Count; s++)
            {
                using var paint = new SKPaint { Color = Palette[s % Palette.Length], IsAntialias = true };
                for (int i = 0; i < categories.Count; i++)
                {
                    double v = series[s].Values[i];
                    if (!double.IsFinite(v)) continue;
                    float x = Left + group * i + group * 0.1f + bar * s;
                    canvas.DrawRect(new SKRect(x, Y(v), x + bar - 2, Y(0)), paint);
                }
            }
            Legend(canvas, series.Select(s => s.Name).ToList());
        });
    }

    private static void Draw(string path, string title, string xLabel, string yLabel, Action<SKCanvas> body)
    {
        using var surface = SKSurface.Create(new SKImageInfo(Width, Height));
        var canvas = surface.Canvas;
        canvas.Clear(SKColors.White);
        using var ink = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var titleFont = new SKFont { Size = 20, Embolden = true };
        canvas.DrawText(title, (Width - Right + Left) / 2f, 30, SKTextAlign.Center, titleFont, ink);
        using var labelFont = new SKFont { Size = 15 };
        canvas.DrawText(xLabel, (Width - Right + Left) / 2f, Height - 15, SKTextAlign.Center, labelFont, ink);
        canvas.Save();
        canvas.RotateDegrees(-90, 22, Height / 2f);
        canvas.DrawText(yLabel, 22, Height / 2f, SKTextAlign.Center, labelFont, ink);
        canvas.Restore();
        body(canvas);
        using var image = surface.Snapshot();
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        AtomicFile.Write(path, s => data.SaveTo(s));
    }

    private static void Axes(SKCanvas canvas, IEnumerable<(float X, string Text)> xTicks, IEnumerable<(float Y, string Text)> yTicks)
    {
        using var axis = new SKPaint { Color = SKColors.Black, StrokeWidth = 1.5f, IsAntialias = true };
        using var grid = new SKPaint { Color = new SKColor(225, 225, 225), StrokeWidth = 1 };
        using var ink = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var font = new SKFont { Size = 13 };
        foreach (var (y, t) in yTicks)
        {
            canvas.DrawLine(Left, y, Width - Right, y, grid);
            canvas.DrawText(t, Left - 8, y + 4, SKTextAlign.Right, font, ink);
        }
        foreach (var (x, t) in xTicks) canvas.DrawText(t, x, Height - Bottom + 20, SKTextAlign.Center, font, ink);
        canvas.DrawLine(Left, Height - Bottom, Width - Right, Height - Bottom, axis);
        canvas.DrawLine(Left, Top, Left, Height - Bottom, axis);
    }

    private static void Legend(SKCanvas canvas, IReadOnlyList<string> names)
    {
        using var ink = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        using var font = new SKFont { Size = 13 };
        for (int i = 0; i < names.Count; i++)
        {
            using var swatch = new SKPaint { Color = Palette[i % Palette.Length] };
            float y = Top + 10 + 22 * i;
            canvas.DrawRect(new SKRect(Width - Right + 15, y - 10, Width - Right + 29, y + 2), swatch);
            canvas.DrawText(names[i], Width - Right + 36, y, SKTextAlign.Left, font, ink);
        }
    }

    private static (double Min, double Max) Range(IEnumerable<double> values)
    {
        var list = values.ToList();
        double min = list.Min(), max = list.Max();
        return max > min ? (min, max) : (min - 1, max + 1);
    }

    /// <summary>About five round tick values covering [min, max].</summary>
    internal static double[] NiceTicks(double min, double max)
    {
        double span = max - min, raw = span / 5, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 2.5, 5, 10 }.Select(f => f * magnitude).First(s => s >= raw);
        double start = Math.Floor(min / step) * step, end = Math.Ceiling(max / step) * step;
        var ticks = new List<double>();
        for (double t = start; t <= end + step / 2; t += step) ticks.Add(Math.Round(t, 10));
        return ticks.ToArray();
    }

    private static string Label(double v) => Math.Abs(v) >= 1000 || v == Math.Floor(v)
        ? v.ToString("0", System.Globalization.CultureInfo.InvariantCulture)
        : v.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture);
}
