// How an image of any size and shape becomes the network's S×S input, for training and for scoring. Two recipes, the
// two the method trains with (docs/METHOD.md §4): CIFAR's (the whole image resized to S; training adds reflect-pad 4,
// random crop and flip) and ImageNet's (training: random-resized crop of 8–100 % of the area, ratio 3/4–4/3, and flip;
// scoring: the shorter side resized to S·256/224 and the centre S×S cropped). Automatic picks by the architecture.
using Man.ML.Models;

namespace Man.ML.Data;

/// <summary>The data recipe: how images are cropped, resized and augmented on the way into the network.</summary>
public enum ImageRecipe
{
    /// <summary>CIFAR's for the CIFAR ResNets (resnet&lt;6n+2&gt;), ImageNet's for the ImageNet architectures.</summary>
    [ChoiceName("auto")]
    Automatic,

    /// <summary>The whole image resized (stretched) to S×S; training adds reflect-pad 4, random crop and horizontal flip.</summary>
    [ChoiceName("cifar")]
    Cifar,

    /// <summary>Training: random-resized crop (area 8–100 %, ratio 3/4–4/3) and flip; scoring: resize the shorter side to
    /// S·256/224, centre crop S×S.</summary>
    [ChoiceName("imagenet")]
    ImageNet,
}

/// <summary>The crops and augmentation of a resolved <see cref="ImageRecipe"/>.</summary>
internal static class ImageRecipes
{
    /// <summary>The recipe <paramref name="recipe"/> means for <paramref name="architecture"/> (never Automatic).</summary>
    public static ImageRecipe Resolve(ImageRecipe recipe, string architecture) => recipe != ImageRecipe.Automatic ? recipe
        : Architectures.FamilyOf(architecture) == NetworkFamily.ImageNet ? ImageRecipe.ImageNet : ImageRecipe.Cifar;

    /// <summary>The source rectangle (x, y, w, h) a training image of <paramref name="width"/>×<paramref name="height"/> is
    /// resized from: the whole image (CIFAR; the crop comes after) or a random-resized crop (ImageNet).</summary>
    public static (int X, int Y, int W, int H) TrainingCrop(ImageRecipe recipe, int width, int height, Random random) =>
        recipe == ImageRecipe.ImageNet ? ImageNetTransform.RandomResizedCrop(width, height, random) : (0, 0, width, height);

    /// <summary>The source rectangle a scored (or validation) image is resized from.</summary>
    public static (int X, int Y, int W, int H) ScoringCrop(ImageRecipe recipe, int imageSize, int width, int height) =>
        recipe == ImageRecipe.ImageNet ? ImageNetTransform.ForCrop(imageSize).CentreCrop(width, height) : (0, 0, width, height);

    /// <summary>What follows the training crop on the S×S batch: CIFAR's pad-crop-flip, ImageNet's flip, or nothing
    /// (<paramref name="augment"/> off).</summary>
    public static ImageAugmentation BatchAugmentation(ImageRecipe recipe, bool augment) =>
        !augment ? ImageAugmentation.None
        : recipe == ImageRecipe.ImageNet ? new ImageAugmentation(0, false, true)
        : ImageAugmentation.Cifar;
}
