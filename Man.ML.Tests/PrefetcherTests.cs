using Man.ML.Data;

namespace Man.ML.Tests;

/// <summary>The loaders' one producer/consumer hand-over: order, bounded look-ahead, cancellation, failures, disposal.</summary>
[TestClass]
public sealed class PrefetcherTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [TestMethod]
    public void ItemsArriveInTheProducersOrderOnAnotherThread()
    {
        int consumer = Environment.CurrentManagedThreadId;
        var producerThreads = new HashSet<int>();
        IEnumerable<int> Produce(CancellationToken _)
        {
            for (int i = 0; i < 1000; i++)
            {
                lock (producerThreads) producerThreads.Add(Environment.CurrentManagedThreadId);
                yield return i;
            }
        }
        using var prefetcher = new Prefetcher<int>(Produce, 3, "test producer");
        CollectionAssert.AreEqual(Enumerable.Range(0, 1000).ToArray(), prefetcher.Items().ToArray());
        Assert.IsFalse(prefetcher.TryTake(out _), "the end is reported again, not an error");
        Assert.AreEqual(1, producerThreads.Count);
        Assert.IsFalse(producerThreads.Contains(consumer), "the producer ran on the consumer's thread");
    }

    [TestMethod]
    public void TheProducerRunsAtMostCapacityItemsAhead()
    {
        int produced = 0;
        IEnumerable<int> Produce(CancellationToken _)
        {
            for (int i = 0; i < 100; i++)
            {
                yield return i;
                Interlocked.Increment(ref produced); // counted once the channel has accepted the item
            }
        }
        using var prefetcher = new Prefetcher<int>(Produce, 2, "test producer");
        Assert.IsTrue(SpinWait.SpinUntil(() => Volatile.Read(ref produced) >= 2, Patience));
        Thread.Sleep(200); // time enough to run ahead, were it not bounded
        Assert.AreEqual(2, Volatile.Read(ref produced), "two items fill the channel; the third waits");
        Assert.IsTrue(prefetcher.TryTake(out int first));
        Assert.AreEqual(0, first);
        Assert.IsTrue(SpinWait.SpinUntil(() => Volatile.Read(ref produced) >= 3, Patience));
        Thread.Sleep(100);
        Assert.AreEqual(3, Volatile.Read(ref produced), "taking one item lets exactly one more in");
    }

    [TestMethod]
    public void CancellationStopsBothSides()
    {
        using var cancellation = new CancellationTokenSource();
        var stopped = new ManualResetEventSlim();
        IEnumerable<int> Produce(CancellationToken token)
        {
            try
            {
                for (int i = 0; ; i++)
                {
                    token.ThrowIfCancellationRequested();
                    yield return i;
                }
            }
            finally { stopped.Set(); }
        }
        var prefetcher = new Prefetcher<int>(Produce, 2, "test producer", cancellation.Token);
        Assert.IsTrue(prefetcher.TryTake(out _));
        cancellation.Cancel();
        Assert.IsTrue(stopped.Wait(Patience), "the producer did not stop when the token was cancelled");
        Assert.ThrowsExactly<OperationCanceledException>(() => { while (prefetcher.TryTake(out _)) { } });
        prefetcher.Dispose();
    }

    [TestMethod]
    public void TheProducersExceptionIsTheInnerExceptionWithItsStack()
    {
        IEnumerable<int> Produce(CancellationToken _)
        {
            yield return 1;
            yield return 2;
            FailDeepInTheProducer();
        }
        using var prefetcher = new Prefetcher<int>(Produce, 4, "test producer");
        Assert.IsTrue(prefetcher.TryTake(out int a) && a == 1);
        Assert.IsTrue(prefetcher.TryTake(out int b) && b == 2, "items produced before the failure are handed out first");
        var e = Assert.ThrowsExactly<InvalidDataException>(() => prefetcher.TryTake(out _));
        Assert.AreEqual("Image 'x.jpg' cannot be decoded.", e.Message, "the consumer's exception says what the producer's said");
        Assert.IsInstanceOfType<InvalidDataException>(e.InnerException);
        StringAssert.Contains(e.InnerException!.StackTrace, nameof(FailDeepInTheProducer));

        // A parallel loop's AggregateException gives its first real exception; a kind without a mapping becomes an
        // InvalidOperationException that still carries it.
        using var parallel = new Prefetcher<int>(_ => ParallelFailure(), 1, "test producer");
        var p = Assert.ThrowsExactly<InvalidDataException>(() => parallel.TryTake(out _));
        Assert.IsInstanceOfType<InvalidDataException>(p.InnerException);
        using var other = new Prefetcher<int>(_ => throw new NotSupportedException("no"), 1, "test producer");
        var o = Assert.ThrowsExactly<InvalidOperationException>(() => other.TryTake(out _));
        Assert.IsInstanceOfType<NotSupportedException>(o.InnerException);
    }

    private static void FailDeepInTheProducer() => throw new InvalidDataException("Image 'x.jpg' cannot be decoded.");

    private static IEnumerable<int> ParallelFailure()
    {
        Parallel.For(0, 4, i => { if (i == 2) throw new InvalidDataException("bad image"); });
        yield return 0;
    }

    [TestMethod]
    public void DisposingMidStreamStopsAndJoinsTheProducer()
    {
        Thread? producerThread = null;
        bool finallyRan = false;
        IEnumerable<int> Produce(CancellationToken token)
        {
            producerThread = Thread.CurrentThread;
            try
            {
                for (int i = 0; i < 1_000_000; i++) yield return i; // blocks on the full channel, not on the token
            }
            finally { finallyRan = true; }
        }
        var prefetcher = new Prefetcher<int>(Produce, 2, "test producer");
        Assert.IsTrue(prefetcher.TryTake(out _));
        prefetcher.Dispose();
        Assert.IsNotNull(producerThread);
        Assert.IsFalse(producerThread.IsAlive, "the producer's thread outlived Dispose");
        Assert.IsTrue(finallyRan, "the producer's enumerator was not disposed");
        prefetcher.Dispose(); // twice is harmless
        Assert.ThrowsExactly<ObjectDisposedException>(() => prefetcher.TryTake(out _));

        // Leaving a foreach over Items() early disposes nothing by itself; the owner's using does, as the loaders do.
        using (var second = new Prefetcher<int>(Produce, 1, "test producer"))
            foreach (var item in second.Items()) if (item == 3) break;
        Assert.IsFalse(producerThread.IsAlive);
    }
}
