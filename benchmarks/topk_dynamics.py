"""Why UniLoss top-20 does not train ResNet-20 on the 100-class MNIST pairs from scratch.

Every 5 steps of the table's recipe (batch 128, SGD lr 0.1 momentum 0.9 wd 1e-4, one thread),
prints the loss (-surrogate), the batch accuracy, how input-dependent the logits are (std across
the batch of each class's logit, averaged over classes), how far apart the classes are (std
across classes of the batch-mean logit) and the gradient norm, for each loss named::

    python benchmarks/topk_dynamics.py uniloss-top20 uniloss-frac20
"""
import sys, torch
from uniloss.experiments.loop import train_epoch
from uniloss.experiments.multiclass import load_digit_pairs, resnet20_for, multiclass_loss
from uniloss.experiments.registry import MNIST_MEAN, MNIST_STD
torch.set_num_threads(1)
splits = load_digit_pairs(None, torch.device("cpu"))


def probe(name):
    torch.manual_seed(0)
    model = resnet20_for(name, num_classes=100, in_channels=1, mean=(MNIST_MEAN,), std=(MNIST_STD,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    fn, mod = multiclass_loss(name, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    seen = {}

    def batches():
        for _ in range(60):
            idx = torch.randint(len(splits.x_train), (128,), generator=g)
            yield splits.x_train[idx], splits.y_train[idx]

    def step_loss(m, batch):
        seen["out"], seen["y"] = m(batch[0]), batch[1]
        return fn(seen["out"], batch[1])

    def grad_norm(step, loss):
        seen["gn"] = sum(float(p.grad.norm()**2) for p in model.parameters() if p.grad is not None) ** 0.5

    def report(step, loss):
        out, y = seen["out"], seen["y"]
        if step % 5 == 0:
            acc = float((out.argmax(1) == y).float().mean())
            print(f"{name} step {step:3d} loss {float(loss.detach()):+.4f} acc {acc:.3f} logit-std-across-batch {float(out.std(0).mean()):.4f} logit-mean-std-across-classes {float(out.mean(0).std()):.4f} grad-norm {seen['gn']:.3f}", flush=True)

    train_epoch(model, opt, batches(), step_loss, on_backward=grad_norm, on_step=report)


for name in sys.argv[1:]:
    probe(name)
