// This process's place in an MPI job: MPI started once (on first use, MPI_THREAD_SERIALIZED: any thread may call, one
// at a time, under one lock), its rank and size, in-place sums by non-blocking all-reduce, and waits that are bounded:
// a rank that dies or hangs must end the job with a message, never leave the others waiting forever, so every wait
// polls MPI_Test against a deadline instead of blocking in MPI_Wait.
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Man.ML.Distributed;

/// <summary>How a run is spread over processes.</summary>
public enum DistributedMode
{
    /// <summary>One process (the default).</summary>
    [ChoiceName("none")]
    None,

    /// <summary>Data-parallel over the ranks of an MPI job (Open MPI; launched by mpirun or Slurm's srun).</summary>
    [ChoiceName("mpi")]
    Mpi,
}

/// <summary>A distributed run cannot go on: a rank stopped answering, or the ranks disagree. The message names the rank.</summary>
public sealed class DistributedException(int rank, string message) : Exception(message)
{
    /// <summary>The rank that raised it.</summary>
    public int Rank { get; } = rank;
}

/// <summary>This process's MPI job, for applications that train with <see cref="DistributedMode.Mpi"/>.</summary>
public static class MpiJob
{
    /// <summary>Whether this process was started by an MPI launcher (mpirun, or srun with PMI/PMIx), read from the
    /// environment the launcher sets; starts nothing.</summary>
    public static bool IsLaunched =>
        new[] { "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK" }.Any(v => Environment.GetEnvironmentVariable(v) is not null);

    /// <summary>This process's rank, 0 to <see cref="Size"/> − 1 (starts MPI on first use).</summary>
    /// <exception cref="InvalidOptionException">Open MPI's libmpi is not installed.</exception>
    public static int Rank => MpiWorld.Instance.Rank;

    /// <summary>The number of ranks (starts MPI on first use).</summary>
    /// <exception cref="InvalidOptionException">Open MPI's libmpi is not installed.</exception>
    public static int Size => MpiWorld.Instance.Size;

    /// <summary>Ends every rank of the job with <paramref name="exitCode"/> (MPI_Abort), as a rank that cannot go on
    /// must: the others may be waiting for it. Without MPI started, ends this process.</summary>
    public static void Abort(int exitCode)
    {
        if (MpiWorld.Current is { } world) world.Abort(exitCode);
        Environment.Exit(exitCode);
    }
}

/// <summary>An all-reduce in flight.</summary>
internal sealed class MpiRequest
{
    internal IntPtr Handle;

    private volatile bool done;

    /// <summary>Whether it has completed (set under the world's lock; read by any thread).</summary>
    public bool Done { get => done; internal set => done = value; }

    /// <summary>When it was started, and when it was first seen complete (Stopwatch ticks).</summary>
    public long Started { get; internal init; }

    public long Completed { get; internal set; }
}

internal sealed class MpiWorld
{
    private static readonly object Gate = new();
    private static MpiWorld? instance;
    private readonly MpiLibrary mpi;
    private readonly object calls = new();
    private int finished;

    /// <summary>The job, MPI started on first use.</summary>
    /// <exception cref="InvalidOptionException">libmpi is missing or not Open MPI's.</exception>
    public static MpiWorld Instance
    {
        get
        {
            lock (Gate) return instance ??= Start();
        }
    }

    /// <summary>The job if MPI was started in this process, else null.</summary>
    public static MpiWorld? Current
    {
        get
        {
            lock (Gate) return instance;
        }
    }

    public int Rank { get; }
    public int Size { get; }

    /// <summary>The MPI library's own version line.</summary>
    public string Version { get; }

    private MpiWorld(MpiLibrary mpi, int rank, int size, string version)
    {
        this.mpi = mpi;
        Rank = rank;
        Size = size;
        Version = version;
    }

