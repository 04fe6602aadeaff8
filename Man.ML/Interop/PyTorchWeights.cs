// A network's weights and batch-norm statistics as a PyTorch state dict, in and out: torch.save's zip format (what
// torch.save(model.state_dict(), f) writes since PyTorch 1.6) and safetensors, with PyTorch's names (PyTorchNames).
// TorchSharp.PyBridge reads and writes both containers: it unpickles only the tensor records of a state dict, and it
// is kept by a TorchSharp maintainer; the naming and every check are Man.ML's.
using System.Collections;
using Man.ML.Models;
using TorchSharp.PyBridge;

namespace Man.ML.Interop;

/// <summary>The file format of a state dict.</summary>
public enum WeightsFormat
{
    /// <summary>By the file's extension on writing (.safetensors, else PyTorch's), by its first bytes on reading.</summary>
    [ChoiceName("auto")]
    Automatic,

    /// <summary><c>torch.save(state_dict)</c>'s zip format (.pt, .pth, .bin).</summary>
    [ChoiceName("pytorch")]
    PyTorch,

    /// <summary>safetensors.</summary>
    [ChoiceName("safetensors")]
    Safetensors,
}

/// <summary>A weights file does not fit the network: a key is missing, unexpected or of another shape, or the file is
/// not a state dict. The message names the file and the first such key.</summary>
public sealed class IncompatibleWeightsException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>What <see cref="PyTorchWeights.Load"/> did.</summary>
/// <param name="Path">The file read.</param>
/// <param name="Format">Its format.</param>
/// <param name="TensorsLoaded">Tensors copied into the network.</param>
/// <param name="HeadReplaced">
/// True when the file's classifier had another class count and the network's own freshly initialised classifier was
/// kept in its place (the final linear layer only: for VGG its two hidden layers are loaded).
/// </param>
public sealed record WeightsLoadReport(string Path, WeightsFormat Format, int TensorsLoaded, bool HeadReplaced);

/// <summary>Saves and loads a network's state dict in PyTorch's formats with torchvision's names.</summary>
public static class PyTorchWeights
{
    /// <summary>The PyTorch names of <paramref name="network"/>'s tensors, in state-dict order.</summary>
    public static IReadOnlyList<string> KeysOf(UnitChainNetwork network) => PyTorchNames.Of(network).Select(n => n.PyTorchKey).ToArray();

