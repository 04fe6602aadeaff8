// How much the ML.NET plumbing costs when scoring: images per second through Transform (an IDataView of pixel
// vectors, Score read row by row) against the engine scoring the same images as tensors directly (normalise, forward,
// softmax, copy out), in batches of the same size, alternating rounds on one machine.
using System.Diagnostics;
using Man.ML.Backend;
using Man.ML.Data;
using Man.ML.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Lab.Tooling;

/// <summary>Throughput of <see cref="ManImageClassificationTransformer.Transform"/> against direct scoring.</summary>
/// <param name="Images">Images scored per round.</param>
/// <param name="BatchSize">Scoring batch size of both paths.</param>
/// <param name="TransformImagesPerSecond">Median over rounds, through Transform.</param>
/// <param name="EngineImagesPerSecond">Median over rounds, the engine on tensors.</param>
internal sealed record ScoringThroughputReport(int Images, int BatchSize, double TransformImagesPerSecond, double EngineImagesPerSecond)
{
    /// <summary>Transform's throughput as a fraction of the engine's.</summary>
    public double Ratio => TransformImagesPerSecond / EngineImagesPerSecond;
}

/// <summary>Measures <see cref="ScoringThroughputReport"/>.</summary>
internal static class ScoringThroughput
{
    private sealed class PixelRow
    {
        public float[] Pixels { get; set; } = Array.Empty<float>();
    }

    /// <summary>Scores <paramref name="images"/> (uint8, (N, 3, S, S)) both ways, <paramref name="rounds"/> times each.</summary>
    public static ScoringThroughputReport Measure(MLContext mlContext, ManImageClassificationTransformer model, LabeledImages images, int rounds = 3)
    {
        int n = images.Count, size = model.ImageSize, pixelsPer = 3 * size * size;
        if (images.Images.shape[2] != size)
            throw new InvalidOptionException("images", $"Images must be {size}x{size} for this model (got {images.Images.shape[2]}x{images.Images.shape[3]}).");
        var bytes = images.Images.contiguous().data<byte>().ToArray();
        var rows = Enumerable.Range(0, n).Select(i =>
        {
            var row = new float[pixelsPer];
            for (int j = 0; j < pixelsPer; j++) row[j] = bytes[(long)i * pixelsPer + j];
            return new PixelRow { Pixels = row };
        }).ToList();
        var schema = SchemaDefinition.Create(typeof(PixelRow));
        schema[nameof(PixelRow.Pixels)].ColumnType = new VectorDataViewType(NumberDataViewType.Single, pixelsPer);
        schema[nameof(PixelRow.Pixels)].ColumnName = model.ImageColumnName; // the pixels go in as the column the model reads
        var data = mlContext.Data.LoadFromEnumerable(rows, schema);
        var pixelModel = model;
        using var floats = images.Images.to_type(ScalarType.Float32);

        double TransformRound()
        {
            var clock = Stopwatch.StartNew();
            var scored = pixelModel.Transform(data);
            using var cursor = scored.GetRowCursor(new[] { scored.Schema["Score"] });
            var getter = cursor.GetGetter<VBuffer<float>>(scored.Schema["Score"]);
            var score = default(VBuffer<float>);
            double sum = 0;
            while (cursor.MoveNext()) { getter(ref score); sum += score.GetValues()[0]; }
            return n / clock.Elapsed.TotalSeconds;
        }

        double EngineRound()
        {
            var clock = Stopwatch.StartNew();
            using var noGrad = no_grad();
            var output = new float[n * model.ClassCount];
            for (int start = 0; start < n; start += model.ScoringBatchSize)
            {
                using var scope = NewDisposeScope();
                int count = Math.Min(model.ScoringBatchSize, n - start);
                var x = floats.narrow(0, start, count).DividedBy(255);
                var p = nn.functional.softmax(model.Network.call(model.Normalization.Apply(x)), 1).cpu();
                p.data<float>().CopyTo(output, start * model.ClassCount);
            }
            return n / clock.Elapsed.TotalSeconds;
        }

        TransformRound(); EngineRound(); // warm-up
        var transform = new List<double>();
        var engine = new List<double>();
        for (int r = 0; r < rounds; r++)
        {
            engine.Add(EngineRound());
            transform.Add(TransformRound());
        }
        return new ScoringThroughputReport(n, model.ScoringBatchSize, Median(transform), Median(engine));
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