    private static MpiWorld Start()
    {
        var mpi = MpiLibrary.Load();
        Check(mpi.Initialized(out int initialized), "MPI_Initialized", -1);
        if (initialized == 0)
        {
            Check(mpi.InitThread(IntPtr.Zero, IntPtr.Zero, MpiLibrary.ThreadSerialized, out int provided), "MPI_Init_thread", -1);
            if (provided < MpiLibrary.ThreadSerialized)
                throw new DistributedException(-1, $"This MPI provides thread level {provided}; Man.ML needs MPI_THREAD_SERIALIZED (2).");
        }
        Check(mpi.CommRank(mpi.CommWorld, out int rank), "MPI_Comm_rank", -1);
        Check(mpi.CommSize(mpi.CommWorld, out int size), "MPI_Comm_size", rank);
        var buffer = Marshal.AllocHGlobal(8192); // MPI_MAX_LIBRARY_VERSION_STRING is 256 in Open MPI
        string version;
        try
        {
            Check(mpi.LibraryVersion(buffer, out int length), "MPI_Get_library_version", rank);
            version = (Marshal.PtrToStringAnsi(buffer, Math.Clamp(length, 0, 8192)) ?? "").Split('\n')[0].Split(", package")[0].Trim();
        }
        finally
        {
            Marshal.FreeHGlobal(buffer);
        }
        var world = new MpiWorld(mpi, rank, size, version);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => world.Finish();
        return world;
    }

    private static void Check(int code, string call, int rank)
    {
        if (code != MpiLibrary.Success) throw new DistributedException(rank, $"rank {rank}: {call} failed with MPI error {code}.");
    }

    /// <summary>Starts an in-place sum over every rank of <paramref name="count"/> values at <paramref name="buffer"/>
    /// (which must stay pinned until the request completes).</summary>
    public MpiRequest StartSum(IntPtr buffer, int count, MpiType type) => Start(buffer, count, type, mpi.Sum);

    private MpiRequest Start(IntPtr buffer, int count, MpiType type, IntPtr op)
    {
        var datatype = type switch
        {
            MpiType.Float => mpi.Float,
            MpiType.Double => mpi.Double,
            _ => mpi.LongLong,
        };
        lock (calls)
        {
            Check(mpi.Iallreduce(MpiLibrary.InPlace, buffer, count, datatype, op, mpi.CommWorld, out var handle), "MPI_Iallreduce", Rank);
            return new MpiRequest { Handle = handle, Started = Stopwatch.GetTimestamp() };
        }
    }

    /// <summary>Starts sending <paramref name="count"/> bytes at <paramref name="buffer"/> (pinned until the request
    /// completes) to rank <paramref name="to"/>; messages between two ranks with one tag arrive in the order sent.</summary>
    public MpiRequest StartSend(IntPtr buffer, int count, int to, int tag)
    {
        lock (calls)
        {
            Check(mpi.Isend(buffer, count, mpi.Byte, to, tag, mpi.CommWorld, out var handle), "MPI_Isend", Rank);
            return new MpiRequest { Handle = handle, Started = Stopwatch.GetTimestamp() };
        }
    }

    /// <summary>Starts receiving at most <paramref name="count"/> bytes from rank <paramref name="from"/> into
    /// <paramref name="buffer"/> (pinned until the request completes).</summary>
    public MpiRequest StartReceive(IntPtr buffer, int count, int from, int tag)
    {
        lock (calls)
        {
            Check(mpi.Irecv(buffer, count, mpi.Byte, from, tag, mpi.CommWorld, out var handle), "MPI_Irecv", Rank);
            return new MpiRequest { Handle = handle, Started = Stopwatch.GetTimestamp() };
        }
    }

    /// <summary>Copies rank <paramref name="root"/>'s <paramref name="values"/> into every rank's, waiting at most
    /// <paramref name="timeoutSeconds"/>.</summary>
    public void Broadcast(byte[] values, int root, double timeoutSeconds, Func<string> what)
    {
        if (values.Length == 0) return;
        var pin = GCHandle.Alloc(values, GCHandleType.Pinned);
        try
        {
            MpiRequest request;
            lock (calls)
            {
                Check(mpi.Ibcast(pin.AddrOfPinnedObject(), values.Length, mpi.Byte, root, mpi.CommWorld, out var handle), "MPI_Ibcast", Rank);
                request = new MpiRequest { Handle = handle, Started = Stopwatch.GetTimestamp() };
            }
            Wait(request, timeoutSeconds, what);
        }
        finally
        {
            pin.Free();
        }
    }

