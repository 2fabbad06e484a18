"""Screen v29: a balanced-accuracy loss call with and without the metric-weighted pull (UNILOSS_RUN_WEIGHTS)."""
import os, sys, time, statistics
sys.path.insert(0, 'src')  # run from a checkout with patch.diff applied
import torch, uniloss
from uniloss import zoo
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
s0, y = torch.randn(128, 10, generator=g), torch.randint(0, 10, (128,), generator=g)
fn = uniloss.UniLoss(zoo.balanced_accuracy(10), validate_args=False, generator=torch.Generator().manual_seed(0))
times = {"off": [], "on": []}
for i in range(200):
    for k in ("off", "on"):
        os.environ["UNILOSS_RUN_WEIGHTS"] = "1" if k == "on" else ""
        x = s0.clone().requires_grad_(); t = time.perf_counter(); fn(x, y).backward(); times[k].append(time.perf_counter() - t)
m = {k: statistics.median(v[40:]) for k, v in times.items()}
print(f"balanced_accuracy(10) 128x10: uniform {1e3*m['off']:.2f} ms, metric-weighted {1e3*m['on']:.2f} ms ({m['on']/m['off']:.2f}x)")
