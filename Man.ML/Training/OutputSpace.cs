// The disk space a run's files take, measured rather than guessed: the files' own writers write into a stream that only
// counts, so every tensor record, shape and name is counted as it will be written. Only what is not there yet is added:
// SGD makes its momentum buffers at the first step (one per trainable parameter, its size plus a tensor record), and the
// headers grow with the epochs' figures. Measured (manml train, one epoch): ResNet-32 DGL + MAN at K = 16 writes a
// model.ckpt of 1.88 MB and a run.ckpt of 17.3 MB (MAN's copies of each next unit, the heads, the momentum of everything
// trained: 9 times the model); ResNet-8 DGL + MAN at K = 2, 0.32 and 0.77 MB, each estimated within 2 KB. The former
// estimate, 32 bytes per backbone parameter + 16 MiB, asked 31.7 MB of a ResNet-32 run without checkpoints (17 times
// its model) and too little for one with them (two run checkpoints while one is replaced: 34.5 MB).
using System.Text;
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Training;

internal static class OutputSpace
{
    /// <summary>Room left for what grows after the measurement: headers (the plan, class names, every epoch's figures) and metrics.json.</summary>
    public const long HeaderSlackBytes = 1L << 20;

    /// <summary>Bytes of a model file of <paramref name="network"/> (<see cref="ModelCheckpoint"/>), without its small JSON header.</summary>
    public static long ModelFileBytes(UnitChainNetwork network) => Count(stream =>
    {
        using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        network.save(writer);
    });

    /// <summary>Bytes of a run checkpoint of <paramref name="local"/> (<see cref="TrainingCheckpoint"/>) once it has taken a step.</summary>
    public static long RunCheckpointBytes(RunPlan plan, LocalTrainer local)
    {
        long now = Count(stream => TrainingCheckpoint.Save(stream, plan, local, Array.Empty<EpochMetrics>()));
        // Measured before the first step: the momentum buffers are still to come (counted also for a run without momentum).
        long momentum = local.Optimizer.parameters().Sum(p => p.numel() * p.ElementSize + 16 + 8L * p.dim());
        return now + momentum;
    }

    /// <summary>Throws when <paramref name="folder"/> has less than <paramref name="needed"/> bytes free.</summary>
    /// <exception cref="IOException">Not enough room; the message names the folder, what is free and what is needed.</exception>
    public static void Ensure(string folder, long needed, string what)
    {
        // The folder may not exist yet (it is made at the first write): its nearest existing parent is on the same disk.
        var existing = Path.GetFullPath(folder);
        while (!Directory.Exists(existing) && Path.GetDirectoryName(existing) is { } parent) existing = parent;
        long free = new DriveInfo(existing).AvailableFreeSpace;
        if (free < needed)
            throw new IOException($"'{folder}' has {free >> 20} MiB free; this run's files need about {(needed + (1 << 20) - 1) >> 20} MiB ({what}).");
    }

    private static long Count(Action<Stream> write)
    {
        using var counter = new CountingStream();
        write(counter);
        return counter.Length;
    }

    // A stream that keeps nothing: it only counts what is written.
    private sealed class CountingStream : Stream
    {
        private long length;
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => length;
        public override long Position { get => length; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => length += count;
        public override void Write(ReadOnlySpan<byte> buffer) => length += buffer.Length;
        public override void WriteByte(byte value) => length++;
    }
}
