// A reader for numeric arrays in MATLAB Level 5 MAT-files (the format of SVHN's cropped-digit files): a 128-byte header,
// then data elements, each an 8-byte tag (type, size) or a 4-byte small-element tag, padded to 8 bytes; arrays are
// miMATRIX elements (flags, dimensions, name, real part), possibly inside zlib-compressed miCOMPRESSED elements. Values
// are returned as doubles in MATLAB's column-major order. Malformed input is an InvalidDataException naming the file.
using System.IO.Compression;
using System.Text;

namespace Man.ML.Data;

/// <summary>One numeric array of a MAT-file: its dimensions and its values, column-major.</summary>
internal sealed record MatArray(string Name, int[] Dimensions, double[] Values, byte[]? Bytes);

/// <summary>Reads numeric arrays from MATLAB v5 MAT-files.</summary>
internal static class MatFile
{
    private const int MiInt8 = 1, MiUInt8 = 2, MiInt16 = 3, MiUInt16 = 4, MiInt32 = 5, MiUInt32 = 6, MiSingle = 7, MiDouble = 9,
        MiInt64 = 12, MiUInt64 = 13, MiMatrix = 14, MiCompressed = 15;

    /// <summary>Reads every numeric array of the file by name. uint8 arrays also keep their raw bytes (no copy to double).</summary>
    /// <exception cref="InvalidDataException">Not a little-endian v5 MAT-file, or truncated.</exception>
    public static Dictionary<string, MatArray> Read(string path)
    {
        using var stream = InputFiles.OpenRead(path, "MAT-file");
        var header = new byte[128];
        if (stream.Read(header, 0, 128) != 128) throw new InvalidDataException($"'{path}' is not a MAT-file (shorter than its 128-byte header).");
        if (!Encoding.ASCII.GetString(header, 0, 6).StartsWith("MATLAB", StringComparison.Ordinal) || header[126] != (byte)'I' || header[127] != (byte)'M')
            throw new InvalidDataException($"'{path}' is not a little-endian MATLAB v5 MAT-file.");
        var arrays = new Dictionary<string, MatArray>();
        try
        {
            using var reader = new BinaryReader(stream);
            while (stream.Position < stream.Length) ReadElement(reader, arrays, path);
        }
        catch (EndOfStreamException e) { throw new InvalidDataException($"MAT-file '{path}' is truncated.", e); }
        // The explicit checks below name what is wrong; this net turns any inconsistency they miss into the declared error.
        catch (Exception e) when (e is ArgumentException or OverflowException or IndexOutOfRangeException)
        {
            throw new InvalidDataException($"MAT-file '{path}' is damaged: {e.Message}", e);
        }
        return arrays;
    }

    private static void ReadElement(BinaryReader reader, Dictionary<string, MatArray> arrays, string path)
    {
        var (type, size, _) = ReadTag(reader, path);
        if (size > reader.BaseStream.Length - reader.BaseStream.Position) throw new EndOfStreamException();
        var body = reader.ReadBytes(size);
        if (body.Length != size) throw new EndOfStreamException();
        if (type != MiCompressed) Pad(reader, size); // compressed elements are not padded
        if (type == MiCompressed)
        {
            using var inflated = new MemoryStream();
            using (var z = new ZLibStream(new MemoryStream(body), CompressionMode.Decompress)) CopyBounded(z, inflated, path);
            inflated.Position = 0;
            using var inner = new BinaryReader(inflated);
            while (inflated.Position < inflated.Length) ReadElement(inner, arrays, path);
        }
        else if (type == MiMatrix)
        {
            var array = ReadMatrix(new BinaryReader(new MemoryStream(body)), path);
            if (array is not null) arrays[array.Name] = array;
        }
    }

