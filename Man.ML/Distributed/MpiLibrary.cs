// The dozen MPI calls Man.ML needs, bound at run time to Open MPI's libmpi (Debian's openmpi-bin / libopenmpi-dev).
// Nothing links against MPI: a run that does not ask for it never loads it, and one that does without it installed gets
// one message saying what to install. Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM) are the addresses of
// exported globals, so they are read from the library itself; MPICH's are integers of another ABI, which this binding
// refuses by name rather than calling with the wrong handles. libmpi is opened RTLD_GLOBAL first because Open MPI's
// plugins, opened by MPI_Init, resolve their symbols against it.
using System.Runtime.InteropServices;

namespace Man.ML.Distributed;

internal sealed class MpiLibrary
{
    /// <summary>Overrides where libmpi is found (a path or a file name for the loader).</summary>
    public const string LibraryVariable = "MANML_MPI_LIBRARY";

    public const int Success = 0;
    public const int ThreadSerialized = 2;
    public static readonly IntPtr InPlace = new(1); // Open MPI's MPI_IN_PLACE

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int InitThreadFn(IntPtr argc, IntPtr argv, int required, out int provided);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int FlagFn(out int flag);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int NoArgsFn();
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int CommIntFn(IntPtr comm, out int value);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int IallreduceFn(IntPtr send, IntPtr receive, int count, IntPtr type,
        IntPtr op, IntPtr comm, out IntPtr request);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int TestFn(ref IntPtr request, out int flag, IntPtr status);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int PointToPointFn(IntPtr buffer, int count, IntPtr type, int peer, int tag,
        IntPtr comm, out IntPtr request);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int IbcastFn(IntPtr buffer, int count, IntPtr type, int root, IntPtr comm,
        out IntPtr request);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int AbortFn(IntPtr comm, int code);
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)] public delegate int VersionFn(IntPtr buffer, out int length);

    public required string Path { get; init; }
    public required InitThreadFn InitThread { get; init; }
    public required FlagFn Initialized { get; init; }
    public required FlagFn Finalized { get; init; }
    public required NoArgsFn Finalize { get; init; }
    public required CommIntFn CommRank { get; init; }
    public required CommIntFn CommSize { get; init; }
    public required IallreduceFn Iallreduce { get; init; }
    public required TestFn Test { get; init; }
    public required PointToPointFn Isend { get; init; }
    public required PointToPointFn Irecv { get; init; }
    public required IbcastFn Ibcast { get; init; }
    public required AbortFn Abort { get; init; }
    public required VersionFn LibraryVersion { get; init; }
    public required IntPtr CommWorld { get; init; }
    public required IntPtr Float { get; init; }
    public required IntPtr Double { get; init; }
    public required IntPtr LongLong { get; init; }
    public required IntPtr Byte { get; init; }
    public required IntPtr Sum { get; init; }
    public required IntPtr Max { get; init; }
    public required IntPtr Min { get; init; }

    private const int RtldNow = 0x2, RtldGlobal = 0x100;

    [DllImport("libc", EntryPoint = "dlopen")]
    private static extern IntPtr DlOpen(string file, int flags);

    [DllImport("libc", EntryPoint = "dlerror")]
    private static extern IntPtr DlError();

    /// <summary>Opens libmpi: <see cref="LibraryVariable"/> when set, else Open MPI's soname.</summary>
    /// <exception cref="InvalidOptionException">No libmpi, or not Open MPI's: the message says what to install.</exception>
    public static MpiLibrary Load()
    {
        const string install = "Install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or set " + LibraryVariable +
                               " to its libmpi.so; training without --distributed needs no MPI.";
        if (!OperatingSystem.IsLinux())
            throw new InvalidOptionException("Distributed", "Distributed training over MPI runs on Linux with Open MPI. " + install);
        var candidates = Environment.GetEnvironmentVariable(LibraryVariable) is { Length: > 0 } given
            ? new[] { given } : new[] { "libmpi.so.40", "libmpi.so" };
        string? failure = null;
        foreach (var name in candidates)
        {
            IntPtr handle;
            try { handle = DlOpen(name, RtldNow | RtldGlobal); }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { handle = IntPtr.Zero; }
            if (handle == IntPtr.Zero)
            {
                failure = Marshal.PtrToStringAnsi(DlError()) ?? name;
                continue;
            }
            if (!NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out var world))
                throw new InvalidOptionException("Distributed",
                    $"'{name}' is not Open MPI's libmpi (MPICH and others use another binary interface). " + install);
            T Fn<T>(string symbol) where T : Delegate => Marshal.GetDelegateForFunctionPointer<T>(NativeLibrary.GetExport(handle, symbol));
            return new MpiLibrary
            {
                Path = name,
                InitThread = Fn<InitThreadFn>("MPI_Init_thread"),
                Initialized = Fn<FlagFn>("MPI_Initialized"),
                Finalized = Fn<FlagFn>("MPI_Finalized"),
                Finalize = Fn<NoArgsFn>("MPI_Finalize"),
                CommRank = Fn<CommIntFn>("MPI_Comm_rank"),
                CommSize = Fn<CommIntFn>("MPI_Comm_size"),
                Iallreduce = Fn<IallreduceFn>("MPI_Iallreduce"),
                Test = Fn<TestFn>("MPI_Test"),
                Isend = Fn<PointToPointFn>("MPI_Isend"),
                Irecv = Fn<PointToPointFn>("MPI_Irecv"),
                Ibcast = Fn<IbcastFn>("MPI_Ibcast"),
                Abort = Fn<AbortFn>("MPI_Abort"),
                LibraryVersion = Fn<VersionFn>("MPI_Get_library_version"),
                CommWorld = world,
                Float = NativeLibrary.GetExport(handle, "ompi_mpi_float"),
                Double = NativeLibrary.GetExport(handle, "ompi_mpi_double"),
                LongLong = NativeLibrary.GetExport(handle, "ompi_mpi_long_long_int"),
                Byte = NativeLibrary.GetExport(handle, "ompi_mpi_byte"),
                Sum = NativeLibrary.GetExport(handle, "ompi_mpi_op_sum"),
                Max = NativeLibrary.GetExport(handle, "ompi_mpi_op_max"),
                Min = NativeLibrary.GetExport(handle, "ompi_mpi_op_min"),
            };
        }
        throw new InvalidOptionException("Distributed", $"Distributed training needs MPI, and libmpi could not be loaded ({failure}). " + install);
    }
}
