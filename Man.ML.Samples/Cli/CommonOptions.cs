// The options several commands share, declared once: the same name, description and default wherever they appear (manml
// and manml-lab alike). The defaults are the library's (TrainingOptions, ManImageClassificationTrainer.Options), so a
// command line without them trains what the API trains. Each call makes a new option: a command owns its options.
using System.CommandLine;
using Man.ML.Local;

namespace Man.ML.Samples.Cli;

internal static class CommonOptions
{
    // Read from the library's options, not written again here.
    private static readonly Training.TrainingOptions Defaults = new();
    public static string DefaultArch => Defaults.Architecture;
    public static int DefaultK => Defaults.K;
    public static string DefaultRule => Choices.Name(Defaults.Rule);
    public static int DefaultBatchSize => Defaults.BatchSize;
    public static int DefaultSeed => Defaults.Seed;
    public static string DefaultDevice => Defaults.Device;

    public static Option<string> Arch() => new("--arch")
    {
        Description = "Architecture: resnet32, resnet110, resnet<6n+2> (CIFAR); resnet18/34/50/101/152, resnext50_32x4d, " +
                      "resnext101_32x8d, vgg11/13/16/19_bn (ImageNet).",
        DefaultValueFactory = _ => DefaultArch,
    };

    public static Option<int> K() => new("--k")
    {
        Description = "Number of gradient-isolated segments (1 = end-to-end).", DefaultValueFactory = _ => DefaultK,
    };

    public static Option<string> Rule() => new("--rule")
    {
        Description = $"Learning rule: {string.Join(", ", Choices.Names<LearningRule>())}.", DefaultValueFactory = _ => DefaultRule,
    };

    /// <summary>--batch-size; <paramref name="description"/> says what is batched where it is not training's mini-batch.</summary>
    public static Option<int> BatchSize(string description = "Mini-batch size.") => new("--batch-size")
    {
        Description = description, DefaultValueFactory = _ => DefaultBatchSize,
    };

    public static Option<int> Seed() => new("--seed")
    {
        Description = "Random seed (initialisation, data order, augmentation).", DefaultValueFactory = _ => DefaultSeed,
    };

    public static Option<string> Precision() => new("--precision")
    {
        Description = "Training precision: fp32 (default), bf16 (mixed precision; needs a GPU or a CPU with avx512_bf16/amx_bf16), " +
                      "auto (bf16 where the device computes it natively, else fp32) or bf16-emulated (bf16's numerics at fp32's speed).",
        DefaultValueFactory = _ => Choices.Name(new Man.ML.Training.TrainingOptions().Precision),
    };

    public static Option<string> Device() => new("--device")
    {
        Description = "Device: cpu or cuda.", DefaultValueFactory = _ => DefaultDevice,
    };

    /// <summary>--max-image-pixels, for the commands that decode image files: read from each header before decoding.</summary>
    public static Option<long> MaxImagePixels() => new("--max-image-pixels")
    {
        Description = "Refuse an image file of more pixels (width x height), read from its header before decoding (default 8192x8192).",
        DefaultValueFactory = _ => Defaults.MaxImagePixels,
    };

    /// <summary>The value of <see cref="MaxImagePixels"/>, checked.</summary>
    public static long GetMaxImagePixels(System.CommandLine.ParseResult parse, Option<long> option)
    {
        long value = parse.GetValue(option);
        if (value < 1) throw new CliException($"{option.Name} must be at least 1 (got {value}).");
        return value;
    }

    /// <summary>
    /// Reads the header of every image file before a pipeline's LoadImages decodes them with ML.NET's own decoder, which
    /// Man.ML cannot bound: an image over the limit, or with no image header, is an error naming the file.
    /// </summary>
    public static void CheckImageFiles(IEnumerable<string> paths, long maxPixels)
    {
        foreach (var path in paths) Data.ImageHeader.CheckFile(path, maxPixels);
    }

    public static Option<string?> InitFrom() => new("--init-from")
    {
        Description = "Start the backbone from a PyTorch state dict (torch.save or safetensors, torchvision's names): fine-tuning; " +
                      "a classifier for another class count is replaced.",
    };

    public static Option<string?> Pretrained() => new("--pretrained")
    {
        Description = "Start the backbone from published pretrained weights: imagenet (torchvision's IMAGENET1K_V1 of --arch) or a torchvision " +
                      "weights name such as IMAGENET1K_V2; downloaded once, verified by SHA-256, cached; their normalisation (ImageNet's) is used.",
    };

    public static Option<string?> PretrainedCache() => new("--pretrained-cache")
    {
        Description = "Folder of the pretrained-weights cache (default $MANML_PRETRAINED_CACHE, else ~/.cache/manml/pretrained).",
    };

    public static Option<string?> TensorBoard() => new("--tensorboard")
    {
        Description = "Write each epoch's figures (losses, accuracies, learning rate, every segment's local loss) as TensorBoard event files into DIR.",
    };

    public static Option<int?> Threads() => new("--threads")
    {
        Description = $"CPU threads for libtorch, 1 to {Training.TrainingOptions.MaxThreads} (4 per core, at least 64; default: all cores).",
    };
}