    /// <summary>
    /// Writes <paramref name="network"/>'s parameters and buffers (batch-norm statistics included) to
    /// <paramref name="path"/> atomically, with PyTorch's names, as float32 on the CPU: torchvision's
    /// <c>load_state_dict(torch.load(path), strict=True)</c> accepts it for the ImageNet networks.
    /// </summary>
    public static void Save(UnitChainNetwork network, string path, WeightsFormat format = WeightsFormat.Automatic)
    {
        if (format == WeightsFormat.Automatic)
            format = path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? WeightsFormat.Safetensors : WeightsFormat.PyTorch;
        using var scope = NewDisposeScope();
        var state = network.state_dict();
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (manKey, torchKey) in PyTorchNames.Of(network))
            tensors[torchKey] = state[manKey].detach().cpu().contiguous();
        AtomicFile.Write(path, stream =>
        {
            if (format == WeightsFormat.Safetensors) Safetensors.SaveStateDict(stream, tensors, leaveOpen: true);
            else PyTorchPickler.PickleStateDict(stream, tensors, leaveOpen: true);
        });
    }

    /// <summary>
    /// Reads a state dict from <paramref name="path"/> (torch.save's zip format or safetensors; a checkpoint whose
    /// "state_dict" or "model" entry is one; keys prefixed "module." by DataParallel) and copies it into
    /// <paramref name="network"/>. Every key of the network must be in the file with its shape, and the file must
    /// have no other key, except that with <paramref name="replaceClassifierOnClassMismatch"/> a final classifier of
    /// another class count is left out and the network keeps its own.
    /// </summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="IncompatibleWeightsException">Not a state dict, or a key is missing, unexpected or mis-shaped; the
    /// message names the file and the first such key.</exception>
    public static WeightsLoadReport Load(UnitChainNetwork network, string path, bool replaceClassifierOnClassMismatch = false)
    {
        InputFiles.CheckRegular(path, "Weights file");
        var format = Sniff(path);
        var file = Read(path, format);
        try
        {
            return CopyInto(network, path, format, file, replaceClassifierOnClassMismatch);
        }
        finally
        {
            foreach (var t in file.Values) t.Dispose();
        }
    }

    private static WeightsLoadReport CopyInto(UnitChainNetwork network, string path, WeightsFormat format,
        Dictionary<string, Tensor> file, bool replaceClassifier)
    {
        var names = PyTorchNames.Of(network);
        var state = network.state_dict();
        string name = Path.GetFileName(path), classifier = PyTorchNames.ClassifierPrefix(network);
        bool headReplaced = false;
        if (replaceClassifier && file.TryGetValue(classifier + ".weight", out var fileClassifier)
            && state[names.First(n => n.PyTorchKey == classifier + ".weight").ManKey] is var own
            && fileClassifier.dim() == 2 && own.dim() == 2 && fileClassifier.shape[1] == own.shape[1] && fileClassifier.shape[0] != own.shape[0])
            headReplaced = true;

        var expected = new HashSet<string>(names.Select(n => n.PyTorchKey));
        // The containers keep no order: report the unexpected keys in ordinal order, so the message is the same every time.
        var unexpected = file.Keys.Where(k => !expected.Contains(k)).Order(StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0)
            throw new IncompatibleWeightsException(
                $"Weights file '{name}': key '{unexpected[0]}'{(unexpected.Count > 1 ? $" (and {unexpected.Count - 1} more)" : "")} " +
                $"is not a tensor of {network.Architecture}; is the file for another architecture?");
        int loaded = 0;
        using var noGrad = no_grad();
        foreach (var (manKey, torchKey) in names)
        {
            bool classifierKey = torchKey == classifier + ".weight" || torchKey == classifier + ".bias";
            if (headReplaced && classifierKey) continue;
            var target = state[manKey];
            if (!file.TryGetValue(torchKey, out var source))
            {
                // PyTorch adds a missing num_batches_tracked itself when loading (BatchNorm's version-1 state dicts); so does this.
                if (torchKey.EndsWith(".num_batches_tracked", StringComparison.Ordinal)) continue;
                throw new IncompatibleWeightsException($"Weights file '{name}' has no key '{torchKey}' {Shape(target)}, which {network.Architecture} needs.");
            }
            if (!source.shape.SequenceEqual(target.shape))
            {
                string hint = classifierKey && !replaceClassifier ? " (a classifier for another class count: fine-tuning replaces it)" : "";
                throw new IncompatibleWeightsException(
                    $"Weights file '{name}': key '{torchKey}' has shape {Shape(source)}, {network.Architecture} needs {Shape(target)}{hint}.");
            }
            if (source.is_floating_point() != target.is_floating_point())
                throw new IncompatibleWeightsException(
                    $"Weights file '{name}': key '{torchKey}' is {source.dtype}, {network.Architecture} needs {target.dtype}.");
            if (source.is_floating_point() && !source.isfinite().all().item<bool>())
                throw new IncompatibleWeightsException($"Weights file '{name}': key '{torchKey}' holds NaN or infinite values.");
            target.copy_(source); // converts float16/bfloat16/float64 and moves to the network's device
            loaded++;
        }
        return new WeightsLoadReport(path, format, loaded, headReplaced);
    }

    private static string Shape(Tensor t) => "(" + string.Join(", ", t.shape) + ")";

    /// <summary>The format of the file at <paramref name="path"/> by its first bytes.</summary>
    private static WeightsFormat Sniff(string path)
    {
        Span<byte> head = stackalloc byte[9];
        int read;
        using (var stream = File.OpenRead(path)) read = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (read >= 4 && head[0] == (byte)'P' && head[1] == (byte)'K' && head[2] == 3 && head[3] == 4) return WeightsFormat.PyTorch;
        // safetensors: an 8-byte little-endian header length, then the JSON header.
        if (read == 9 && head[8] == (byte)'{' && BitConverter.ToUInt64(head[..8]) < (ulong)new FileInfo(path).Length) return WeightsFormat.Safetensors;
        if (read >= 2 && head[0] == 0x80)
            throw new IncompatibleWeightsException($"Weights file '{Path.GetFileName(path)}' is in torch.save's legacy (pre-1.6) format; " +
                $"load it in PyTorch and save it again with torch.save(state_dict, f), or as safetensors.");
        throw new IncompatibleWeightsException($"Weights file '{Path.GetFileName(path)}' is neither a torch.save zip file nor safetensors.");
    }

    private static Dictionary<string, Tensor> Read(string path, WeightsFormat format)
    {
        string name = Path.GetFileName(path);
        // PyBridge allocates whatever the file declares: the file is checked against itself first (WeightFiles).
        if (format == WeightsFormat.Safetensors) WeightFiles.CheckSafetensors(path);
        else WeightFiles.CheckTorchZip(path);
        try
        {
            if (format == WeightsFormat.Safetensors) return StripPrefix(Safetensors.LoadStateDict(path));
            var table = PyTorchUnpickler.UnpickleStateDict(path);
            // A training checkpoint holding the state dict under a key, as many PyTorch scripts save one.
            foreach (var entry in new[] { "state_dict", "model", "model_state_dict" })
                if (table[entry] is Hashtable inner) { DisposeTensors(table); table = inner; break; }
            var tensors = new Dictionary<string, Tensor>();
            foreach (DictionaryEntry e in table)
            {
                if (e.Key is string key && e.Value is Tensor t) tensors[key] = t;
                else
                {
                    DisposeTensors(table);
                    throw new IncompatibleWeightsException($"Weights file '{name}' holds '{e.Key}' " +
                        $"({e.Value?.GetType().Name ?? "null"}), which is not a tensor: save the model's state_dict(), not the model or a whole checkpoint.");
                }
            }
            return StripPrefix(tensors);
        }
        catch (IncompatibleWeightsException) { throw; }
        // The pickle library's refusal of a Python object advises its own API: say what the user can do instead.
        catch (Exception e) when (e.GetType().FullName == "Razorvine.Pickle.PickleException")
        {
            throw WeightFiles.NotTensors(name, "something other than a state dict of tensors", e);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new IncompatibleWeightsException($"Weights file '{name}' could not be read as a " +
                $"{(format == WeightsFormat.Safetensors ? "safetensors" : "torch.save")} state dict: {OneLine(e.Message)}", e);
        }
    }

    // A libtorch error carries its C++ backtrace ("Exception raised from ...", "frame #0: ...") after the message.
    internal static string OneLine(string message)
    {
        int backtrace = message.IndexOf("Exception raised from", StringComparison.Ordinal);
        if (backtrace >= 0) message = message[..backtrace];
        var first = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? "";
        return first.Length > 300 ? first[..300] + "…" : first;
    }

    private static void DisposeTensors(Hashtable table)
    {
        foreach (DictionaryEntry e in table)
            if (e.Value is Tensor t) t.Dispose();
    }

    // torch.nn.DataParallel saves every key as module.<key>.
    private static Dictionary<string, Tensor> StripPrefix(Dictionary<string, Tensor> tensors) =>
        tensors.Count > 0 && tensors.Keys.All(k => k.StartsWith("module.", StringComparison.Ordinal))
            ? tensors.ToDictionary(p => p.Key["module.".Length..], p => p.Value)
            : tensors;
}
