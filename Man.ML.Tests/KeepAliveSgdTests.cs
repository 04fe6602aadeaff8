using Man.ML.Local;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class KeepAliveSgdTests
{
    [TestMethod]
    public void ItStepsExactlyAsTorchSharpsSgdAndSavesTheSameState()
    {
        // The same parameters and gradients through TorchSharp's SGD and through KeepAlive.SGD: bit-identical after every
        // step (Nesterov momentum, weight decay, a parameter without gradient), and the same saved optimizer state.
        static List<Parameter> Parameters()
        {
            manual_seed(4);
            return new() { new Parameter(randn(5, 3)), new Parameter(randn(7)), new Parameter(randn(2, 2)) };
        }
        var a = Parameters();
        var b = Parameters();
        using var reference = optim.SGD(a, 0.1, 0.9, 0, 1e-4, nesterov: true);
        using var safe = new KeepAlive.SGD(b, 0.1, 0.9, 0, 1e-4, nesterov: true);
        for (int step = 0; step < 5; step++)
        {
            manual_seed(10 + step);
            foreach (var (p, q) in a.Zip(b).Take(2))
            {
                using var g = randn(p.shape);
                p.grad = g.clone();
                q.grad = g.clone();
            }
            reference.ParamGroups.First().LearningRate = safe.ParamGroups.First().LearningRate = 0.1 / (step + 1);
            reference.step();
            safe.step();
            foreach (var (p, q) in a.Zip(b))
                Assert.IsTrue(p.eq(q).all().item<bool>(), $"step {step}: parameters differ");
        }
        using var s1 = new MemoryStream();
        using var s2 = new MemoryStream();
        using (var w = new BinaryWriter(s1, System.Text.Encoding.UTF8, leaveOpen: true)) reference.save_state_dict(w);
        using (var w = new BinaryWriter(s2, System.Text.Encoding.UTF8, leaveOpen: true)) safe.save_state_dict(w);
        CollectionAssert.AreEqual(s1.ToArray(), s2.ToArray(), "the saved optimizer state differs");
    }
}
