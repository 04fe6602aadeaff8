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

    /// <summary>The key values saved by <see cref="ToJson"/>, each checked against its type.</summary>
    /// <exception cref="InvalidDataException">Not what <see cref="ToJson"/> writes; the message starts with the field.</exception>
    public static LabelKeyValues FromJson(JsonNode node)
    {
        if (node is not JsonObject o || o["type"] is not JsonValue typeNode || !typeNode.TryGetValue<string>(out var type))
            throw new InvalidDataException("label_key_values has no type.");
        var entry = Supported.FirstOrDefault(s => s.Name == type);
        if (entry.Name is null) throw new InvalidDataException($"label_key_values has the unsupported type '{type}'.");
        if (o["values"] is not JsonArray values) throw new InvalidDataException("label_key_values has no values array.");
        Array array = type switch
        {
            "text" => Typed<string>(values).Select(v => v.AsMemory()).ToArray(),
            "single" => Typed<float>(values),
            "double" => Typed<double>(values),
            "int32" => Typed<int>(values),
            "int64" => Typed<long>(values),
            "uint32" => Typed<uint>(values),
            _ => Typed<bool>(values),
        };
        return new LabelKeyValues(entry.Type, array);
    }

    private static T[] Typed<T>(JsonArray values) => values.Select((v, i) => v is JsonValue value && value.TryGetValue<T>(out var typed) ? typed
        : throw new InvalidDataException($"label_key_values value {i} is not a {typeof(T).Name}: {v?.ToJsonString() ?? "null"}.")).ToArray();
}
