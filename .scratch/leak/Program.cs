using Man.ML.Samples.MLNet;
using Man.ML.Diagnostics;
using Man.ML.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;
var listed = ImageFolderSample.ListImages("/work/shared/datasets/cifar10-images/train");
int n = int.Parse(args[0]);
bool given = args[1] == "given";
var rows = Enumerable.Range(0, n).Select(i => listed[i % listed.Count]).ToList();
var ml = new MLContext(0);
var prep = ml.Transforms.Conversion.MapValueToKey("Label").Append(ml.Transforms.LoadImages("Image", "", "ImagePath"));
var data = prep.Fit(ml.Data.LoadFromEnumerable(rows)).Transform(ml.Data.LoadFromEnumerable(rows));
using var cancel = new CancellationTokenSource();
var trainer = ml.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
{
    Architecture = "resnet8", K = 2, ImageSize = 64, Epochs = 1, BatchSize = 64, CheckBackend = false,
    Normalization = given ? Man.ML.Data.Normalization.Cifar : null, CancellationToken = cancel.Token,
    ProgressCallback = p => cancel.Cancel(),
});
GC.Collect();
long before = ProcessMemory.ResidentBytes();
ProcessMemory.ResetPeak();
try { trainer.Fit(data); } catch (OperationCanceledException) { }
Console.WriteLine($"{n} rows normalisation {args[1]}: peak above {(ProcessMemory.PeakResidentBytes() - before) / 1048576.0:0.0} MB, now {(ProcessMemory.ResidentBytes() - before) / 1048576.0:0.0}, managed {GC.GetTotalMemory(false) / 1048576.0:0.0} MB");
