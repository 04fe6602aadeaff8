// Thread-safe scoring of encoded images by one Man.ML transformer, two ways: a pool of PredictionEngines (ML.NET's
// engines are single-threaded; each request rents one) or batching (concurrent requests are gathered into one Transform
// by a single scoring loop). The transformer takes encoded image bytes in its image column and decodes them itself
// (the header checked against the pixel limit first), so a request's body goes in as it came.
using System.Threading.Channels;
using Man.ML.MLNet;
using Microsoft.Extensions.ObjectPool;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.Serving;

/// <summary>How concurrent requests are scored.</summary>
public enum ScoringMode
{
    /// <summary>Each request rents a PredictionEngine from a pool and scores its image alone.</summary>
    EnginePool,

    /// <summary>Requests waiting together are scored in one Transform by a single scoring loop.</summary>
    Batching,
}

/// <summary>One image's result.</summary>
/// <param name="Label">The most probable class.</param>
/// <param name="Probability">Its probability.</param>
/// <param name="Scores">Every class's probability, by class name.</param>
public sealed record Prediction(string Label, float Probability, IReadOnlyDictionary<string, float> Scores)
{
    /// <summary>The prediction of one image's class probabilities.</summary>
    public static Prediction From(float[] scores, string[] classes)
    {
        int best = 0;
        for (int c = 1; c < scores.Length; c++) if (scores[c] > scores[best]) best = c;
        return new Prediction(classes[best], scores[best], classes.Select((name, c) => (name, c)).ToDictionary(x => x.name, x => scores[x.c]));
    }
}

/// <summary>Scores encoded images from any number of threads.</summary>
public interface IImageScorer : IAsyncDisposable
{
    /// <summary>Scores one encoded image (PNG, JPEG, …).</summary>
    /// <exception cref="BadImageException">The bytes are not an image Man.ML can read, or exceed its pixel limit.</exception>
    Task<Prediction> ScoreAsync(byte[] image);
}

/// <summary>The body was not an image Man.ML can read (the message says why).</summary>
public sealed class BadImageException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Scores encoded images with a Man.ML transformer from any number of threads.</summary>
public sealed class ImageScorer : IImageScorer
{
    private sealed class Input
    {
        public byte[] Image { get; set; } = Array.Empty<byte>();
    }

    private sealed class Output
    {
        public float[] Score { get; set; } = Array.Empty<float>();
    }

    private readonly MLContext mlContext = new();
    private readonly ManImageClassificationTransformer model;
    private readonly string[] classes;
    private readonly SchemaDefinition inputSchema;
    private readonly ObjectPool<PredictionEngine<Input, Output>>? pool;
    private readonly Channel<(byte[] Image, TaskCompletionSource<Prediction> Done)>? queue;
    private readonly Task? loop;

    /// <summary>The scoring mode.</summary>
    public ScoringMode Mode { get; }

    /// <summary>Most images one batched Transform takes.</summary>
    public int MaxBatch { get; }

    /// <summary>Wraps <paramref name="model"/>; the scorer does not own it.</summary>
    public ImageScorer(ManImageClassificationTransformer model, ScoringMode mode, int maxBatch = 32)
    {
        this.model = model;
        Mode = mode;
        MaxBatch = maxBatch;
        inputSchema = SchemaDefinition.Create(typeof(Input));
        inputSchema[nameof(Input.Image)].ColumnName = model.ImageColumnName;
        // The class names are the PredictedLabel column's key values (the training labels).
        var output = model.GetOutputSchema(mlContext.Data.LoadFromEnumerable(Array.Empty<Input>(), inputSchema).Schema);
        var names = default(VBuffer<ReadOnlyMemory<char>>);
        output[ManImageClassificationTransformer.PredictedLabelColumnName].GetKeyValues(ref names);
        classes = names.DenseValues().Select(n => n.ToString()).ToArray();
        if (classes.Length != model.ClassCount) classes = Enumerable.Range(0, model.ClassCount).Select(i => i.ToString()).ToArray();
        if (mode == ScoringMode.EnginePool)
            pool = new DefaultObjectPool<PredictionEngine<Input, Output>>(new EnginePolicy(this), Environment.ProcessorCount * 2);
        else
        {
            queue = Channel.CreateUnbounded<(byte[], TaskCompletionSource<Prediction>)>(new UnboundedChannelOptions { SingleReader = true });
            loop = Task.Run(ScoreBatches);
        }
    }

    private sealed class EnginePolicy(ImageScorer owner) : PooledObjectPolicy<PredictionEngine<Input, Output>>
    {
        public override PredictionEngine<Input, Output> Create() => owner.mlContext.Model.CreatePredictionEngine<Input, Output>(
            owner.model, new PredictionEngineOptions { OwnsTransformer = false, InputSchemaDefinition = owner.inputSchema });

        public override bool Return(PredictionEngine<Input, Output> engine) => true;
    }

    /// <inheritdoc />
    public Task<Prediction> ScoreAsync(byte[] image)
    {
        if (pool is not null)
        {
            var engine = pool.Get();
            try { return Task.FromResult(ToPrediction(Bad(() => engine.Predict(new Input { Image = image }).Score))); }
            finally { pool.Return(engine); }
        }
        var done = new TaskCompletionSource<Prediction>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!queue!.Writer.TryWrite((image, done))) done.SetException(new ObjectDisposedException(nameof(ImageScorer)));
        return done.Task;
    }

    private async Task ScoreBatches()
    {
        var reader = queue!.Reader;
        var batch = new List<(byte[] Image, TaskCompletionSource<Prediction> Done)>(MaxBatch);
        while (await reader.WaitToReadAsync())
        {
            batch.Clear();
            while (batch.Count < MaxBatch && reader.TryRead(out var item)) batch.Add(item);
            try
            {
                var scores = ScoreAll(batch.Select(b => b.Image).ToList());
                for (int i = 0; i < batch.Count; i++) batch[i].Done.SetResult(ToPrediction(scores[i]));
            }
            catch (BadImageException) when (batch.Count > 1)
            {
                // One bad image fails the whole Transform: score each alone, so only its own request gets the error.
                foreach (var (image, done) in batch)
                {
                    try { done.SetResult(ToPrediction(ScoreAll(new List<byte[]> { image })[0])); }
                    catch (Exception e) { done.SetException(e); }
                }
            }
            catch (Exception e)
            {
                foreach (var (_, done) in batch) done.TrySetException(e);
            }
        }
    }

    private float[][] ScoreAll(List<byte[]> images) => Bad(() =>
    {
        var data = mlContext.Data.LoadFromEnumerable(images.Select(i => new Input { Image = i }), inputSchema);
        return model.Transform(data).GetColumn<VBuffer<float>>(ManImageClassificationTransformer.ScoreColumnName)
            .Select(v => v.DenseValues().ToArray()).ToArray();
    });

    // The transformer reports an unreadable image as InvalidDataException (or ArgumentException) naming the column and row.
    private static T Bad<T>(Func<T> score)
    {
        try { return score(); }
        catch (Exception e) when (e is InvalidDataException or ArgumentException or InvalidOperationException)
        {
            // The row number is the scorer's, not the client's: drop it.
            throw new BadImageException(System.Text.RegularExpressions.Regex.Replace(e.Message, @"^Image column '[^']*', row \d+: ", ""), e);
        }
    }

    private Prediction ToPrediction(float[] scores) => Prediction.From(scores, classes);

    /// <summary>Stops the scoring loop once the queued requests are scored.</summary>
    public async ValueTask DisposeAsync()
    {
        queue?.Writer.TryComplete();
        if (loop is not null) await loop;
    }
}
