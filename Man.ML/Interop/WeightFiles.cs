// A weights file is checked here before TorchSharp.PyBridge reads it, because PyBridge trusts what the file declares:
// it allocates a tensor of whatever shape a safetensors header or a pickle names (libtorch then fails with a C++
// backtrace for [2^31, 2^31, 2^31], or takes the memory for a plausible-looking huge shape) and reads whatever byte
// range the header gives. So the safetensors header is parsed here (length, dtypes, shapes and data offsets against the
// file), and a torch.save zip has its entries bounded and its pickle walked without running it: only the globals a state
// dict needs are allowed (anything else is a Python object Man.ML refuses), and every tensor's storage must be a data
// entry of exactly its declared size that the shape, stride and offset stay inside. Every failure is one line naming
// the file and, where there is one, the key.
using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.Json;

namespace Man.ML.Interop;

internal static class WeightFiles
{
    /// <summary>Most bytes of a safetensors JSON header: ResNet-152's is under 100 KB.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>Most bytes of a torch.save pickle (data.pkl), which the walk holds with its stack and memo: ResNet-152's is under 100 KB.</summary>
    public const long MaxPickleBytes = 16_000_000;

    /// <summary>Most bytes of one tensor: what PyBridge reads into one .NET array.</summary>
    public const long MaxTensorBytes = int.MaxValue;

    /// <summary>What the refusal of a pickle that is not a state dict of tensors says to do.</summary>
    public const string SaveAdvice = "save the weights with torch.save(model.state_dict(), f), or as safetensors";

    private static readonly Dictionary<string, int> SafetensorsTypes = new()
    {
        ["F64"] = 8, ["F32"] = 4, ["F16"] = 2, ["BF16"] = 2, ["I64"] = 8, ["I32"] = 4, ["I16"] = 2, ["I8"] = 1, ["U8"] = 1, ["BOOL"] = 1,
    };

    private static readonly Dictionary<string, int> Storages = new()
    {
        ["DoubleStorage"] = 8, ["FloatStorage"] = 4, ["HalfStorage"] = 2, ["BFloat16Storage"] = 2, ["LongStorage"] = 8, ["IntStorage"] = 4,
        ["ShortStorage"] = 2, ["CharStorage"] = 1, ["ByteStorage"] = 1, ["BoolStorage"] = 1, ["ComplexDoubleStorage"] = 16,
        ["ComplexFloatStorage"] = 8,
    };

    private static IncompatibleWeightsException Bad(string name, string message) =>
        new($"Weights file '{name}'{(message.StartsWith(':') ? "" : " ")}{message}");

    private static string Shape(IEnumerable<long> dims) => "(" + string.Join(", ", dims) + ")";

