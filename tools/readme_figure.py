"""Draw README's picture, docs/scalings.png: c_skip and c_out over σ for every scaling (needs matplotlib).

Run from the repo root: python tools/readme_figure.py
"""
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from diffexplore.scalings import SCALINGS, scaling_curves

sig = torch.logspace(-3, 3, 300)
curves = scaling_curves({k: v() for k, v in SCALINGS.items()}, sig)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for name, c in curves.items():
    axes[0].plot(sig, c["c_skip"], label=name)
    axes[1].plot(sig, c["c_out"].abs(), label=name)
axes[0].set(xscale="log", xlabel="σ", title="c_skip(σ): how much of x_t passes through")
axes[1].set(xscale="log", yscale="log", xlabel="σ", title="|c_out(σ)|: the scale of the network's output")
axes[1].legend(fontsize=8)
for ax in axes: ax.grid(alpha=0.3)
fig.tight_layout(); fig.savefig("docs/scalings.png", dpi=110)
print("wrote docs/scalings.png")
