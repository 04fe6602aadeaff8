// TorchSharp 0.107 hands a Scalar to libtorch as a bare handle and nothing keeps the managed object alive during the call;
// its finalizer deletes the native object. A Scalar nobody holds (an implicit conversion, a number operand of a Tensor
// operator, the alpha of 1 that Tensor.add(x) makes inside TorchSharp) can be finalized by a collection on another
// thread while libtorch reads it (docs/BACKEND.md). Man.ML's tensor arithmetic with numbers, and its additions of tensors, go
// through these helpers, which hold every Scalar in a variable or a static field until the native call has returned;
// Man.ML.Analyzers turns the other forms into build errors.
namespace Man.ML.Backend;

/// <summary>Tensor arithmetic whose Scalars stay alive through the native calls that read them.</summary>
internal static class HeldScalars
{
    /// <summary>The alpha of every addition: static, so never finalized. Integral, so integer tensors take it too.</summary>
    internal static readonly Scalar One = 1L.ToScalar();

    /// <summary>a + b.</summary>
    internal static Tensor Plus(this Tensor a, Tensor b) => a.add(b, One);

    /// <summary>a += b, in place.</summary>
    internal static Tensor PlusInPlace(this Tensor a, Tensor b) => a.add_(b, One);

    /// <summary>a + v.</summary>
    internal static Tensor Plus(this Tensor a, double v)
    {
        using var s = v.ToScalar();
        return a.add(s, One);
    }

    /// <summary>v − a.</summary>
    internal static Tensor SubtractedFrom(this Tensor a, double v)
    {
        using var s = v.ToScalar();
        return a.sub(s).neg_();
    }

    /// <summary>a · v.</summary>
    internal static Tensor Times(this Tensor a, double v)
    {
        using var s = v.ToScalar();
        return a.mul(s);
    }

    /// <summary>a ·= v, in place.</summary>
    internal static Tensor TimesInPlace(this Tensor a, double v)
    {
        using var s = v.ToScalar();
        return a.mul_(s);
    }

    /// <summary>a / v.</summary>
    internal static Tensor DividedBy(this Tensor a, double v)
    {
        using var s = v.ToScalar();
        return a.div(s);
    }

    /// <summary>a /= v, in place.</summary>
    internal static Tensor DividedByInPlace(this Tensor a, double v)
    {
        using var s = v.ToScalar();
        return a.div_(s);
    }

    /// <summary>a clamped to [lo, hi].</summary>
    internal static Tensor Clamped(this Tensor a, double lo, double hi)
    {
        using var low = lo.ToScalar();
        using var high = hi.ToScalar();
        return a.clamp(low, high);
    }

    /// <summary>a filled with v, in place.</summary>
    internal static Tensor Filled(this Tensor a, double v)
    {
        using var s = v.ToScalar();
        return a.fill_(s);
    }

    /// <summary>A tensor of <paramref name="shape"/> filled with v.</summary>
    internal static Tensor Full(long[] shape, double v, ScalarType dtype = ScalarType.Float32)
    {
        using var s = v.ToScalar();
        return full(shape, s, dtype);
    }

    /// <summary>0, 1, …, n − 1.</summary>
    internal static Tensor Arange(long n, ScalarType dtype = ScalarType.Int64, Device? device = null)
    {
        using var end = n.ToScalar();
        return arange(end, dtype, device);
    }
}
