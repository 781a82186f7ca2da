"""Reference values for OptimizationTests: torch.optim.AdamW and clip_grad_norm_ on small fp32 tensors.

Run with /usr/bin/python3 (torch 1.13): prints the parameters after each step, as fp32 written with 9 significant
digits, which the C# test compares against.
"""
import torch

torch.set_printoptions(precision=9)
p0 = [0.5, -1.25, 2.0, 0.0, 3.5, -0.75]
grads = [
    [0.1, -0.2, 0.3, -0.4, 0.5, 1e-6],
    [-0.05, 0.4, 0.0, 0.2, -0.7, 2.0],
    [0.3, 0.3, -0.3, 0.3, 0.0, -1.5],
]
for wd in (0.0, 0.1):
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    opt = torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, foreach=False)
    lrs = [0.01, 0.02, 0.005]
    for step, g in enumerate(grads):
        for group in opt.param_groups:
            group["lr"] = lrs[step]
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        print(f"wd={wd} step={step + 1}:", ", ".join(f"{v:.9g}f" for v in p.detach().tolist()))
    st = opt.state[p]
    print(f"wd={wd} exp_avg:", ", ".join(f"{v:.9g}f" for v in st["exp_avg"].tolist()))
    print(f"wd={wd} exp_avg_sq:", ", ".join(f"{v:.9g}f" for v in st["exp_avg_sq"].tolist()))

g = torch.nn.Parameter(torch.zeros(4))
g.grad = torch.tensor([3.0, 4.0, 0.0, 12.0])
norm = torch.nn.utils.clip_grad_norm_([g], 6.5)
print("clip norm:", f"{norm.item():.9g}", "grads:", ", ".join(f"{v:.9g}f" for v in g.grad.tolist()))
