// The label's key values (the original class labels behind key indices 1..N). The transformer's PredictedLabel carries
// them as its KeyValues annotation, so MapKeyToValue turns predictions back into the user's labels; they are saved with
// the model in JSON with their type.
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.MLNet;

/// <summary>Typed key values of a label column.</summary>
internal sealed class LabelKeyValues
{
    private static readonly (string Name, DataViewType Type, Type Raw)[] Supported =
    {
        ("text", TextDataViewType.Instance, typeof(ReadOnlyMemory<char>)),
        ("single", NumberDataViewType.Single, typeof(float)),
        ("double", NumberDataViewType.Double, typeof(double)),
        ("int32", NumberDataViewType.Int32, typeof(int)),
        ("int64", NumberDataViewType.Int64, typeof(long)),
        ("uint32", NumberDataViewType.UInt32, typeof(uint)),
        ("boolean", BooleanDataViewType.Instance, typeof(bool)),
    };

    public DataViewType ItemType { get; }
    public Array Values { get; }
    public int Count => Values.Length;
    private string TypeName => Supported.First(s => s.Type.Equals(ItemType)).Name;

    private LabelKeyValues(DataViewType itemType, Array values)
    {
        ItemType = itemType;
        Values = values;
    }

    /// <summary>Text key values: the class names of a checkpoint.</summary>
    public static LabelKeyValues FromNames(IEnumerable<string> names) =>
        new(TextDataViewType.Instance, names.Select(n => n.AsMemory()).ToArray());

    /// <summary>Display names of the classes (for slot names and messages).</summary>
    public string[] Names() => Values.Cast<object>().Select(v => v.ToString() ?? "").ToArray();

    /// <summary>The key values of a key-typed column, or null when it has none of a supported type.</summary>
    public static LabelKeyValues? FromColumn(DataViewSchema.Column column)
    {
        var annotation = column.Annotations.Schema.GetColumnOrNull("KeyValues");
        if (annotation is not { } found || found.Type is not VectorDataViewType { ItemType: var item }) return null;
        var entry = Supported.FirstOrDefault(s => s.Type.Equals(item));
        if (entry.Name is null) return null;
        var read = typeof(LabelKeyValues).GetMethod(nameof(Read), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!
            .MakeGenericMethod(entry.Raw);
        return new LabelKeyValues(item, (Array)read.Invoke(null, new object[] { column })!);
    }

    private static T[] Read<T>(DataViewSchema.Column column)
    {
        var values = default(VBuffer<T>);
        column.GetKeyValues(ref values);
        return values.DenseValues().ToArray();
    }

    /// <summary>Adds the values as the KeyValues annotation.</summary>
    public void AddKeyValues(DataViewSchema.Annotations.Builder builder)
    {
        var add = typeof(LabelKeyValues).GetMethod(nameof(AddTyped), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!
            .MakeGenericMethod(Values.GetType().GetElementType()!);
        add.Invoke(null, new object[] { builder, ItemType, Values });
    }

    private static void AddTyped<T>(DataViewSchema.Annotations.Builder builder, DataViewType itemType, T[] values)
    {
        ValueGetter<VBuffer<T>> getter = (ref VBuffer<T> dst) => new VBuffer<T>(values.Length, (T[])values.Clone()).CopyTo(ref dst);
        builder.Add("KeyValues", new VectorDataViewType((PrimitiveDataViewType)itemType, values.Length), getter);
    }

    public JsonObject ToJson() => new()
    {
        ["type"] = TypeName,
        ["values"] = new JsonArray(Values.Cast<object>().Select(v => v switch
        {
            ReadOnlyMemory<char> text => JsonValue.Create(text.ToString()),
            float f => JsonValue.Create(f),
            double d => JsonValue.Create(d),
            int i => JsonValue.Create(i),
            long l => JsonValue.Create(l),
            uint u => JsonValue.Create(u),
            bool b => (JsonNode?)JsonValue.Create(b),
            _ => throw new NotSupportedException(),
        }).ToArray()),
    };

    public static LabelKeyValues FromJson(JsonNode node)
    {
        string type = node["type"]!.GetValue<string>();
        var values = node["values"]!.AsArray();
        var entry = Supported.FirstOrDefault(s => s.Name == type);
        if (entry.Name is null) throw new InvalidDataException($"Unsupported label type '{type}' in the saved model.");
        Array array = type switch
        {
            "text" => values.Select(v => v!.GetValue<string>().AsMemory()).ToArray(),
            "single" => values.Select(v => v!.GetValue<float>()).ToArray(),
            "double" => values.Select(v => v!.GetValue<double>()).ToArray(),
            "int32" => values.Select(v => v!.GetValue<int>()).ToArray(),
            "int64" => values.Select(v => v!.GetValue<long>()).ToArray(),
            "uint32" => values.Select(v => v!.GetValue<uint>()).ToArray(),
            _ => values.Select(v => v!.GetValue<bool>()).ToArray(),
        };
        return new LabelKeyValues(entry.Type, array);
    }
}
