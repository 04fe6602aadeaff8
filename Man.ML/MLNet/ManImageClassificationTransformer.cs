// The fitted model as an ML.NET transformer: appends Score (one probability per class, a fixed-size vector) and
// PredictedLabel (a key carrying the label's key values) to its input. Scoring inside Transform runs in batches; a
// PredictionEngine scores one image at a time through the row-to-row mapper. Only the plain backbone is kept: MAN's
// copies and the auxiliary heads exist during training only.
using Man.ML.Data;
using Man.ML.Models;
using Microsoft.ML;
using Microsoft.ML.Data;
using Man.ML.Backend;

namespace Man.ML.MLNet;

/// <summary>A trained MAN-enhanced image classifier, as an ML.NET transformer.</summary>
public sealed class ManImageClassificationTransformer : ITransformer, IDisposable
{
    /// <summary>Name of the score column.</summary>
    public const string ScoreColumnName = "Score";

    /// <summary>Name of the predicted-label column.</summary>
    public const string PredictedLabelColumnName = "PredictedLabel";

    private readonly object scoringLock = new();
    private readonly Device device;

    /// <summary>The trained backbone (in evaluation mode; owned by the transformer, released by <see cref="Dispose"/>).</summary>
    public UnitChainNetwork Network { get; }

    internal LabelKeyValues? KeyValues { get; }

    /// <summary>How input images are normalised before the network (the training data's normalisation).</summary>
    public Normalization Normalization { get; }

    /// <summary>The column the images are read from.</summary>
    public string ImageColumnName { get; }

    /// <summary>Side of the square network input; images of another size are resized to it.</summary>
    public int ImageSize { get; }

    /// <summary>Number of classes (the length of Score).</summary>
    public int ClassCount => Network.ClassCount;

    /// <summary>Images scored together inside <see cref="Transform"/>.</summary>
    public int ScoringBatchSize { get; }

