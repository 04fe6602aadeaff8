// torch.optim.SGD (TorchSharp's), with a step that keeps its Scalars alive through the native calls that use them.
//
// TorchSharp 0.107 passes a Scalar to libtorch as a bare handle and does not keep the managed object alive during the
// call; a Scalar converted implicitly from a double (`p.add_(g, alpha: -lr)`) is garbage the moment its handle is read.
// Once the method is optimised by the JIT (tier 1: any hot method), a garbage collection started by another thread
// during the native call can finalize the Scalar, whose finalizer deletes the native object libtorch is about to read
// (docs/BACKEND.md shows this happen). SGD's step makes five such Scalars per parameter per step, the hottest path there
// is. Here they are made once per step, held in locals that outlive every call, and disposed at the end; the update,
// its order of operations and its state (momentum buffers, save/load format) are TorchSharp's SGD's exactly. (The class is
// called SGD because TorchSharp writes the optimizer's type name into saved state and checks it on load: run checkpoints
// written before and after stay interchangeable.)
using TorchSharp.Modules;

namespace Man.ML.Local;

/// <summary>Optimizers whose steps keep their Scalars alive.</summary>
internal static class KeepAlive
{
    /// <summary>SGD with momentum, weight decay and Nesterov, as TorchSharp's, safe against the Scalar finalizer race.</summary>
    internal sealed class SGD : TorchSharp.Modules.SGD
    {
        public SGD(IEnumerable<Parameter> parameters, double lr, double momentum, double dampening, double weightDecay, bool nesterov)
            : base(parameters, lr, momentum, dampening, weightDecay, nesterov) { }

        public override Tensor step(Func<Tensor>? closure = null) => _step<ParamGroup>(group =>
        {
            var options = group.Options;
            double momentum = options.momentum!.Value, dampening = options.dampening!.Value, weightDecay = options.weight_decay!.Value;
            bool nesterov = options.nesterov!.Value;
            double lr = options.LearningRate!.Value;
            using var decay = weightDecay.ToScalar();
            using var mu = momentum.ToScalar();
            using var keep = (1 - dampening).ToScalar();
            using var alpha = (options.maximize!.Value ? lr : -lr).ToScalar();
            foreach (var param in group.Parameters)
            {
                var grad = param.grad;
                if (grad is null) continue;
                var state = (State)_state[param.Handle];
                if (weightDecay != 0) grad = grad.add(param, decay);
                if (momentum != 0)
                {
                    var buffer = state.momentum_buffer;
                    if (buffer is null) buffer = grad.clone().detach().DetachFromDisposeScope();
                    else buffer.mul_(mu).add_(grad, keep);
                    grad = nesterov ? grad.add(buffer, mu) : buffer;
                    state.momentum_buffer = buffer;
                }
                param.add_(grad, alpha);
            }
        }, closure);
    }
}
