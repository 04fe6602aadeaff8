// The IDataView that Transform returns: the input's columns plus Score and PredictedLabel. A cursor moves a
// pass-through cursor over the input row by row and, when scores are asked for, a second cursor that reads the image
// column ahead one batch at a time, so the network scores ScoringBatchSize images per call.
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.MLNet;

internal sealed class ScoredDataView : IDataView
{
    private readonly ManImageClassificationTransformer model;
    private readonly IDataView input;

    public ScoredDataView(ManImageClassificationTransformer model, IDataView input, DataViewSchema schema)
    {
        this.model = model;
        this.input = input;
        Schema = schema;
    }

    public DataViewSchema Schema { get; }
    public bool CanShuffle => false;
    public long? GetRowCount() => input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        int inputCount = input.Schema.Count;
        var needed = columnsNeeded.ToList();
        bool scores = needed.Any(c => c.Index >= inputCount);
        var passThrough = input.GetRowCursor(needed.Where(c => c.Index < inputCount).Select(c => input.Schema[c.Index]));
        // The image cursor also reads the text columns that name files, so that an image that fails names its file.
        var (pathColumns, describe) = ImageColumn.PathColumns(input.Schema);
        var images = scores ? input.GetRowCursor(pathColumns.Prepend(input.Schema[model.ImageColumnName]).Distinct()) : null;
        return new Cursor(model, Schema, inputCount, passThrough, images, images is null ? null : describe(images));
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        new[] { GetRowCursor(columnsNeeded, rand) };

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly ManImageClassificationTransformer model;
        private readonly int inputCount;
        private readonly DataViewRowCursor passThrough;
        private readonly DataViewRowCursor? images;
        private readonly Action<long, byte[]>? readImage;
        private readonly byte[] batchPixels;
        private readonly byte[] onePixels;
        private float[] scores = Array.Empty<float>();
        private long batchStart;
        private int batchCount;
        private long position = -1;

        public Cursor(ManImageClassificationTransformer model, DataViewSchema schema, int inputCount,
            DataViewRowCursor passThrough, DataViewRowCursor? images, Func<string>? describeRow)
        {
            this.model = model;
            Schema = schema;
            this.inputCount = inputCount;
            this.passThrough = passThrough;
            this.images = images;
            int size = 3 * model.ImageSize * model.ImageSize;
            onePixels = new byte[size];
            batchPixels = images is null ? Array.Empty<byte>() : new byte[size * model.ScoringBatchSize];
            if (images is not null)
                readImage = ImageColumn.Resolve(images.Schema, model.ImageColumnName, model.ImageSize, model.MaxImagePixels)
                    .CreateReader(images, describeRow, model.ScoringCrop);
        }

        public override DataViewSchema Schema { get; }
        public override long Position => position;
        public override long Batch => 0;
        public override ValueGetter<DataViewRowId> GetIdGetter() => passThrough.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) =>
            column.Index < inputCount ? passThrough.IsColumnActive(passThrough.Schema[column.Index]) : images is not null;

        public override bool MoveNext()
        {
            if (!passThrough.MoveNext()) return false;
            position++;
            if (images is not null && position >= batchStart + batchCount) ScoreNextBatch();
            return true;
        }

        private void ScoreNextBatch()
        {
            batchStart = position;
            batchCount = 0;
            int size = onePixels.Length;
            while (batchCount < model.ScoringBatchSize && images!.MoveNext())
            {
                readImage!(batchStart + batchCount, onePixels);
                Buffer.BlockCopy(onePixels, 0, batchPixels, batchCount * size, size);
                batchCount++;
            }
            if (batchCount == 0) throw new InvalidOperationException("The input yielded fewer images than rows.");
            scores = model.Score(batchPixels, batchCount);
        }

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (column.Index < inputCount) return passThrough.GetGetter<TValue>(passThrough.Schema[column.Index]);
            if (images is null) throw new InvalidOperationException($"Column '{column.Name}' was not requested when the cursor was made.");
            int classes = model.ClassCount;
            if (column.Name == ManImageClassificationTransformer.ScoreColumnName && column.Index == inputCount)
            {
                ValueGetter<VBuffer<float>> score = (ref VBuffer<float> dst) =>
                {
                    var editor = VBufferEditor.Create(ref dst, classes);
                    scores.AsSpan((int)(position - batchStart) * classes, classes).CopyTo(editor.Values);
                    dst = editor.Commit();
                };
                return (ValueGetter<TValue>)(object)score;
            }
            ValueGetter<uint> label = (ref uint dst) => dst = ArgMaxKey(scores.AsSpan((int)(position - batchStart) * classes, classes));
            return (ValueGetter<TValue>)(object)label;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                passThrough.Dispose();
                images?.Dispose();
            }
            base.Dispose(disposing);
        }
    }

    /// <summary>1-based key of the largest score (ties go to the first class, as ML.NET's trainers do).</summary>
    internal static uint ArgMaxKey(ReadOnlySpan<float> scores)
    {
        int best = 0;
        for (int i = 1; i < scores.Length; i++) if (scores[i] > scores[best]) best = i;
        return (uint)best + 1;
    }
}

