// manml-serve: a trained Man.ML model behind HTTP.
//   POST /predict   body: the image's bytes (PNG, JPEG, BMP, …) → 200 {"label", "probability", "scores"}; 400 for a body that
//                   is empty, too large or not an image, with one line saying which, and the service keeps answering
//   GET  /healthz   200 while the process runs
//   GET  /ready     200 with what is served (the model is loaded before the server listens)
// Settings (appsettings.json, environment MANML_..., or --Key value): Model (a SaveManModel zip or an exported .onnx, required), Scoring
// (EnginePool or Batching), MaxBatch, MaxRequestBytes.
using Man.ML.MLNet;
using Man.ML.Serving;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.ML;

var builder = WebApplication.CreateBuilder(args);
builder.Configuration.AddEnvironmentVariables("MANML_");
var settings = builder.Configuration.Get<ServingSettings>() ?? new ServingSettings();
builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = settings.MaxRequestBytes + 1);
builder.Services.AddSingleton(settings);
// The model is loaded before the server listens: a missing or damaged file is one line and exit code 2.
ModelHost modelHost;
try { modelHost = ModelHost.Load(settings); }
catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or IOException
                              or UnauthorizedAccessException or InvalidOperationException or NotSupportedException or ArgumentException)
{
    Console.Error.WriteLine($"manml-serve: error: {e.Message.ReplaceLineEndings(" ")}");
    return 2;
}
builder.Services.AddSingleton(modelHost);
var app = builder.Build();
app.Logger.LogInformation("Serving {Model}: {Description}", settings.Model, modelHost.Description);

app.MapGet("/healthz", () => Results.Ok("ok"));
app.MapGet("/ready", (ModelHost host) => host.Scorer is null ? Results.StatusCode(503) : Results.Ok(host.Description));
app.MapPost("/predict", async (HttpRequest request, ModelHost host, CancellationToken cancellation) =>
{
    if (host.Scorer is not { } scorer) return Results.StatusCode(503);
    if (request.ContentLength > settings.MaxRequestBytes)
        return Results.BadRequest(new { error = $"The image is larger than {settings.MaxRequestBytes} bytes." });
    var body = new MemoryStream();
    try
    {
        var buffer = new byte[81920];
        int n;
        while ((n = await request.Body.ReadAsync(buffer, cancellation)) > 0)
        {
            if (body.Length + n > settings.MaxRequestBytes)
                return Results.BadRequest(new { error = $"The image is larger than {settings.MaxRequestBytes} bytes." });
            body.Write(buffer, 0, n);
        }
    }
    catch (BadHttpRequestException e) // Kestrel's own body limit
    {
        return Results.BadRequest(new { error = $"The image is larger than {settings.MaxRequestBytes} bytes: {e.Message}" });
    }
    if (body.Length == 0) return Results.BadRequest(new { error = "The request body is empty: send the image's bytes." });
    try { return Results.Ok(await scorer.ScoreAsync(body.ToArray())); }
    catch (BadImageException e) { return Results.BadRequest(new { error = $"The body is not an image Man.ML can read: {e.Message.ReplaceLineEndings(" ")}" }); }
});

app.Run();
return 0;

/// <summary>The service's settings.</summary>
public sealed class ServingSettings
{
    /// <summary>The model: a zip written by <c>mlContext.Model.SaveManModel</c>.</summary>
    public string Model { get; set; } = "";

    /// <summary>How concurrent requests are scored.</summary>
    public ScoringMode Scoring { get; set; } = ScoringMode.Batching;

    /// <summary>Most images one batched Transform takes.</summary>
    public int MaxBatch { get; set; } = 32;

    /// <summary>The largest request body accepted (bytes).</summary>
    public long MaxRequestBytes { get; set; } = 8 << 20;
}

/// <summary>The loaded model and its scorer.</summary>
public sealed class ModelHost : IAsyncDisposable
{
    private readonly IDisposable? model;

    private ModelHost(IDisposable? model, IImageScorer scorer, string description)
    {
        this.model = model;
        Scorer = scorer;
        Description = description;
    }

    /// <summary>The scorer.</summary>
    public IImageScorer? Scorer { get; }

    /// <summary>What is served.</summary>
    public string Description { get; }

    /// <summary>Loads <see cref="ServingSettings.Model"/>: a SaveManModel zip, or an exported ONNX model (.onnx).</summary>
    /// <exception cref="InvalidOperationException">No model given, or the file holds no Man.ML transformer.</exception>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">Not a SaveManModel zip or a Man.ML ONNX model, or a damaged one.</exception>
    public static ModelHost Load(ServingSettings settings)
    {
        if (string.IsNullOrWhiteSpace(settings.Model))
            throw new InvalidOperationException("No model: give --Model PATH (a zip written by mlContext.Model.SaveManModel, or model.onnx) or MANML_MODEL.");
        if (settings.Model.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase))
        {
            if (!File.Exists(settings.Model)) throw new FileNotFoundException($"Model file '{settings.Model}' does not exist.", settings.Model);
            var onnx = new OnnxImageScorer(settings.Model);
            return new ModelHost(null, onnx, onnx.Description);
        }
        var loaded = new MLContext().Model.LoadManModel(settings.Model, out _);
        var model = Find(loaded) ?? throw new InvalidOperationException($"'{settings.Model}' holds no Man.ML transformer.");
        var scorer = new ImageScorer(model, settings.Scoring, settings.MaxBatch);
        return new ModelHost(model, scorer,
            $"{model.TrainedWith}; {model.ClassCount} classes at {model.ImageSize}x{model.ImageSize}; scoring {settings.Scoring}");
    }

    private static ManImageClassificationTransformer? Find(ITransformer transformer) => transformer switch
    {
        ManImageClassificationTransformer man => man,
        IEnumerable<ITransformer> chain => chain.Select(Find).FirstOrDefault(m => m is not null),
        _ => null,
    };

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Scorer is not null) await Scorer.DisposeAsync();
        model?.Dispose();
    }
}
