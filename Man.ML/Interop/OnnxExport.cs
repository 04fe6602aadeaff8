// A trained backbone as an ONNX inference graph, for scoring without libtorch (ONNX Runtime, ML.NET's ApplyOnnxModel).
// The graph takes what ML.NET's ExtractPixels gives with its defaults, planar RGB in 0..255 ("Pixels", N×3×S×S
// float32), normalises it with the model's mean and standard deviation, runs the network with every batch norm
// folded into the convolution before it (eval mode: W·γ/√(σ²+ε), (b − μ)·γ/√(σ²+ε) + β, computed in float64), and
// returns the class probabilities ("Score", N×classes, softmax). Operators: Mul, Add, Conv, Relu, MaxPool,
// GlobalAveragePool, Reshape, MatMul (VGG's adaptive pooling to 7×7 as a fixed averaging matrix), Flatten, Gemm and
// Softmax, opset 13. The protobuf is written with OnnxSharp's generated ONNX classes (Google.Protobuf).
using Google.Protobuf;
using Man.ML.Data;
using Man.ML.Models;
using Onnx;
using TorchSharp.Modules;
using Man.ML.Backend;

namespace Man.ML.Interop;

/// <summary>Writes a network as an ONNX inference graph.</summary>
public static class OnnxExport
{
    /// <summary>Name of the graph's input: planar RGB pixels in 0..255, (N, 3, S, S) float32 (ExtractPixels' defaults).</summary>
    public const string InputName = "Pixels";

    /// <summary>Name of the graph's output: class probabilities, (N, classes) float32 (the ML.NET transformer's Score).</summary>
    public const string OutputName = "Score";

    /// <summary>The ONNX operator set the graph uses.</summary>
    public const int OpsetVersion = 13;

    /// <summary>Metadata key: the class names, a JSON array, index for index with <see cref="OutputName"/>.</summary>
    public const string ClassesKey = "manml.classes";

    /// <summary>Metadata key: the side S of the input.</summary>
    public const string ImageSizeKey = "manml.image_size";

    /// <summary>Metadata key: the scoring recipe (cifar or imagenet) images are cropped and resized with before the graph.</summary>
    public const string RecipeKey = "manml.recipe";

    /// <summary>Metadata key: the architecture.</summary>
    public const string ArchitectureKey = "manml.architecture";

    /// <summary>Metadata key: the normalisation mean (a JSON array, one value a channel) the graph applies after its input.</summary>
    public const string NormalizationMeanKey = "manml.normalization_mean";

    /// <summary>Metadata key: the normalisation standard deviation (a JSON array) the graph applies after its input.</summary>
    public const string NormalizationStdKey = "manml.normalization_std";

    /// <summary>
    /// Writes <paramref name="network"/> to <paramref name="path"/> (atomically) as an inference graph with
    /// <paramref name="normalization"/> inside, and stores the class names, the image size, the scoring recipe, the
    /// architecture and the normalisation as the model's metadata (<see cref="ClassesKey"/>, <see cref="ImageSizeKey"/>,
    /// <see cref="RecipeKey"/>, <see cref="ArchitectureKey"/>, <see cref="NormalizationMeanKey"/>, <see cref="NormalizationStdKey"/>;
    /// <paramref name="description"/> as its doc string).
    /// </summary>
    /// <exception cref="ArgumentException">The class names do not match the network's class count, or the recipe is automatic.</exception>
    public static void Save(UnitChainNetwork network, string path, Normalization normalization, IReadOnlyList<string> classNames,
        int imageSize, ImageRecipe recipe, string? description = null)
    {
        if (classNames.Count != network.ClassCount)
            throw new ArgumentException($"{classNames.Count} class names for a network of {network.ClassCount} classes.", nameof(classNames));
        if (imageSize != network.InputShape.Height)
            throw new ArgumentException(
                $"The network was built for {network.InputShape.Height}x{network.InputShape.Width} images, not {imageSize}.", nameof(imageSize));
        if (recipe == ImageRecipe.Automatic) throw new ArgumentException("Give the recipe the model was trained with, not Automatic.", nameof(recipe));
        if (normalization.Mean.Length != 3 || normalization.Std.Length != 3)
            throw new ArgumentException("The normalisation needs one mean and one standard deviation per RGB channel.", nameof(normalization));
        var metadata = new Dictionary<string, string>
        {
            [ClassesKey] = System.Text.Json.JsonSerializer.Serialize(classNames),
            [ImageSizeKey] = imageSize.ToString(System.Globalization.CultureInfo.InvariantCulture),
            [RecipeKey] = Choices.Name(recipe),
            [ArchitectureKey] = network.Architecture,
            // Already inside the graph; recorded too so that a reader sees the whole contract without parsing nodes.
            [NormalizationMeanKey] = System.Text.Json.JsonSerializer.Serialize(normalization.Mean),
            [NormalizationStdKey] = System.Text.Json.JsonSerializer.Serialize(normalization.Std),
        };
        var model = Build(network, normalization, imageSize, metadata);
        if (description is not null) model.DocString = description;
        AtomicFile.Write(path, stream => model.WriteTo(stream));
    }