    private static MatArray? ReadMatrix(BinaryReader reader, string path)
    {
        var (_, flagsSize, flagsSmall) = ReadTag(reader, path);
        var flags = ReadData(reader, flagsSize, flagsSmall);
        if (flags.Length < 4) throw new InvalidDataException($"MAT-file '{path}': an array's flags are {flags.Length} bytes, not 8.");
        int arrayClass = flags[0];
        if (arrayClass is < 6 or > 15) return null;      // cells, structs, chars, sparse: not numeric arrays
        var (dimType, dimSize, dimSmall) = ReadTag(reader, path);
        if (dimType != MiInt32) throw new InvalidDataException($"MAT-file '{path}': array dimensions are not int32.");
        var dimBytes = ReadData(reader, dimSize, dimSmall);
        var dims = new int[dimSize / 4];
        for (int i = 0; i < dims.Length; i++) dims[i] = BitConverter.ToInt32(dimBytes, 4 * i);
        if (dims.Length == 0 || dims.Any(d => d < 0))
            throw new InvalidDataException($"MAT-file '{path}': an array has dimensions [{string.Join(", ", dims)}].");
        var (_, nameSize, nameSmall) = ReadTag(reader, path);
        string name = Encoding.ASCII.GetString(ReadData(reader, nameSize, nameSmall));
        var (dataType, dataSize, dataSmall) = ReadTag(reader, path);
        var data = ReadData(reader, dataSize, dataSmall);
        // Each dimension is below 2^31 and the data is in memory: a product past the data's size is refused before it overflows.
        long count = 1;
        foreach (var d in dims)
            if ((count *= d) > data.Length) throw new InvalidDataException(
                $"MAT-file '{path}', array '{name}': dimensions [{string.Join(", ", dims)}] for {data.Length} data bytes.");
        int width = dataType switch
        {
            MiInt8 or MiUInt8 => 1, MiInt16 or MiUInt16 => 2, MiInt32 or MiUInt32 or MiSingle => 4, MiDouble or MiInt64 or MiUInt64 => 8, _ => 0,
        };
        if (width == 0) throw new InvalidDataException($"MAT-file '{path}', array '{name}': unsupported data type {dataType}.");
        if (dataSize != count * width)
            throw new InvalidDataException($"MAT-file '{path}', array '{name}': {dataSize} data bytes for {count} values of {width} bytes.");
        if (dataType == MiUInt8) return new MatArray(name, dims, Array.Empty<double>(), data);
        var values = new double[count];
        for (long i = 0; i < count; i++)
        {
            int at = (int)(i * width);
            values[i] = dataType switch
            {
                MiInt8 => (sbyte)data[at],
                MiInt16 => BitConverter.ToInt16(data, at),
                MiUInt16 => BitConverter.ToUInt16(data, at),
                MiInt32 => BitConverter.ToInt32(data, at),
                MiUInt32 => BitConverter.ToUInt32(data, at),
                MiSingle => BitConverter.ToSingle(data, at),
                MiDouble => BitConverter.ToDouble(data, at),
                MiInt64 => BitConverter.ToInt64(data, at),
                _ => BitConverter.ToUInt64(data, at),
            };
        }
        return new MatArray(name, dims, values, null);
    }

    // A tag is 8 bytes (type, size), or 4 bytes when the upper 16 bits of the first word hold the size (a small element,
    // whose data fills the other 4 bytes).
    private static (int Type, int Size, bool Small) ReadTag(BinaryReader reader, string path)
    {
        uint first = reader.ReadUInt32();
        var (type, size, small) = (first >> 16) != 0 ? ((int)(first & 0xFFFF), (int)(first >> 16), true) : ((int)first, reader.ReadInt32(), false);
        if (size < 0 || (small && size > 4)) throw new InvalidDataException($"MAT-file '{path}': an element of type {type} claims {size} bytes.");
        return (type, size, small);
    }

    // MAT-files compress each variable; its inflated size is bounded by what one .NET array holds (SVHN's largest
    // file, extra_32x32.mat, inflates to 1.6 GB), so a small file cannot expand without end.
    private static void CopyBounded(Stream source, MemoryStream target, string path)
    {
        var buffer = new byte[1 << 16];
        int read;
        while ((read = source.Read(buffer, 0, buffer.Length)) > 0)
        {
            if (target.Length + read > Array.MaxLength)
                throw new InvalidDataException($"MAT-file '{path}': a compressed element inflates past {Array.MaxLength:N0} bytes.");
            target.Write(buffer, 0, read);
        }
    }

    private static byte[] ReadData(BinaryReader reader, int size, bool small)
    {
        if (size > reader.BaseStream.Length - reader.BaseStream.Position) throw new EndOfStreamException();
        var data = reader.ReadBytes(size);
        if (data.Length != size) throw new EndOfStreamException();
        if (small) reader.ReadBytes(4 - size);
        else Pad(reader, size);
        return data;
    }

    private static void Pad(BinaryReader reader, int size)
    {
        int padding = (8 - size % 8) % 8;
        if (padding > 0) reader.ReadBytes(padding);
    }
}
