// Messages between the ranks of a pipelined run whose stages are processes (docs/DISTRIBUTED.md): byte arrays sent
// point to point, each as its length and then its bytes (MPI keeps the order of messages between two ranks with one
// tag), every wait bounded so that a rank that stops or hangs ends the run with a message rather than a hung job.
using System.Runtime.InteropServices;

namespace Man.ML.Distributed;

/// <summary>What a message between stages carries; one tag each, so that each kind keeps its own order.</summary>
internal enum StageMessage
{
    /// <summary>A batch going downstream: its activation, images, labels and losses so far.</summary>
    Work = 11,

    /// <summary>The next stage's first unit after a step, going upstream to MAN's EMA copy.</summary>
    Snapshot = 12,

    /// <summary>A finished batch's losses and counts, from the last stage to every other rank.</summary>
    Result = 13,
}

/// <summary>Point-to-point messages between this rank and the others, with bounded waits.</summary>
internal sealed class StageLink(MpiWorld world, double timeoutSeconds)
{
    /// <summary>This process's rank: the stage it trains.</summary>
    public int Rank => world.Rank;

    /// <summary>The ranks of the job: the stages.</summary>
    public int Ranks => world.Size;

    /// <summary>The job.</summary>
    public MpiWorld World => world;

    /// <summary>The longest wait for another rank, in seconds.</summary>
    public double TimeoutSeconds => timeoutSeconds;

    /// <summary>Sends <paramref name="payload"/> to rank <paramref name="to"/> and waits until it has left.</summary>
    /// <exception cref="DistributedException">The other rank did not take it in time.</exception>
    public void Send(int to, StageMessage kind, byte[] payload, Func<string> what, CancellationToken cancellation)
    {
        Transfer(BitConverter.GetBytes((long)payload.Length), to, kind, send: true, what, cancellation);
        Transfer(payload, to, kind, send: true, what, cancellation);
    }

    /// <summary>The next message of <paramref name="kind"/> from rank <paramref name="from"/>.</summary>
    /// <exception cref="DistributedException">None came in time.</exception>
    public byte[] Receive(int from, StageMessage kind, Func<string> what, CancellationToken cancellation)
    {
        var length = new byte[sizeof(long)];
        Transfer(length, from, kind, send: false, what, cancellation);
        long n = BitConverter.ToInt64(length);
        if (n < 0 || n > int.MaxValue)
            throw new DistributedException(Rank, $"rank {Rank} of {Ranks}: rank {from} announced a message of {n} bytes.");
        var payload = new byte[n];
        Transfer(payload, from, kind, send: false, what, cancellation);
        return payload;
    }

    private void Transfer(byte[] buffer, int peer, StageMessage kind, bool send, Func<string> what, CancellationToken cancellation)
    {
        if (buffer.Length == 0) return;
        var pin = GCHandle.Alloc(buffer, GCHandleType.Pinned);
        bool done = false;
        try
        {
            var request = send ? world.StartSend(pin.AddrOfPinnedObject(), buffer.Length, peer, (int)kind)
                : world.StartReceive(pin.AddrOfPinnedObject(), buffer.Length, peer, (int)kind);
            world.Wait(request, timeoutSeconds, what, cancellation);
            done = true;
        }
        finally
        {
            // A transfer still in flight (cancelled, or the other rank gone) may yet touch the buffer: it stays pinned,
            // and the job is ending.
            if (done) pin.Free();
        }
    }
}
