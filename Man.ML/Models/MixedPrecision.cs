// bf16 mixed precision without autocast (TorchSharp has none): the matrix products (every Conv2dLayer, LinearLayer
// and the separable up-sampled convolution) cast their operands to bfloat16 at the module boundary while a precision
// scope is open on the thread, and return bf16 maps, so the activations that batch norm, ReLU and the next product keep
// for backward are bf16. Everything with a parameter stays float32 (the master weights, their gradients as the optimizer
// sees them, SGD's momentum, batch norm's statistics — libtorch's CPU batch norm takes a bf16 input with float32
// weights and statistics — and MAN's EMA); the losses, the decoder's sigmoid and the similarity matrices cast their
// inputs back to float32 (MixedPrecision.Float32). The casts are autograd operations, so each gradient reaches its
// float32 parameter through the cast's backward: no loss scaling, since bf16 has float32's exponent range.
//
// Emulated bf16 computes the same roundings through float32 kernels: operands rounded to bf16 and widened again, the
// product in float32, the result rounded to bf16. It differs from the native kernels only in summation order, runs at
// about float32's speed on a CPU without bf16 instructions (where libtorch's own bf16 kernels are 10-50x slower), and
// does not save memory (the widened operands are what the product keeps).
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Man.ML.Models;

/// <summary>The precision a run trains in (docs/PRECISION.md).</summary>
public enum TrainingPrecision
{
    /// <summary>float32 everywhere. The default.</summary>
    [ChoiceName("fp32")]
    Float32,

    /// <summary>Mixed precision: convolutions and linear layers compute in bfloat16 and keep bf16 activations; master
    /// weights, optimizer state, batch-norm statistics, losses and MAN's EMA stay float32. Needs a device that computes
    /// bf16 natively (a CUDA GPU; a CPU with AVX-512 BF16 or AMX): refused elsewhere.</summary>
    [ChoiceName("bf16")]
    BFloat16,

    /// <summary><see cref="BFloat16"/> where the device computes bf16 natively, else <see cref="Float32"/>.</summary>
    [ChoiceName("auto")]
    Auto,

    /// <summary>bf16's roundings computed through float32 kernels: the numerics of <see cref="BFloat16"/> on any device,
    /// at about float32's speed and memory (to check a model's accuracy in bf16 on a CPU without bf16 instructions).</summary>
    [ChoiceName("bf16-emulated")]
    BFloat16Emulated,
}

/// <summary>The precision scope of the current thread and the casts the mixed-precision modules make.</summary>
internal static class MixedPrecision
{
    [ThreadStatic] private static TrainingPrecision current;

    /// <summary>The precision products compute in on this thread (<see cref="TrainingPrecision.Float32"/> outside any scope).</summary>
    public static TrainingPrecision Current => current;

    /// <summary>Whether a bf16 scope (native or emulated) is open on this thread.</summary>
    public static bool Active => current is TrainingPrecision.BFloat16 or TrainingPrecision.BFloat16Emulated;

    /// <summary>Opens a scope in which products compute in <paramref name="precision"/> (a resolved precision, not
    /// <see cref="TrainingPrecision.Auto"/>); disposing it restores the previous one.</summary>
    public static Scope Enter(TrainingPrecision precision)
    {
        if (precision == TrainingPrecision.Auto)
            throw new ArgumentException("Resolve 'auto' to a precision before computing in it.", nameof(precision));
        var previous = current;
        current = precision;
        return new Scope(previous);
    }

    /// <summary>Restores the precision that was current when it was opened.</summary>
    public readonly struct Scope(TrainingPrecision previous) : IDisposable
    {
        /// <inheritdoc />
        public void Dispose() => current = previous;
    }

    /// <summary>A product's operand as the current scope computes with it: unchanged in float32; bf16 (native); rounded
    /// to bf16 and widened to float32 again (emulated). Null stays null.</summary>
    public static Tensor? Operand(Tensor? t) => current switch
    {
        _ when t is null => null,
        TrainingPrecision.BFloat16 => t.dtype == ScalarType.BFloat16 ? t : t.to(ScalarType.BFloat16),
        TrainingPrecision.BFloat16Emulated => (t.dtype == ScalarType.BFloat16 ? t : t.to(ScalarType.BFloat16)).to(ScalarType.Float32),
        _ => t.dtype == ScalarType.BFloat16 ? t.to(ScalarType.Float32) : t, // a bf16 map reaching float32 code computes in float32
    };

    /// <summary>A product's result as the current scope hands it on: bf16 in either bf16 mode, else unchanged.</summary>
    public static Tensor Result(Tensor y) =>
        current == TrainingPrecision.BFloat16Emulated && y.dtype != ScalarType.BFloat16 ? y.to(ScalarType.BFloat16) : y;