    /// <summary>Checks a safetensors file's header against the file.</summary>
    /// <exception cref="IncompatibleWeightsException">The header is too long, not JSON, or a tensor's dtype, shape or offsets are wrong.</exception>
    public static void CheckSafetensors(string path)
    {
        string name = Path.GetFileName(path);
        using var stream = InputFiles.OpenRead(path, "Weights file");
        long length = stream.Length;
        Span<byte> prefix = stackalloc byte[8];
        if (stream.ReadAtLeast(prefix, 8, throwOnEndOfStream: false) < 8) throw Bad(name, "is too short for a safetensors file.");
        ulong declared = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (declared > (ulong)(length - 8) || declared > MaxHeaderBytes)
            throw Bad(name, Invariant($"declares a safetensors header of {declared:N0} bytes; the file has {length:N0} bytes and Man.ML reads ",
                                      $"headers of at most {MaxHeaderBytes:N0}."));
        var header = new byte[declared];
        stream.ReadExactly(header);
        long dataBytes = length - 8 - (long)declared;
        JsonDocument document;
        try { document = JsonDocument.Parse(header); }
        catch (JsonException e) { throw Bad(name, $"has a safetensors header that is not JSON ({e.Message.ReplaceLineEndings(" ")})."); }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object) throw Bad(name, "has a safetensors header that is not a JSON object.");
            // JsonDocument checks UTF-8 and element kinds only when a value is read: those faults surface here.
            try
            {
                foreach (var entry in document.RootElement.EnumerateObject())
                {
                    if (entry.Name == "__metadata__") continue;
                    CheckSafetensorsEntry(name, entry.Name, entry.Value, dataBytes);
                }
            }
            catch (InvalidOperationException e) { throw Bad(name, $"has a damaged safetensors header ({e.Message.ReplaceLineEndings(" ")})."); }
        }
    }

    private static void CheckSafetensorsEntry(string name, string key, JsonElement value, long dataBytes)
    {
        string where = $": key '{key}'";
        if (value.ValueKind != JsonValueKind.Object
            || !value.TryGetProperty("dtype", out var dtype) || dtype.ValueKind != JsonValueKind.String
            || !value.TryGetProperty("shape", out var shape) || shape.ValueKind != JsonValueKind.Array
            || !value.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw Bad(name, $"{where} is not a tensor entry (dtype, shape and two data_offsets).");
        if (!SafetensorsTypes.TryGetValue(dtype.GetString()!, out int size))
            throw Bad(name, $"{where} has dtype '{dtype.GetString()}', which Man.ML does not read ({string.Join(", ", SafetensorsTypes.Keys)}).");
        var dims = new List<long>();
        foreach (var d in shape.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Bad(name, $"{where} has shape {shape.GetRawText()}, which is not a list of sizes.");
            dims.Add(dim);
        }
        long bytes = TensorBytes(name, key, dims, size);
        if (!offsets[0].TryGetInt64(out long begin) || !offsets[1].TryGetInt64(out long end) || begin < 0 || end < begin || end > dataBytes)
            throw Bad(name, Invariant($"{where} has data_offsets {offsets.GetRawText()} outside the file's {dataBytes:N0} bytes of tensor data."));
        if (end - begin != bytes)
            throw Bad(name, Invariant($"{where}: shape {Shape(dims)} of {dtype.GetString()} takes {bytes:N0} bytes, but its data_offsets ",
                                      $"{offsets.GetRawText()} hold {end - begin:N0}."));
    }

    // The bytes of a tensor of these sizes, refusing an element count or a size that overflows or exceeds what Man.ML reads.
    private static long TensorBytes(string name, string key, IReadOnlyList<long> dims, int elementSize)
    {
        try
        {
            long count = 1;
            foreach (long d in dims) count = checked(count * d);
            long bytes = checked(count * elementSize);
            if (bytes <= MaxTensorBytes) return bytes;
        }
        catch (OverflowException) { }
        throw Bad(name, Invariant($": key '{key}' has shape {Shape(dims)}, larger than the {MaxTensorBytes:N0} bytes Man.ML reads for one tensor."));
    }

    private static string Invariant(params FormattableString[] parts) => string.Concat(parts.Select(p => p.ToString(CultureInfo.InvariantCulture)));

    /// <summary>
    /// Checks a torch.save zip: entries within the file and bounded, and its pickle (data.pkl) a state dict of tensors
    /// whose storages are data entries of their declared size.
    /// </summary>
    /// <exception cref="IncompatibleWeightsException">Anything else; a Python object other than a tensor is refused by name.</exception>
    public static void CheckTorchZip(string path)
    {
        string name = Path.GetFileName(path);
        using var stream = InputFiles.OpenRead(path, "Weights file");
        long length = stream.Length;
        // The zip reader reports a damaged archive when it gets to the part (the directory, an entry), not when it opens.
        try
        {
            CheckTorchZip(name, stream, length);
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or NotSupportedException)
        {
            throw Bad(name, $"could not be read as a torch.save state dict: it is not a complete zip file ({e.Message})");
        }
    }

    private static void CheckTorchZip(string name, Stream stream, long length)
    {
        using (var archive = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true))
        {
            var entries = new Dictionary<string, ZipArchiveEntry>(StringComparer.Ordinal);
            foreach (var entry in archive.Entries)
            {
                if (entry.CompressedLength > length || entry.Length > MaxTensorBytes)
                    throw Bad(name, Invariant($"could not be read as a torch.save state dict: its zip entry '{entry.FullName}' declares ",
                                              $"{entry.Length:N0} bytes ({entry.CompressedLength:N0} stored) in a file of {length:N0}."));
                entries[entry.FullName] = entry;
            }
            var pickle = archive.Entries.FirstOrDefault(e => e.Name.EndsWith("data.pkl", StringComparison.Ordinal))
                ?? throw Bad(name, "could not be read as a torch.save state dict: the zip file holds no data.pkl.");
            if (pickle.Length > MaxPickleBytes)
                throw Bad(name, Invariant($"could not be read as a torch.save state dict: its data.pkl has {pickle.Length:N0} bytes, ",
                                          $"more than the {MaxPickleBytes:N0} Man.ML reads."));
            var bytes = new byte[pickle.Length];
            using (var data = pickle.Open()) data.ReadExactly(bytes);
            new PickleWalk(name, bytes, key => entries.Values.FirstOrDefault(e => e.FullName.EndsWith("data/" + key, StringComparison.Ordinal))?.Length)
                .Run();
        }
    }

    /// <summary>
    /// The refusal of a pickle that holds something other than tensors: <paramref name="what"/> names it (a Python
    /// global such as 'os.system').
    /// </summary>
    public static IncompatibleWeightsException NotTensors(string name, string what, Exception? inner = null) =>
        new($"Weights file '{name}' holds {what}, not only tensors: a Python object Man.ML refuses to unpickle; {SaveAdvice}.", inner);

    // Walks a pickle as Python's unpickler would, building nothing but the values a state dict is made of, and calling
    // nothing: REDUCE of an allowed global records the call; any other global is refused where it appears.
    private sealed class PickleWalk(string name, byte[] code, Func<string, long?> entryLength)
    {
        private sealed record Global(string Module, string Name)
        {
            public override string ToString() => $"{Module}.{Name}";
        }

        private sealed record Persistent(object? Id);

        private sealed class Mark;

        private sealed class Opaque;

        private static readonly Mark TheMark = new();
        private static readonly Opaque Something = new();
        private readonly List<object?> stack = new();
        private readonly Dictionary<long, object?> memo = new();
        private int at;
        private string lastText = "", key = "";  // the last string pushed; the key of the tensor being rebuilt, for messages

        private IncompatibleWeightsException Damaged(string why) =>
            Bad(name, $"could not be read as a torch.save state dict: its data.pkl {why} (at byte {at}).");

        private byte Byte() => at < code.Length ? code[at++] : throw Damaged("ends early");

        private ReadOnlySpan<byte> Bytes(long count)
        {
            if (count < 0 || count > code.Length - at) throw Damaged("ends early");
            var span = code.AsSpan(at, (int)count);
            at += (int)count;
            return span;
        }

        private string Line()
        {
            int end = Array.IndexOf(code, (byte)'\n', at);
            if (end < 0) throw Damaged("ends early");
            var text = Encoding.UTF8.GetString(code, at, end - at);
            at = end + 1;
            return text;
        }

        private object? Pop()
        {
            if (stack.Count == 0) throw Damaged("pops an empty stack");
            var top = stack[^1];
            stack.RemoveAt(stack.Count - 1);
            return top;
        }

        private List<object?> PopToMark()
        {
            int mark = stack.FindLastIndex(o => ReferenceEquals(o, TheMark));
            if (mark < 0) throw Damaged("has no mark to pop to");
            var items = stack.GetRange(mark + 1, stack.Count - mark - 1);
            stack.RemoveRange(mark, stack.Count - mark);
            return items;
        }

        private void Push(object? value)
        {
            // torch.save pushes a tensor's key, then _rebuild_tensor_v2 (a GLOBAL, or a memo get of it), then its arguments.
            if (value is string text) lastText = text;
            else if (value is Global { Module: "torch._utils" }) key = lastText;
            stack.Add(value);
        }

        private object? Top() => stack.Count > 0 ? stack[^1] : throw Damaged("reads an empty stack");

        public void Run()
        {
            while (true)
            {
                byte op = Byte();
                switch (op)
                {
                    case 0x80: Byte(); break;                                                           // PROTO
                    case 0x95: Bytes(8); break;                                                         // FRAME
                    case (byte)'.': return;                                                             // STOP
                    case (byte)'(': stack.Add(TheMark); break;                                          // MARK
                    case (byte)'}': case (byte)']': Push(Something); break;                             // EMPTY_DICT, EMPTY_LIST
                    case (byte)')': Push(new List<object?>()); break;                                   // EMPTY_TUPLE
                    case (byte)'t': Push(PopToMark()); break;                                           // TUPLE
                    case (byte)'d': case (byte)'l': PopToMark(); Push(Something); break;                // DICT, LIST
                    case 0x85: Push(new List<object?> { Pop() }); break;                                // TUPLE1
                    case 0x86: { var b = Pop(); var a = Pop(); Push(new List<object?> { a, b }); break; }        // TUPLE2
                    case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new List<object?> { a, b, c }); break; } // TUPLE3
                    case (byte)'q': memo[Byte()] = Top(); break;                                        // BINPUT
                    case (byte)'r': memo[BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4))] = Top(); break; // LONG_BINPUT
                    case 0x94: memo[memo.Count] = Top(); break;                                         // MEMOIZE
                    case (byte)'h': Push(Memo(Byte())); break;                                          // BINGET
                    case (byte)'j': Push(Memo(BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4)))); break; // LONG_BINGET
                    case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(Bytes(4))); break; // BININT
                    case (byte)'K': Push((long)Byte()); break;                                          // BININT1
                    case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(Bytes(2))); break; // BININT2
                    case 0x8a: Push(Long(Bytes(Byte()))); break;                                        // LONG1
                    case (byte)'X': Push(Encoding.UTF8.GetString(Bytes(BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4))))); break; // BINUNICODE
                    case 0x8c: Push(Encoding.UTF8.GetString(Bytes(Byte()))); break;                     // SHORT_BINUNICODE
                    case (byte)'U': case (byte)'C': Push(Encoding.Latin1.GetString(Bytes(Byte()))); break; // SHORT_BINSTRING, SHORT_BINBYTES
                    case (byte)'T': case (byte)'B':                                                     // BINSTRING, BINBYTES
                        Push(Encoding.Latin1.GetString(Bytes(BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4))))); break;
                    case (byte)'N': Push(null); break;                                                  // NONE
                    case 0x88: Push(true); break;                                                       // NEWTRUE
                    case 0x89: Push(false); break;                                                      // NEWFALSE
                    case (byte)'G': Bytes(8); Push(Something); break;                                   // BINFLOAT
                    case (byte)'c': Push(Allowed(new Global(Line(), Line()))); break;                   // GLOBAL
                    case 0x93:                                                                          // STACK_GLOBAL
                    {
                        var n = Pop() as string;
                        var m = Pop() as string;
                        if (m is null || n is null) throw Damaged("names a global with something other than text");
                        Push(Allowed(new Global(m, n)));
                        break;
                    }
                    case (byte)'Q': Push(new Persistent(Pop())); break;                                 // BINPERSID
                    case (byte)'R': { var args = Pop(); Push(Call(Pop(), args)); break; }              // REDUCE
                    case 0x81: { var args = Pop(); Push(Call(Pop(), args)); break; }                   // NEWOBJ
                    case (byte)'b': Pop(); break;                                                       // BUILD: the state is set on the object
                    case (byte)'s': Pop(); Pop(); break;                                                // SETITEM
                    case (byte)'u': case (byte)'e': PopToMark(); break;                                 // SETITEMS, APPENDS
                    case (byte)'a': Pop(); break;                                                       // APPEND
                    case (byte)'0': Pop(); break;                                                       // POP
                    case (byte)'1': PopToMark(); break;                                                 // POP_MARK
                    case (byte)'2': Push(Top()); break;                                                 // DUP
                    default: throw Damaged($"uses pickle opcode 0x{op:x2}, which torch.save does not write");
                }
            }
        }

        private object? Memo(long index) => memo.TryGetValue(index, out var value) ? value : throw Damaged($"reads memo {index}, which was never set");

        private static object Long(ReadOnlySpan<byte> bytes) =>
            bytes.Length <= 8 ? (long)new System.Numerics.BigInteger(bytes, isUnsigned: false, isBigEndian: false) : Something;

        // The globals a state dict is made of; PyBridge refuses a whole model's nn.Parameter itself, with its own advice.
        private Global Allowed(Global global)
        {
            bool allowed = global.Module switch
            {
                "collections" => global.Name == "OrderedDict",
                "torch._utils" => global.Name is "_rebuild_tensor" or "_rebuild_tensor_v2" or "_rebuild_parameter",
                "torch" => Storages.ContainsKey(global.Name),
                _ => false,
            };
            return allowed ? global : throw NotTensors(name, $"'{global}'");
        }

        private object Call(object? callable, object? args)
        {
            if (callable is not Global global) throw Damaged("calls something that is not a global");
            if (global is { Module: "torch._utils", Name: "_rebuild_tensor" or "_rebuild_tensor_v2" }) CheckTensor(args as List<object?>);
            return Something;
        }

        // _rebuild_tensor_v2(storage, storage_offset, size, stride, ...): the storage is a persistent id
        // ("storage", torch.<Type>Storage, key, location, element count) naming the zip entry data/<key>.
        private void CheckTensor(List<object?>? args)
        {
            string tensor = key;
            if (args is not [Persistent { Id: List<object?> pid }, long offset, List<object?> sizes, List<object?> strides, ..]
                || pid is not ["storage", Global storageType, string entry, _, long count])
                throw Bad(name, $"could not be read as a torch.save state dict: key '{tensor}' is not a tensor record torch.save writes.");
            if (!Storages.TryGetValue(storageType.Name, out int elementSize))
                throw NotTensors(name, $"'{storageType}'");
            if (sizes.Any(s => s is not long) || strides.Any(s => s is not long) || sizes.Count != strides.Count)
                throw Bad(name, $"could not be read as a torch.save state dict: key '{tensor}' has a shape or stride that is not a list of sizes.");
            var dims = sizes.Cast<long>().ToList();
            var steps = strides.Cast<long>().ToList();
            if (dims.Any(d => d < 0 || d > int.MaxValue) || steps.Any(s => s < 0 || s > int.MaxValue) || offset < 0 || offset > int.MaxValue
                || count < 0 || count > int.MaxValue)
                throw Bad(name, $": key '{tensor}' has shape {Shape(dims)}, stride {Shape(steps)}, offset {offset} and {count} stored elements, " +
                                "which is not a tensor Man.ML reads.");
            TensorBytes(name, tensor, dims, elementSize);
            long storageBytes = TensorBytes(name, tensor, new[] { count }, elementSize);
            long? stored = entryLength(entry);
            if (stored is null) throw Bad(name, $": key '{tensor}' names storage data/{entry}, which the zip file does not hold.");
            if (stored != storageBytes)
                throw Bad(name, Invariant($": key '{tensor}' declares {count:N0} elements of {storageType.Name} ({storageBytes:N0} bytes), ",
                                          $"but data/{entry} holds {stored:N0} bytes."));
            // The last element the view reaches must lie in the storage (an empty tensor reaches none).
            if (dims.All(d => d > 0))
            {
                long last = offset;
                try { for (int i = 0; i < dims.Count; i++) last = checked(last + (dims[i] - 1) * steps[i]); }
                catch (OverflowException) { last = long.MaxValue; }
                if (last >= count)
                    throw Bad(name, Invariant($": key '{tensor}' has shape {Shape(dims)} and stride {Shape(steps)} from offset {offset:N0}, ",
                                              $"reaching element {last:N0} of a storage of {count:N0}."));
            }
        }
    }
}
