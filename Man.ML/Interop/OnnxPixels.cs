// The exported ONNX graph takes pixels already cut to the model's size (Pixels: N×3×S×S, planar RGB 0..255). How they
// are resized decides whether another program scores as Man.ML does: ML.NET's ResizeImages resamples differently from
// the antialiased bilinear resize Man.ML trains and scores with, and on images of other sizes than the model's it
// changes predictions (docs/INTEROP.md measures it). These methods make the graph's input exactly as Man.ML's
// transformer makes its own (the recipe's scoring crop, then ImagePixels' resize), without libtorch: an application
// scoring the ONNX model with ONNX Runtime or ApplyOnnxModel needs only this assembly's managed code.
using Man.ML.Data;
using Microsoft.ML.Data;

namespace Man.ML.Interop;

/// <summary>The exported ONNX graph's input, made exactly as Man.ML's transformer prepares an image.</summary>
public static class OnnxPixels
{
    /// <summary>
    /// One image's <c>Pixels</c> row: 3·S·S floats, planar RGB in 0..255, cropped by <paramref name="recipe"/>'s scoring
    /// crop and resized to <paramref name="imageSize"/> as Man.ML does (the model's <c>image_size</c> and
    /// <c>image_recipe</c> metadata give both).
    /// </summary>
    public static float[] FromImage(MLImage image, int imageSize, ImageRecipe recipe)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentOutOfRangeException.ThrowIfLessThan(imageSize, 1);
        if (recipe == ImageRecipe.Automatic)
            throw new ArgumentException("Give the model's recipe (Cifar or ImageNet: its image_recipe metadata), not Automatic.", nameof(recipe));
        var bytes = new byte[3 * imageSize * imageSize];
        ImagePixels.ToInput(image, (w, h) => ImageRecipes.ScoringCrop(recipe, imageSize, w, h), imageSize, bytes);
        var pixels = new float[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) pixels[i] = bytes[i];
        return pixels;
    }

    /// <summary>As <see cref="FromImage"/>, from an encoded image (PNG, JPEG, BMP, GIF, WebP), its header checked against
    /// <paramref name="maxPixels"/> and a truncated PNG or JPEG refused before decoding.</summary>
    /// <exception cref="InvalidDataException">Not an image, truncated, or over the pixel limit.</exception>
    public static float[] FromEncoded(byte[] encoded, int imageSize, ImageRecipe recipe, long maxPixels = ImageHeader.DefaultMaxPixels)
    {
        ArgumentNullException.ThrowIfNull(encoded);
        using var image = ImageHeader.Decode(new MemoryStream(encoded, writable: false), maxPixels);
        return FromImage(image, imageSize, recipe);
    }
}