    /// <summary>A bf16 <paramref name="t"/> widened to float32, anything else as it is (float64 stays float64): what losses,
    /// softmax and similarity matrices take.</summary>
    public static Tensor Float32(Tensor t) => t.dtype is ScalarType.BFloat16 or ScalarType.Float16 ? t.to(ScalarType.Float32) : t;
}

/// <summary>A sigmoid computed in float32 whatever its input (InfoPro's decoder output, read by a binary cross-entropy:
/// a bf16 sigmoid rounds 0.998 to 1, where the loss's logarithm is infinite). No parameters, so state dicts are those of
/// <c>nn.Sigmoid</c>.</summary>
internal sealed class Float32Sigmoid() : nn.Module<Tensor, Tensor>(nameof(Float32Sigmoid))
{
    /// <inheritdoc />
    public override Tensor forward(Tensor x) => MixedPrecision.Float32(x).sigmoid();
}

/// <summary>Whether a device computes bfloat16 products natively, and the resolution of <see cref="TrainingPrecision"/>.</summary>
internal static class BFloat16Support
{
    /// <summary>Environment variable that lets <see cref="TrainingPrecision.BFloat16"/> run on a CPU without bf16
    /// instructions, on libtorch's slow fallback kernels (to check those kernels, or to measure bf16's memory there).</summary>
    public const string AnyCpuVariable = "MANML_BF16_ANY_CPU";

    private static readonly Lazy<bool> cpu = new(CpuHasBFloat16, LazyThreadSafetyMode.PublicationOnly);

    /// <summary>Tests set this to run native bf16 on any CPU, as <see cref="AnyCpuVariable"/> does.</summary>
    internal static bool AllowAnyCpu { get; set; } = Environment.GetEnvironmentVariable(AnyCpuVariable) == "1";

    /// <summary>Whether this CPU has the bf16 dot-product instructions oneDNN's fast bf16 kernels use (AVX-512 BF16 or
    /// AMX-BF16), with the operating system's support for their registers.</summary>
    public static bool Cpu => cpu.Value;

    /// <summary>Whether <paramref name="device"/> computes bf16 natively: a CUDA GPU (assumed; Ampere and later are
    /// fast at it), or a CPU for which <see cref="Cpu"/> holds.</summary>
    public static bool Native(DeviceType device) => device == DeviceType.CUDA || Cpu;

    /// <summary>
    /// The precision a run on <paramref name="device"/> asked for <paramref name="requested"/> computes in: auto becomes
    /// bf16 where it is native, else float32; bf16 where it is not native is refused (it would be many times slower than
    /// float32 without saying so), unless <see cref="AllowAnyCpu"/>.
    /// </summary>
    /// <exception cref="InvalidOptionException">bf16 on a CPU without bf16 instructions.</exception>
    public static TrainingPrecision Resolve(TrainingPrecision requested, DeviceType device, string option = "Precision") => requested switch
    {
        TrainingPrecision.Auto => Native(device) ? TrainingPrecision.BFloat16 : TrainingPrecision.Float32,
        TrainingPrecision.BFloat16 when !Native(device) && !AllowAnyCpu => throw new InvalidOptionException(option,
            "Precision bf16 needs bf16 instructions, and this CPU has none (lscpu shows neither avx512_bf16 nor amx_bf16): " +
            "libtorch would compute bf16 here many times slower than float32. Use fp32, auto (float32 on this CPU), or " +
            "bf16-emulated (bf16's numerics at float32's speed, to check accuracy)."),
        _ => requested,
    };

    // CPUID leaf 7: sub-leaf 1 EAX bit 5 is AVX512_BF16; sub-leaf 0 EDX bit 22 is AMX-BF16. Avx512BW.IsSupported adds
    // the operating system's consent (XCR0) to the register state the instructions use. Without them (AVX2 CPUs, and
    // AVX-512 CPUs before Cooper Lake / Zen 4) libtorch emulates bf16, slower than float32.
    private static bool CpuHasBFloat16()
    {
        if (RuntimeInformation.ProcessArchitecture is not Architecture.X64 || !X86Base.IsSupported) return false;
        if (X86Base.CpuId(0, 0).Eax < 7) return false;
        var (_, _, _, edx0) = X86Base.CpuId(7, 0);
        var (eax1, _, _, _) = X86Base.CpuId(7, 1);
        bool avx512Bf16 = (eax1 & (1 << 5)) != 0;
        bool amxBf16 = (edx0 & (1 << 22)) != 0;
        return (avx512Bf16 || amxBf16) && Avx512BW.IsSupported;
    }
}