/// <summary>Row-to-row mapping for PredictionEngine: scores one row at a time.</summary>
internal sealed class ScoringRowMapper : IRowToRowMapper
{
    private readonly ManImageClassificationTransformer model;

    public ScoringRowMapper(ManImageClassificationTransformer model, DataViewSchema inputSchema, DataViewSchema outputSchema)
    {
        this.model = model;
        InputSchema = inputSchema;
        OutputSchema = outputSchema;
    }

    public DataViewSchema InputSchema { get; }
    public DataViewSchema OutputSchema { get; }

    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns)
    {
        var columns = dependingColumns.ToList();
        var inputs = columns.Where(c => c.Index < InputSchema.Count).Select(c => InputSchema[c.Index]).ToList();
        if (columns.Any(c => c.Index >= InputSchema.Count))
        {
            inputs.Add(InputSchema[model.ImageColumnName]);
            inputs.AddRange(ImageColumn.PathColumns(InputSchema).Columns); // an image that fails names its file
        }
        return inputs.Distinct();
    }

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns) =>
        new MappedRow(model, input, OutputSchema, activeColumns.Any(c => c.Index >= InputSchema.Count));

    private sealed class MappedRow : DataViewRow
    {
        private readonly ManImageClassificationTransformer model;
        private readonly DataViewRow input;
        private readonly bool scores;
        private readonly Action<long, byte[]>? readImage;
        private readonly byte[] pixels;
        private readonly byte[] scoredPixels;
        private float[] probabilities = Array.Empty<float>();

        public MappedRow(ManImageClassificationTransformer model, DataViewRow input, DataViewSchema schema, bool scores)
        {
            this.model = model;
            this.input = input;
            this.scores = scores;
            Schema = schema;
            pixels = new byte[3 * model.ImageSize * model.ImageSize];
            scoredPixels = new byte[pixels.Length];
            if (scores)
                readImage = ImageColumn.Resolve(input.Schema, model.ImageColumnName, model.ImageSize, model.MaxImagePixels)
                    .CreateReader(input, ImageColumn.PathColumns(input.Schema).Describe(input), model.ScoringCrop);
        }

        public override DataViewSchema Schema { get; }
        public override long Position => input.Position;
        public override long Batch => input.Batch;
        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) =>
            column.Index < input.Schema.Count ? input.IsColumnActive(input.Schema[column.Index]) : scores;

        private float[] Current()
        {
            // PredictionEngine reuses one row for every example and asks for Score and PredictedLabel separately:
            // score once per distinct image.
            readImage!(input.Position, pixels);
            if (probabilities.Length == 0 || !pixels.AsSpan().SequenceEqual(scoredPixels))
            {
                probabilities = model.Score(pixels, 1);
                pixels.CopyTo(scoredPixels, 0);
            }
            return probabilities;
        }

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (column.Index < input.Schema.Count) return input.GetGetter<TValue>(input.Schema[column.Index]);
            if (column.Name == ManImageClassificationTransformer.ScoreColumnName && column.Index == input.Schema.Count)
            {
                ValueGetter<VBuffer<float>> score = (ref VBuffer<float> dst) =>
                {
                    var p = Current();
                    var editor = VBufferEditor.Create(ref dst, p.Length);
                    p.AsSpan().CopyTo(editor.Values);
                    dst = editor.Commit();
                };
                return (ValueGetter<TValue>)(object)score;
            }
            ValueGetter<uint> label = (ref uint dst) => dst = ScoredDataView.ArgMaxKey(Current());
            return (ValueGetter<TValue>)(object)label;
        }
    }
}
