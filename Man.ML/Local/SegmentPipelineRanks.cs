// Pipelined stages as the ranks of an MPI job (docs/DISTRIBUTED.md, "Pipelined stages as ranks"): rank s trains stage s
// with the same RunStage as one process does, and what the in-process channels carry between stages crosses processes
// through pumps, threads that turn messages into channel items and back. The semantics are those of one process
// (docs/PIPELINE.md): fixed by batch index, so the ranks compute what one process computes. Every rank receives every
// batch's result, so every rank's epoch figures are the same; at the end of an epoch each stage's state is broadcast
// from its rank, so that every rank holds the whole trained network for evaluation and checkpoints.
using System.Runtime.InteropServices;
using System.Threading.Channels;
using Man.ML.Distributed;
using Man.ML.Models;

namespace Man.ML.Local;

internal sealed partial class SegmentPipeline
{
    /// <summary>Set when the stages are the ranks of an MPI job: this process trains stage <see cref="StageLink.Rank"/>
    /// only (the layout's stage count equals the job's ranks).</summary>
    internal StageLink? Link { get; init; }

    private void RunEpochAsRank(StageLink link, long firstStep, int batches, Func<int, (Tensor Images, Tensor Labels)> nextBatch,
        Func<int, double> rate, NonFinitePolicy policy, Action<int, StepResult> onResult, CancellationToken cancellation)
    {
        int s = link.Rank, last = W - 1;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        var token = stop.Token;
        var bounded = new BoundedChannelOptions(layout.Depth + 1) { SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = true };
        var unbounded = new UnboundedChannelOptions { SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = true };
        var input = Channel.CreateBounded<Work>(bounded);
        var output = s < last ? Channel.CreateBounded<Work>(bounded) : Channel.CreateUnbounded<Work>(unbounded);
        var fromNext = s < last && followsNext ? Channel.CreateUnbounded<Snapshot>(unbounded) : null;
        var toPrevious = s > 0 && followsNext ? Channel.CreateUnbounded<Snapshot>(unbounded) : null;
        var initial = fromNext is null ? null : TakeSnapshot(s + 1, firstStep, layout.Devices[s]);
        var gate = new object();
        PipelineStepException? failure = null;
        Exception? transportFailure = null;
        void Fail(PipelineStepException e)
        {
            lock (gate) failure ??= e;
            stop.Cancel();
        }

        var pumps = new List<Thread>();
        void Pump(string name, Action body)
        {
            var thread = new Thread(() =>
            {
                try
                {
                    body();
                }
                catch (OperationCanceledException) when (token.IsCancellationRequested)
                {
                }
                catch (Exception e)
                {
                    lock (gate) transportFailure ??= e;
                    stop.Cancel();
                }
            })
            {
                Name = name,
                IsBackground = true,
            };
            pumps.Add(thread);
            thread.Start();
        }

        string Epoch(int b) => $"step {firstStep + b + 1}";
        if (s > 0)
        {
            Pump("manml-receive-work", () =>
            {
                try
                {
                    for (int b = 0; b < batches; b++)
                    {
                        var bytes = link.Receive(s - 1, StageMessage.Work, () => $"stage {s}'s input of {Epoch(b)} from rank {s - 1}", token);
                        if (!Write(input.Writer, DecodeWork(bytes, layout.Devices[s]), token)) return;
                    }
                }
                finally
                {
                    input.Writer.TryComplete();
                }
            });
        }
        if (s < last)
        {
            Pump("manml-send-work", () =>
            {
                while (Read(output.Reader, token) is { } item)
                {
                    using (item)
                        link.Send(s + 1, StageMessage.Work, EncodeWork(item), () => $"stage {s}'s output of {Epoch(item.Batch)} to rank {s + 1}", token);
                }
            });
        }
        if (fromNext is not null)
        {
            Pump("manml-receive-snapshots", () =>
            {
                try
                {
                    for (int b = 0; b < batches; b++)
                    {
                        var bytes = link.Receive(s + 1, StageMessage.Snapshot, () => $"stage {s + 1}'s parameters after {Epoch(b)} from rank {s + 1}",
                            token);
                        if (!Write(fromNext.Writer, DecodeSnapshot(bytes, layout.Devices[s]), token)) return;
                    }
                }
                finally
                {
                    fromNext.Writer.TryComplete();
                }
            });
        }
        if (toPrevious is not null)
        {
            Pump("manml-send-snapshots", () =>
            {
                while (Read(toPrevious.Reader, token) is { } snapshot)
                {
                    using (snapshot)
                    {
                        link.Send(s - 1, StageMessage.Snapshot, EncodeSnapshot(snapshot),
                            () => $"stage {s}'s parameters of version {snapshot.Version} to rank {s - 1}", token);
                    }
                }
            });
        }

        StartWorkers();
        using var finished = new CountdownEvent(1);
        jobs[s].Add(() =>
        {
            try
            {
                RunStage(s, firstStep, input.Reader, output.Writer, fromNext?.Reader, initial, toPrevious?.Writer, policy, Fail, token);
            }
            finally
            {
                output.Writer.TryComplete();
                toPrevious?.Writer.TryComplete();
                finished.Signal();
            }
        });

        int delivered = 0;
        void Deliver(int batch, StepResult result)
        {
            onResult(batch, result);
            delivered++;
        }
        try
        {
            if (s == 0)
            {
                for (int b = 0; b < batches && !token.IsCancellationRequested; b++)
                {
                    var (images, labels) = nextBatch(b);
                    var item = new Work { Batch = b, Rate = rate(b), Images = images, Labels = labels, Losses = new float[local.Split.K] };
                    if (!Write(input.Writer, item, token)) break;
                }
                input.Writer.TryComplete();
            }
            if (s == last)
            {
                // The last stage's results, to this rank's caller and to every other rank's.
                while (Read(output.Reader, token) is { } done)
                {
                    using (done)
                    {
                        var result = new StepResult(done.Losses[^1], done.Correct, done.Labels.shape[0], done.Losses, done.Skipped);
                        var bytes = EncodeResult(done.Batch, result);
                        for (int r = 0; r < last; r++)
                        {
                            int to = r;
                            link.Send(to, StageMessage.Result, bytes, () => $"the result of {Epoch(done.Batch)} to rank {to}", token);
                        }
                        Deliver(done.Batch, result);
                    }
                }
            }
            else
            {
                for (int b = 0; b < batches; b++)
                {
                    var (batch, result) = DecodeResult(link.Receive(last, StageMessage.Result, () => $"the result of {Epoch(b)} from rank {last}", token));
                    Deliver(batch, result);
                }
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
        }
        catch (DistributedException e)
        {
            lock (gate) transportFailure ??= e;
        }
        finally
        {
            input.Writer.TryComplete();
            if (delivered < batches) stop.Cancel();
            finished.Wait();
            foreach (var pump in pumps) pump.Join();
            while (input.Reader.TryRead(out var left)) left.Dispose();
            while (output.Reader.TryRead(out var left)) left.Dispose();
            if (fromNext is not null) while (fromNext.Reader.TryRead(out var left)) left.Dispose();
            if (toPrevious is not null) while (toPrevious.Reader.TryRead(out var left)) left.Dispose();
            initial?.Dispose();
        }
        if (failure is not null) throw failure;
        if (transportFailure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(transportFailure).Throw();
        cancellation.ThrowIfCancellationRequested();
        if (delivered < batches) throw new InvalidOperationException($"The pipeline delivered {delivered} of {batches} batches.");
    }

    /// <summary>
    /// After an epoch of <see cref="RunEpochAsRank"/>: every stage's state (its trained parameters, batch-norm statistics,
    /// MAN's EMA copies and SGD's momentum) is broadcast from the rank that trained it, so every rank holds the whole
    /// network, as one process would, for evaluation, checkpoints and the next epoch's first snapshots.
    /// </summary>
    /// <exception cref="DistributedException">A rank did not take part in time.</exception>
    internal void ShareStages()
    {
        var link = Link ?? throw new InvalidOperationException("The pipeline's stages are not ranks.");
        for (int stage = 0; stage < W; stage++)
        {
            int root = stage;
            bool mine = stage == link.Rank;
            var parameters = trainable[stage];
            var flags = new byte[parameters.Count];
            if (mine) for (int i = 0; i < flags.Length; i++) flags[i] = local.MomentumOf(parameters[i]) is null ? (byte)0 : (byte)1;
            link.World.Broadcast(flags, root, link.TimeoutSeconds, () => $"stage {root}'s momentum flags");
            var tensors = parameters.Cast<Tensor>().Concat(stepState[stage]).ToList();
            for (int i = 0; i < flags.Length; i++)
                if (flags[i] == 1) tensors.Add(local.MomentumOf(parameters[i]) ?? local.ZeroMomentum(parameters[i]));
            long size = tensors.Sum(t => t.numel() * ElementBytes(t));
            if (size > int.MaxValue)
                throw new DistributedException(link.Rank, $"Stage {stage}'s state is {size} bytes; one broadcast takes at most {int.MaxValue}.");
            var buffer = new byte[size];
            int offset = 0;
            if (mine) foreach (var t in tensors) offset += Pack(t, buffer.AsSpan(offset));
            link.World.Broadcast(buffer, root, link.TimeoutSeconds, () => $"stage {root}'s trained state");
            if (!mine) foreach (var t in tensors) offset += Unpack(buffer.AsSpan(offset), t);
        }
    }

    private static int ElementBytes(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => sizeof(float),
        ScalarType.Float64 or ScalarType.Int64 => sizeof(long),
        _ => throw new NotSupportedException($"A stage's state holds a {t.dtype} tensor, which Man.ML does not send between ranks."),
    };

    // The tensor's values into `to`, as its own type; returns the bytes written.
    private static int Pack(Tensor t, Span<byte> to)
    {
        using var scope = NewDisposeScope();
        var c = t.detach().cpu().contiguous();
        ReadOnlySpan<byte> bytes = t.dtype switch
        {
            ScalarType.Float32 => MemoryMarshal.AsBytes(c.data<float>().ToArray().AsSpan()),
            ScalarType.Float64 => MemoryMarshal.AsBytes(c.data<double>().ToArray().AsSpan()),
            _ => MemoryMarshal.AsBytes(c.data<long>().ToArray().AsSpan()),
        };
        bytes.CopyTo(to);
        return bytes.Length;
    }

    // `from`'s first values into the tensor, in place; returns the bytes read.
    private static int Unpack(ReadOnlySpan<byte> from, Tensor t)
    {
        using var scope = NewDisposeScope();
        int n = checked((int)t.numel() * ElementBytes(t));
        var values = t.dtype switch
        {
            ScalarType.Float32 => tensor(MemoryMarshal.Cast<byte, float>(from[..n]).ToArray(), t.shape),
            ScalarType.Float64 => tensor(MemoryMarshal.Cast<byte, double>(from[..n]).ToArray(), t.shape),
            _ => tensor(MemoryMarshal.Cast<byte, long>(from[..n]).ToArray(), t.shape),
        };
        using (no_grad()) t.copy_(values);
        return n;
    }

    // A tensor travels as its type, shape and values; bf16 and float16 as float32 (exactly), integers as int64.
    private static void WriteTensor(BinaryWriter writer, Tensor t)
    {
        using var scope = NewDisposeScope();
        writer.Write((int)t.dtype);
        writer.Write((long)t.ndim);
        foreach (var d in t.shape) writer.Write(d);
        // The layout too: a channels-last map must stay so, or the next convolution takes another kernel (other roundings).
        writer.Write(t.dim() == 4 && ActivationLayouts.IsChannelsLast(t));
        var c = t.detach().cpu().contiguous();
        if (t.dtype == ScalarType.Float64) writer.Write(MemoryMarshal.AsBytes(c.data<double>().ToArray().AsSpan()));
        else if (t.is_floating_point()) writer.Write(MemoryMarshal.AsBytes(c.to(ScalarType.Float32).data<float>().ToArray().AsSpan()));
        else writer.Write(MemoryMarshal.AsBytes(c.to(ScalarType.Int64).data<long>().ToArray().AsSpan()));
    }

    private static Tensor ReadTensor(BinaryReader reader, Device device)
    {
        using var scope = NewDisposeScope();
        var dtype = (ScalarType)reader.ReadInt32();
        var shape = new long[reader.ReadInt64()];
        for (int i = 0; i < shape.Length; i++) shape[i] = reader.ReadInt64();
        bool channelsLast = reader.ReadBoolean();
        long n = shape.Aggregate(1L, (a, b) => a * b);
        Tensor values;
        if (dtype == ScalarType.Float64) values = tensor(MemoryMarshal.Cast<byte, double>(reader.ReadBytes(checked((int)n * 8)).AsSpan()).ToArray(), shape);
        else if (dtype is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16)
            values = tensor(MemoryMarshal.Cast<byte, float>(reader.ReadBytes(checked((int)n * 4)).AsSpan()).ToArray(), shape);
        else values = tensor(MemoryMarshal.Cast<byte, long>(reader.ReadBytes(checked((int)n * 8)).AsSpan()).ToArray(), shape);
        values = values.to(dtype).to(device);
        return (channelsLast ? ActivationLayouts.ToChannelsLast(values) : values).DetachFromDisposeScope();
    }

    private static byte[] EncodeWork(Work item)
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream))
        {
            writer.Write(item.Batch);
            writer.Write(item.Rate);
            writer.Write(item.Skipped);
            writer.Write(item.Correct);
            writer.Write(item.Losses.Length);
            foreach (var l in item.Losses) writer.Write(l);
            WriteTensor(writer, item.Labels);
            WriteTensor(writer, item.Images);
            writer.Write(item.Activation is not null);
            if (item.Activation is { } a) WriteTensor(writer, a);
        }
        return stream.ToArray();
    }

    private static Work DecodeWork(byte[] bytes, Device device)
    {
        using var reader = new BinaryReader(new MemoryStream(bytes));
        int batch = reader.ReadInt32();
        double rate = reader.ReadDouble();
        bool skipped = reader.ReadBoolean();
        long correct = reader.ReadInt64();
        var losses = new float[reader.ReadInt32()];
        for (int i = 0; i < losses.Length; i++) losses[i] = reader.ReadSingle();
        var labels = ReadTensor(reader, device);
        var images = ReadTensor(reader, device);
        var activation = reader.ReadBoolean() ? ReadTensor(reader, device) : null;
        return new Work
        {
            Batch = batch, Rate = rate, Skipped = skipped, Correct = correct, Losses = losses, Labels = labels, Images = images, Activation = activation,
        };
    }

    private static byte[] EncodeSnapshot(Snapshot snapshot)
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream))
        {
            writer.Write(snapshot.Version);
            writer.Write(snapshot.Parameters.Length);
            foreach (var p in snapshot.Parameters) WriteTensor(writer, p);
        }
        return stream.ToArray();
    }

    private static Snapshot DecodeSnapshot(byte[] bytes, Device device)
    {
        using var reader = new BinaryReader(new MemoryStream(bytes));
        long version = reader.ReadInt64();
        var parameters = new Tensor[reader.ReadInt32()];
        for (int i = 0; i < parameters.Length; i++) parameters[i] = ReadTensor(reader, device);
        return new Snapshot(version, parameters);
    }

    private static byte[] EncodeResult(int batch, StepResult result)
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream))
        {
            writer.Write(batch);
            writer.Write(result.Correct);
            writer.Write(result.Count);
            writer.Write(result.Skipped);
            writer.Write(result.SegmentLosses.Length);
            foreach (var l in result.SegmentLosses) writer.Write(l);
        }
        return stream.ToArray();
    }

    private static (int Batch, StepResult Result) DecodeResult(byte[] bytes)
    {
        using var reader = new BinaryReader(new MemoryStream(bytes));
        int batch = reader.ReadInt32();
        long correct = reader.ReadInt64(), count = reader.ReadInt64();
        bool skipped = reader.ReadBoolean();
        var losses = new float[reader.ReadInt32()];
        for (int i = 0; i < losses.Length; i++) losses[i] = reader.ReadSingle();
        return (batch, new StepResult(losses[^1], correct, count, losses, skipped));
    }
}