    internal static ModelProto Build(UnitChainNetwork network, Normalization normalization, int imageSize, IReadOnlyDictionary<string, string> metadata)
    {
        var graph = new GraphBuilder($"manml_{network.Architecture}");
        graph.Input(InputName, 3, imageSize, imageSize);
        // (x/255 − mean)/std = x·(1/(255·std)) + (−mean/std), per channel.
        var scale = normalization.Std.Select(s => (float)(1.0 / (255.0 * s))).ToArray();
        var shift = normalization.Mean.Zip(normalization.Std, (m, s) => (float)(-m / (double)s)).ToArray();
        var x = graph.Node("Add", new[]
        {
            graph.Node("Mul", new[] { InputName, graph.Constant("normalize_scale", scale, 1, 3, 1, 1) }),
            graph.Constant("normalize_shift", shift, 1, 3, 1, 1),
        });

        using (no_grad())
        {
            for (int i = 0; i < network.Units.Count; i++)
                x = Unit(graph, network.Units[i], x, $"unit{i}", network.UnitInfos[i]);
            x = Head(graph, network.Head, x, network.UnitInfos[^1].Output);
        }
        graph.Node("Softmax", new[] { x }, OutputName, ("axis", 1L));
        graph.Output(OutputName, network.ClassCount);

        var model = new ModelProto
        {
            IrVersion = 7,
            ProducerName = "Man.ML",
            ProducerVersion = typeof(OnnxExport).Assembly.GetName().Version?.ToString() ?? "",
            Graph = graph.Graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = OpsetVersion });
        foreach (var (key, value) in metadata)
            model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        return model;
    }

    private static string Unit(GraphBuilder g, nn.Module<Tensor, Tensor> unit, string x, string name, UnitInfo info)
    {
        switch (unit)
        {
            case ConvStem { MaxPool: false }:
                return g.Relu(ConvBn(g, unit, "conv", "bn", x, name));
            case ConvStem:
                return g.Node("MaxPool", new[] { g.Relu(ConvBn(g, unit, "conv", "bn", x, name)) }, null,
                    ("kernel_shape", new long[] { 3, 3 }), ("strides", new long[] { 2, 2 }), ("pads", new long[] { 1, 1, 1, 1 }));
            case BasicBlock block:
            {
                var h = g.Relu(ConvBn(g, unit, "conv1", "bn1", x, name + "_1"));
                h = ConvBn(g, unit, "conv2", "bn2", h, name + "_2");
                var identity = block.HasProjection ? ConvBn(g, Child(unit, "downsample"), "0", "1", x, name + "_down") : x;
                return g.Relu(g.Node("Add", new[] { h, identity }));
            }
            case Bottleneck block:
            {
                var h = g.Relu(ConvBn(g, unit, "conv1", "bn1", x, name + "_1"));
                h = g.Relu(ConvBn(g, unit, "conv2", "bn2", h, name + "_2"));
                h = ConvBn(g, unit, "conv3", "bn3", h, name + "_3");
                var identity = block.HasProjection ? ConvBn(g, Child(unit, "downsample"), "0", "1", x, name + "_down") : x;
                return g.Relu(g.Node("Add", new[] { h, identity }));
            }
            case VggLayer layer:
            {
                var input = layer.Pooled ? g.Node("MaxPool", new[] { x }, null, ("kernel_shape", new long[] { 2, 2 }), ("strides", new long[] { 2, 2 })) : x;
                return g.Relu(ConvBn(g, unit, "conv", "bn", input, name));
            }
            default:
                throw new NotSupportedException($"ONNX export does not know unit {info.Name} ({unit.GetType().Name}).");
        }
    }

    private static string Head(GraphBuilder g, nn.Module<Tensor, Tensor> head, string x, FeatureShape features)
    {
        switch (head)
        {
            case PooledLinearHead:
            {
                var pooled = g.Node("Flatten", new[] { g.Node("GlobalAveragePool", new[] { x }) }, null, ("axis", 1L));
                return Linear(g, (LinearLayer)Child(head, "fc"), pooled, "fc");
            }
            case VggHead:
            {
                var h = g.Node("MaxPool", new[] { x }, null, ("kernel_shape", new long[] { 2, 2 }), ("strides", new long[] { 2, 2 }));
                int height = features.Height / 2, width = features.Width / 2;
                if (height != 7 || width != 7)
                {
                    // adaptive_avg_pool2d to 7×7: output cell (i, j) averages input rows ⌊iH/7⌋..⌈(i+1)H/7⌉ and likewise
                    // columns; as a (H·W, 49) matrix applied to each channel's flattened map.
                    var matrix = new float[height * width * 49];
                    for (int i = 0; i < 7; i++)
                        for (int j = 0; j < 7; j++)
                        {
                            int r0 = i * height / 7, r1 = ((i + 1) * height + 6) / 7, c0 = j * width / 7, c1 = ((j + 1) * width + 6) / 7;
                            float weight = 1f / ((r1 - r0) * (c1 - c0));
                            for (int r = r0; r < r1; r++)
                                for (int c = c0; c < c1; c++) matrix[(r * width + c) * 49 + i * 7 + j] = weight;
                        }
                    var flat = g.Node("Reshape", new[] { h, g.Int64Constant("vgg_pool_shape", 0, features.Channels, height * width) });
                    h = g.Node("MatMul", new[] { flat, g.Constant("vgg_pool_matrix", matrix, height * width, 49) });
                }
                h = g.Node("Flatten", new[] { h }, null, ("axis", 1L));
                var classifier = Child(head, "classifier");
                h = g.Relu(Linear(g, (LinearLayer)Child(classifier, "0"), h, "classifier0"));
                h = g.Relu(Linear(g, (LinearLayer)Child(classifier, "2"), h, "classifier2"));
                return Linear(g, (LinearLayer)Child(classifier, "4"), h, "classifier4");
            }
            default:
                throw new NotSupportedException($"ONNX export does not know head {head.GetType().Name}.");
        }
    }

    private static nn.Module Child(nn.Module module, string name) =>
        module.named_children().FirstOrDefault(c => c.name == name).module
        ?? throw new InvalidOperationException($"{module.GetType().Name} has no child '{name}'.");

    // A convolution followed by its batch norm, folded into one Conv.
    private static string ConvBn(GraphBuilder g, nn.Module parent, string convName, string bnName, string x, string name)
    {
        var conv = (Conv2dLayer)Child(parent, convName);
        var bn = (BatchNorm)Child(parent, bnName);
        using var scope = NewDisposeScope();
        var w = conv.Weight.detach().cpu().to_type(ScalarType.Float64);
        var b = conv.Bias is { } bias ? bias.detach().cpu().to_type(ScalarType.Float64) : zeros(conv.OutChannels, ScalarType.Float64);
        var gamma = bn.weight!.detach().cpu().to_type(ScalarType.Float64);
        var beta = bn.bias!.detach().cpu().to_type(ScalarType.Float64);
        var mean = bn.running_mean!.cpu().to_type(ScalarType.Float64);
        var variance = bn.running_var!.cpu().to_type(ScalarType.Float64);
        var factor = gamma / variance.Plus(bn.eps).sqrt();
        var folded = (w * factor.view(-1, 1, 1, 1)).to_type(ScalarType.Float32).contiguous();
        var foldedBias = ((b - mean) * factor).Plus(beta).to_type(ScalarType.Float32).contiguous();
        var weightName = g.Constant(name + "_weight", folded.data<float>().ToArray(), folded.shape);
        var biasName = g.Constant(name + "_bias", foldedBias.data<float>().ToArray(), foldedBias.shape);
        long k = conv.KernelSize, p = conv.Padding, s = conv.Stride;
        return g.Node("Conv", new[] { x, weightName, biasName }, null,
            ("kernel_shape", new[] { k, k }), ("strides", new[] { s, s }), ("pads", new[] { p, p, p, p }), ("group", (long)conv.Groups));
    }

    private static string Linear(GraphBuilder g, LinearLayer linear, string x, string name)
    {
        using var scope = NewDisposeScope();
        var w = linear.Weight.detach().cpu().contiguous();
        var weight = g.Constant(name + "_weight", w.data<float>().ToArray(), w.shape);
        var bias = g.Constant(name + "_bias", linear.Bias!.detach().cpu().contiguous().data<float>().ToArray(), linear.Bias.shape);
        return g.Node("Gemm", new[] { x, weight, bias }, null, ("transB", 1L));
    }

    /// <summary>Builds a GraphProto node by node, naming every value.</summary>
    private sealed class GraphBuilder(string name)
    {
        private int counter;
        public GraphProto Graph { get; } = new() { Name = name };

        public void Input(string input, params long[] dims) => Graph.Input.Add(Value(input, dims));
        public void Output(string output, params long[] dims) => Graph.Output.Add(Value(output, dims));

        // A float32 tensor whose first dimension is the batch ("N").
        private static ValueInfoProto Value(string valueName, long[] dims)
        {
            var shape = new TensorShapeProto();
            shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimParam = "N" });
            foreach (var d in dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
            return new ValueInfoProto
            {
                Name = valueName,
                Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = shape } },
            };
        }

        public string Constant(string constantName, float[] values, params long[] dims)
        {
            var t = new TensorProto { Name = constantName, DataType = (int)TensorProto.Types.DataType.Float };
            t.Dims.Add(dims);
            var bytes = new byte[values.Length * sizeof(float)];
            Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length); // ONNX raw data is little-endian, as .NET is on x64 and ARM64
            t.RawData = ByteString.CopyFrom(bytes);
            Graph.Initializer.Add(t);
            return constantName;
        }

        public string Int64Constant(string constantName, params long[] values)
        {
            var t = new TensorProto { Name = constantName, DataType = (int)TensorProto.Types.DataType.Int64 };
            t.Dims.Add(values.Length);
            t.Int64Data.Add(values);
            Graph.Initializer.Add(t);
            return constantName;
        }

        public string Relu(string x) => Node("Relu", new[] { x });

        public string Node(string op, string[] inputs, string? output = null, params (string Name, object Value)[] attributes)
        {
            output ??= $"{op.ToLowerInvariant()}_{counter++}";
            var node = new NodeProto { OpType = op, Name = output };
            node.Input.Add(inputs);
            node.Output.Add(output);
            foreach (var (attribute, value) in attributes)
            {
                var a = new AttributeProto { Name = attribute };
                switch (value)
                {
                    case long i: a.Type = AttributeProto.Types.AttributeType.Int; a.I = i; break;
                    case long[] ints: a.Type = AttributeProto.Types.AttributeType.Ints; a.Ints.Add(ints); break;
                    default: throw new ArgumentException($"Attribute {attribute} has an unsupported type.");
                }
                node.Attribute.Add(a);
            }
            Graph.Node.Add(node);
            return output;
        }
    }
}
