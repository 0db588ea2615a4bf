"""End-of-run routing report: each MoE layer's share of assignments per expert, as JSON and a heatmap image."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def expert_load(network: nn.Module) -> dict[str, list[float]]:
    """`layer<i>` -> each expert's share of the layer's routed assignments over all training steps."""
    out = {}
    for m in network.moe_layers():
        load = m.load_total_E.double()
        out[f"layer{m.layer}"] = (load / load.sum().clamp(min=1)).tolist()
    return out


def plot_expert_load(loads: dict[str, list[float]], path: str | Path, title: str = "expert load") -> Path:
    """Heatmap of layers x experts, colour = share of assignments relative to the uniform 1/E."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = np.array(list(loads.values()))
    relative = rows * rows.shape[1]  # 1.0 = exactly the uniform share
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * rows.shape[1] + 2), 0.5 * rows.shape[0] + 1.5))
    image = ax.imshow(relative, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(2.0, float(relative.max())))
    ax.set_yticks(range(len(loads)), list(loads))
    ax.set_xlabel("expert")
    ax.set_title(f"{title} (load / uniform share)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_expert_load(client, run_id: str, network: nn.Module, out_dir: Path) -> None:
    """Log moe/expert_load.json and moe/expert_load.png to the MLflow run."""
    loads = expert_load(network)
    client.log_dict(run_id, loads, "moe/expert_load.json")
    image = plot_expert_load(loads, Path(out_dir) / "expert_load.png")
    client.log_artifact(run_id, str(image), "moe")