    /// <summary>Advances <paramref name="request"/> (Open MPI progresses non-blocking collectives inside MPI calls) and
    /// says whether it has completed.</summary>
    public bool Test(MpiRequest request)
    {
        if (request.Done) return true;
        lock (calls)
        {
            if (request.Done) return true; // completed by another thread while this one waited for the lock
            Check(mpi.Test(ref request.Handle, out int flag, IntPtr.Zero), "MPI_Test", Rank);
            if (flag != 0)
            {
                request.Done = true;
                request.Completed = Stopwatch.GetTimestamp();
            }
        }
        return request.Done;
    }

    /// <summary>Waits for <paramref name="request"/> at most <paramref name="timeoutSeconds"/>.</summary>
    /// <exception cref="DistributedException">It did not complete in time: another rank stopped or hangs.</exception>
    public void Wait(MpiRequest request, double timeoutSeconds, Func<string> what) => Wait(request, timeoutSeconds, what, CancellationToken.None);

    /// <summary>Waits for <paramref name="request"/> at most <paramref name="timeoutSeconds"/>, or until
    /// <paramref name="cancellation"/> is cancelled (then throws <see cref="OperationCanceledException"/>).</summary>
    public void Wait(MpiRequest request, double timeoutSeconds, Func<string> what, CancellationToken cancellation)
    {
        long start = Stopwatch.GetTimestamp();
        while (!Test(request))
        {
            cancellation.ThrowIfCancellationRequested();
            var waited = Stopwatch.GetElapsedTime(start);
            if (waited.TotalSeconds > timeoutSeconds)
                throw new DistributedException(Rank, FormattableString.Invariant(
                    $"rank {Rank} of {Size}: {what()} did not complete within {timeoutSeconds:0.#} s; another rank has stopped or hangs."));
            if (waited.TotalMilliseconds < 2) Thread.Yield();
            else Thread.Sleep(1);
        }
    }

    /// <summary>Sums <paramref name="values"/> over every rank, in place, waiting at most <paramref name="timeoutSeconds"/>.</summary>
    public void Sum(double[] values, double timeoutSeconds, Func<string> what) => Reduce(values, MpiType.Double, mpi.Sum, timeoutSeconds, what);

    /// <summary>The smallest and largest of every rank's <paramref name="value"/>.</summary>
    public (long Min, long Max) MinMax(long value, double timeoutSeconds, Func<string> what)
    {
        var low = new[] { value };
        var high = new[] { value };
        Reduce(low, MpiType.LongLong, mpi.Min, timeoutSeconds, what);
        Reduce(high, MpiType.LongLong, mpi.Max, timeoutSeconds, what);
        return (low[0], high[0]);
    }

    private void Reduce<T>(T[] values, MpiType type, IntPtr op, double timeoutSeconds, Func<string> what) where T : unmanaged
    {
        if (values.Length == 0) return;
        var pin = GCHandle.Alloc(values, GCHandleType.Pinned);
        try
        {
            var request = Start(pin.AddrOfPinnedObject(), values.Length, type, op);
            Wait(request, timeoutSeconds, what);
        }
        finally
        {
            pin.Free();
        }
    }

    /// <summary>Ends every rank of the job (MPI_Abort).</summary>
    public void Abort(int code)
    {
        Console.Out.Flush();
        Console.Error.Flush();
        lock (calls) mpi.Abort(mpi.CommWorld, code);
    }

    // MPI_Finalize at exit, once, when MPI was started here and is not finalized yet.
    private void Finish()
    {
        if (Interlocked.Exchange(ref finished, 1) != 0) return;
        lock (calls)
        {
            if (mpi.Finalized(out int done) == MpiLibrary.Success && done == 0) mpi.Finalize();
        }
    }
}

/// <summary>Element types of the all-reduces Man.ML makes.</summary>
internal enum MpiType
{
    Float,
    Double,
    LongLong,
}