    /// <summary>
    /// Most pixels (width·height) an image may have; a larger one is an error naming the row (and the file, where a text
    /// column holds its path), its size and the limit, raised before decoding for encoded bytes (LoadRawImageBytes) and
    /// before conversion for an MLImage (LoadImages decodes with ML.NET's own decoder first). Fit sets the trainer's
    /// <see cref="ManImageClassificationTrainer.Options.MaxImagePixels"/>; a loaded model starts at
    /// <see cref="Training.TrainingOptions.DefaultMaxImagePixels"/> (8192×8192). Not saved with the model.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Set below 1.</exception>
    public long MaxImagePixels
    {
        get => maxImagePixels;
        set => maxImagePixels = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "MaxImagePixels must be at least 1.");
    }

    private long maxImagePixels = ImageHeader.DefaultMaxPixels;

    /// <summary>How images are cropped and resized for scoring: the recipe the model was trained with (never automatic).</summary>
    public ImageRecipe ImageRecipe { get; }

    /// <summary>How the model was trained (architecture, rule, K, MAN, epochs, seed).</summary>
    public string TrainedWith { get; }

    /// <inheritdoc />
    public bool IsRowToRowMapper => true;

    // False when the file it was loaded from predates Man.ML's checksums and could not be verified (the CLI says so).
    internal bool Verified { get; init; } = true;

    internal ManImageClassificationTransformer(UnitChainNetwork network, LabelKeyValues? keyValues, Normalization normalization,
        string imageColumnName, int imageSize, int scoringBatchSize, string device, string trainedWith, ImageRecipe recipe)
    {
        ImageRecipe = recipe;
        Network = network;
        KeyValues = keyValues;
        Normalization = normalization;
        ImageColumnName = imageColumnName;
        ImageSize = imageSize;
        // A batch of 0 would score nothing at all: refused rather than quietly made 1.
        ArgumentOutOfRangeException.ThrowIfLessThan(scoringBatchSize, 1);
        ScoringBatchSize = scoringBatchSize;
        TrainedWith = trainedWith;
        this.device = Training.Devices.Resolve(device);
        Network.to(this.device);
        Network.eval();
    }

    /// <inheritdoc />
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ImageColumn.Resolve(inputSchema, ImageColumnName, ImageSize);
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(inputSchema);
        builder.AddColumn(ScoreColumnName, new VectorDataViewType(NumberDataViewType.Single, ClassCount), ScoreAnnotations());
        var keyAnnotations = new DataViewSchema.Annotations.Builder();
        KeyValues?.AddKeyValues(keyAnnotations);
        builder.AddColumn(PredictedLabelColumnName, new KeyDataViewType(typeof(uint), ClassCount), keyAnnotations.ToAnnotations());
        return builder.ToSchema();
    }

    private DataViewSchema.Annotations ScoreAnnotations()
    {
        var builder = new DataViewSchema.Annotations.Builder();
        var names = KeyValues?.Names() ?? Enumerable.Range(0, ClassCount).Select(i => i.ToString()).ToArray();
        ValueGetter<VBuffer<ReadOnlyMemory<char>>> slotNames = (ref VBuffer<ReadOnlyMemory<char>> dst) =>
            new VBuffer<ReadOnlyMemory<char>>(names.Length, names.Select(n => n.AsMemory()).ToArray()).CopyTo(ref dst);
        builder.Add("SlotNames", new VectorDataViewType(TextDataViewType.Instance, names.Length), slotNames);
        // What ML.NET's own multiclass trainers attach, so that tools which look for a score column find this one.
        builder.AddPrimitiveValue("ScoreColumnKind", TextDataViewType.Instance, "MulticlassClassification".AsMemory());
        builder.AddPrimitiveValue("ScoreValueKind", TextDataViewType.Instance, "Score".AsMemory());
        return builder.ToAnnotations();
    }

    /// <inheritdoc />
    public IDataView Transform(IDataView input) => new ScoredDataView(this, input, GetOutputSchema(input.Schema));

    /// <inheritdoc />
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema) => new ScoringRowMapper(this, inputSchema, GetOutputSchema(inputSchema));

    /// <summary>
    /// ML.NET (6.0.0) does not let a third-party transformer write itself through <c>mlContext.Model.Save</c> (its save
    /// context is internal); save with <c>mlContext.Model.SaveManModel</c> instead.
    /// </summary>
    void ICanSaveModel.Save(ModelSaveContext ctx) =>
        throw new NotSupportedException(
            "A model containing a Man.ML transformer is saved with mlContext.Model.SaveManModel(model, inputSchema, path) and " +
            "loaded with mlContext.Model.LoadManModel(path, out schema): ML.NET keeps its save context internal.");

    /// <summary>Scores <paramref name="count"/> images held as uint8 planar RGB (count·3·S·S bytes); returns count·classes probabilities.</summary>
    internal float[] Score(byte[] pixels, int count)
    {
        lock (scoringLock)
        {
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            var x = tensor(pixels.AsSpan(0, count * 3 * ImageSize * ImageSize).ToArray(), new long[] { count, 3, ImageSize, ImageSize }, dtype: ScalarType.Byte)
                .to(device).to_type(ScalarType.Float32).DividedByInPlace(255);               // (B, 3, S, S) in [0, 1]
            var probabilities = nn.functional.softmax(Network.call(Normalization.Apply(x)), 1).cpu(); // (B, classes)
            return probabilities.data<float>().ToArray();
        }
    }

    /// <summary>
    /// Writes the model as an ONNX inference graph that ML.NET's <c>ApplyOnnxModel</c> (or ONNX Runtime) scores without
    /// TorchSharp or libtorch. Input <see cref="Interop.OnnxExport.InputName"/> ("Pixels"): planar RGB in 0..255 of the
    /// image cropped and resized as this transformer does (<see cref="ImageRecipe"/>; for an image already S×S under the
    /// CIFAR recipe, exactly what <c>ExtractPixels</c> gives with its defaults); the normalisation is inside the graph.
    /// Output <see cref="ScoreColumnName"/> ("Score"): the class probabilities. The class names, the image size and the
    /// recipe are stored as metadata (<see cref="Interop.OnnxExport.ClassesKey"/>, <see cref="Interop.OnnxExport.ImageSizeKey"/>,
    /// <see cref="Interop.OnnxExport.RecipeKey"/>).
    /// </summary>
    public void SaveAsOnnx(string path)
    {
        var names = KeyValues?.Names() ?? Enumerable.Range(0, ClassCount).Select(i => i.ToString()).ToArray();
        lock (scoringLock) Interop.OnnxExport.Save(Network, path, Normalization, names, ImageSize, ImageRecipe, TrainedWith);
    }

    /// <summary>
    /// The transformer a model checkpoint (manml train's model.ckpt, <see cref="Training.ModelCheckpoint"/>) scores with:
    /// its network, class names, normalisation and recipe, all read from the file (a checkpoint written before the recipe
    /// was recorded scores with the recipe its architecture implies, <see cref="Training.CheckpointInfo.Recipe"/>).
    /// PredictedLabel's key values are the class names.
    /// </summary>
    /// <param name="path">The checkpoint.</param>
    /// <param name="imageColumnName">The column the images are read from (an MLImage from LoadImages, encoded bytes, or pixels).</param>
    /// <param name="device">Device to score on. Default "cpu".</param>
    /// <param name="scoringBatchSize">Images scored together inside <see cref="Transform"/>.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">Not a Man.ML checkpoint, damaged, or without a normalisation.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="scoringBatchSize"/> is less than 1.</exception>
    public static ManImageClassificationTransformer FromCheckpoint(string path, string imageColumnName = "Image", string device = "cpu",
        int scoringBatchSize = 256)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(scoringBatchSize, 1); // before the file is read
        var (network, info) = Training.ModelCheckpoint.Load(path);
        try
        {
            var names = info.ClassNames.Length == info.Classes ? info.ClassNames : Enumerable.Range(0, info.Classes).Select(i => i.ToString()).ToArray();
            Normalization normalization;
            try { normalization = info.Normalization; }
            catch (InvalidDataException e) { throw new InvalidDataException($"Checkpoint '{path}': {e.Message}", e); }
            return new ManImageClassificationTransformer(network, LabelKeyValues.FromNames(names), normalization, imageColumnName, info.ImageSize,
                scoringBatchSize, device, info.TrainedWith, info.Recipe) { Verified = info.Verified };
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>The scoring crop of an image of width×height: the recipe's.</summary>
    internal (int X, int Y, int W, int H) ScoringCrop(int width, int height) => ImageRecipes.ScoringCrop(ImageRecipe, ImageSize, width, height);

    /// <inheritdoc />
    public void Dispose() => Network.Dispose();
}
