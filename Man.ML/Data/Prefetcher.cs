// The one producer/consumer hand-over of Man.ML's loaders (image files, IDataView rows): a producer enumerated on its
// own background thread into a bounded channel, so decoding runs at most Capacity items ahead of the training thread.
// The producer's failure reaches the consumer as an exception of the same kind and message whose InnerException is
// the producer's own (its stack trace included), so callers keep catching InvalidDataException for a bad image and a
// bug still shows where it happened. Disposing (also by leaving a foreach early) cancels the producer and joins its
// thread: no thread outlives the enumeration.
using System.Diagnostics;
using System.Threading.Channels;

namespace Man.ML.Data;

/// <summary>Runs a producer on a background thread at most <see cref="Capacity"/> items ahead of the consumer.</summary>
internal sealed class Prefetcher<T> : IDisposable
{
    private readonly Channel<T> channel;
    private readonly CancellationTokenSource stop;
    private readonly CancellationToken cancellation;
    private readonly Thread thread;
    private Exception? failure; // written before the channel completes, read after it has
    private bool disposed;

    /// <summary>Items the producer may have ready ahead of the consumer.</summary>
    public int Capacity { get; }

    /// <summary>Seconds the consumer has spent waiting for items.</summary>
    public double WaitSeconds { get; private set; }

    /// <summary>Starts <paramref name="produce"/> on a background thread named <paramref name="name"/>.</summary>
    /// <param name="produce">The items, produced lazily as they are enumerated; the token is cancelled when the consumer
    /// stops (disposal or <paramref name="cancellation"/>).</param>
    /// <param name="capacity">Items produced ahead (at least 1).</param>
    /// <param name="name">The thread's name, for debuggers and dumps.</param>
    /// <param name="cancellation">Stops the producer and makes the consumer throw <see cref="OperationCanceledException"/>.</param>
    public Prefetcher(Func<CancellationToken, IEnumerable<T>> produce, int capacity, string name, CancellationToken cancellation = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
        this.cancellation = cancellation;
        stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        channel = Channel.CreateBounded<T>(new BoundedChannelOptions(capacity)
        {
            SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait,
        });
        var token = stop.Token;
        thread = new Thread(() => Produce(produce, token)) { IsBackground = true, Name = name };
        thread.Start();
    }

    private void Produce(Func<CancellationToken, IEnumerable<T>> produce, CancellationToken token)
    {
        try
        {
            foreach (var item in produce(token))
                // A dedicated thread may block: the wait ends when the consumer takes an item or stops.
                channel.Writer.WriteAsync(item, token).AsTask().GetAwaiter().GetResult();
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested) { } // the consumer stopped
        catch (Exception e)
        {
            // Parallel loops wrap the worker's exception; the consumer wants the first real one.
            failure = e is AggregateException { InnerExceptions.Count: > 0 } a ? a.Flatten().InnerExceptions[0] : e;
        }
        finally { channel.Writer.TryComplete(); }
    }

    /// <summary>
    /// The next item, waiting for the producer if need be; false once the producer has finished. Items come in the
    /// producer's order; those produced before a failure are handed out first.
    /// </summary>
    /// <exception cref="OperationCanceledException">The cancellation token given at construction was cancelled.</exception>
    /// <exception cref="Exception">The producer failed: an exception of the same kind and message (InvalidDataException,
    /// IOException, ...; InvalidOperationException for other kinds) with the producer's exception as InnerException.</exception>
    public bool TryTake(out T item)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        cancellation.ThrowIfCancellationRequested();
        var reader = channel.Reader;
        while (!reader.TryRead(out item!))
        {
            var clock = Stopwatch.StartNew();
            bool more;
            try { more = reader.WaitToReadAsync(cancellation).AsTask().GetAwaiter().GetResult(); }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
            {
                cancellation.ThrowIfCancellationRequested(); // the plain kind, not the task's TaskCanceledException
                throw;
            }
            finally { WaitSeconds += clock.Elapsed.TotalSeconds; }
            if (!more)
            {
                cancellation.ThrowIfCancellationRequested(); // a cancelled producer ends the channel early: not a normal end
                if (failure is { } error) throw Rethrown(error);
                return false;
            }
        }
        return true;
    }

    /// <summary>The remaining items, in order (see <see cref="TryTake"/> for the exceptions).</summary>
    public IEnumerable<T> Items()
    {
        while (TryTake(out var item)) yield return item;
    }

    // An exception the consumer can catch as it would the producer's, carrying the producer's as InnerException.
    internal static Exception Rethrown(Exception e) => e switch
    {
        InvalidDataException => new InvalidDataException(e.Message, e),
        FileNotFoundException f => new FileNotFoundException(e.Message, f.FileName, e),
        DirectoryNotFoundException => new DirectoryNotFoundException(e.Message, e),
        EndOfStreamException => new EndOfStreamException(e.Message, e),
        IOException => new IOException(e.Message, e),
        UnauthorizedAccessException => new UnauthorizedAccessException(e.Message, e),
        OperationCanceledException c => new OperationCanceledException(e.Message, e, c.CancellationToken),
        OutOfMemoryException => new OutOfMemoryException(e.Message, e),
        _ => new InvalidOperationException($"The background producer failed: {e.Message}", e),
    };

    /// <summary>Stops the producer (cancelling its token; items not taken are dropped) and waits for its thread to end.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        stop.Cancel();
        thread.Join();
        stop.Dispose();
    }
}
