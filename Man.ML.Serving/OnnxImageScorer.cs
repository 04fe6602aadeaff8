// Scoring an exported ONNX model (SaveAsOnnx, manml export onnx) with ONNX Runtime: each request's image is cut to the
// model's size by OnnxPixels (exactly as Man.ML's transformer does) and run alone; an InferenceSession may be run from
// several threads at once, so no pool or batching is needed for correctness.
using System.Text.Json;
using Man.ML.Data;
using Man.ML.Interop;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Man.ML.Serving;

/// <summary>Scores encoded images with an exported Man.ML ONNX model from any number of threads.</summary>
public sealed class OnnxImageScorer : IImageScorer
{
    private readonly InferenceSession session;
    private readonly string[] classes;
    private readonly int size;
    private readonly ImageRecipe recipe;

    /// <summary>What is served.</summary>
    public string Description { get; }

    /// <summary>Opens <paramref name="path"/>; its metadata gives the classes, the image size and the recipe.</summary>
    /// <exception cref="InvalidDataException">Not an ONNX model Man.ML exported.</exception>
    public OnnxImageScorer(string path)
    {
        try { session = new InferenceSession(path); }
        catch (OnnxRuntimeException e) { throw new InvalidDataException($"'{path}' is not an ONNX model ONNX Runtime can load: {e.Message}", e); }
        var meta = session.ModelMetadata.CustomMetadataMap;
        if (!meta.TryGetValue(OnnxExport.ClassesKey, out var names) || !meta.TryGetValue(OnnxExport.ImageSizeKey, out var side)
            || !meta.TryGetValue(OnnxExport.RecipeKey, out var recipeName))
        {
            session.Dispose();
            throw new InvalidDataException($"'{path}' was not exported by Man.ML: its metadata lacks {OnnxExport.ClassesKey}, " +
                                           $"{OnnxExport.ImageSizeKey} or {OnnxExport.RecipeKey}.");
        }
        classes = JsonSerializer.Deserialize<string[]>(names) ?? Array.Empty<string>();
        size = int.Parse(side, System.Globalization.CultureInfo.InvariantCulture);
        if (!Enum.TryParse(recipeName, ignoreCase: true, out recipe) || recipe == ImageRecipe.Automatic)
        {
            session.Dispose();
            throw new InvalidDataException($"'{path}' names an unknown recipe '{recipeName}' in {OnnxExport.RecipeKey}.");
        }
        Description = $"ONNX {(meta.TryGetValue(OnnxExport.ArchitectureKey, out var arch) ? arch : "model")}; {classes.Length} classes at " +
                      $"{size}x{size}; ONNX Runtime, one run per request";
    }

    /// <inheritdoc />
    public Task<Prediction> ScoreAsync(byte[] image)
    {
        float[] pixels;
        try { pixels = OnnxPixels.FromEncoded(image, size, recipe); }
        catch (InvalidDataException e) { throw new BadImageException(e.Message, e); }
        using var results = session.Run(new[]
        {
            NamedOnnxValue.CreateFromTensor(OnnxExport.InputName, new DenseTensor<float>(pixels, new[] { 1, 3, size, size })),
        });
        return Task.FromResult(Prediction.From(results.Single().AsEnumerable<float>().ToArray(), classes));
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        session.Dispose();
        return ValueTask.CompletedTask;
    }
}
