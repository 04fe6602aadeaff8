// The two kinds of trained model the command line reads: manml train's model.ckpt and an ML.NET model saved with
// SaveManModel (a zip holding the Man.ML transformer).
using Man.ML.MLNet;
using Microsoft.ML;

namespace Man.ML.Samples.Cli;

internal static class ModelFiles
{
    /// <summary>Whether the file is a zip (an ML.NET model) rather than a Man.ML checkpoint.</summary>
    public static bool IsZip(string path)
    {
        Span<byte> head = stackalloc byte[4];
        using var stream = InputFiles.OpenRead(path, "Model file");
        return stream.ReadAtLeast(head, 4, throwOnEndOfStream: false) == 4 && head[0] == (byte)'P' && head[1] == (byte)'K';
    }

    /// <summary>Says on stderr, once per file, that <paramref name="path"/> predates Man.ML's checksums and was read unverified.</summary>
    public static void NoteUnverified(string path, bool verified)
    {
        if (!verified) Console.Error.WriteLine($"{CliErrors.Program}: note: '{path}' was written before Man.ML recorded checksums; it is not verified.");
    }

    /// <summary>The Man.ML transformer inside a model (a chain of transformers, nested or not).</summary>
    public static ManImageClassificationTransformer? Find(ITransformer model) => model switch
    {
        ManImageClassificationTransformer man => man,
        IEnumerable<ITransformer> chain => chain.Select(Find).FirstOrDefault(m => m is not null),
        _ => null,
    };
}
