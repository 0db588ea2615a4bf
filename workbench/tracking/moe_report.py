"""End-of-run routing report: each MoE layer's share of assignments per expert, as JSON and a heatmap image."""

from __future__ import annotations

from torch import nn


def expert_load(network: nn.Module) -> dict[str, list[float]]:
    """`layer<i>` -> each expert's share of the layer's routed assignments over all training steps."""
    out = {}
    for m in network.moe_layers():
        load = m.load_total_E.double()
        out[f"layer{m.layer}"] = (load / load.sum().clamp(min=1)).tolist()
    return out


def plot_expert_load(loads: dict[str, list[float]], title: str = "expert load"):
    """Heatmap of layers x experts, colour = share of assignments relative to the uniform 1/E.

    Returns a `matplotlib.figure.Figure` built without pyplot, so the caller's backend (a notebook's inline
    plots) is left alone; show it in Jupyter by evaluating it, or save it with `fig.savefig(path)`.
    """
    import numpy as np
    from matplotlib.figure import Figure

    rows = np.array(list(loads.values()))
    relative = rows * rows.shape[1]  # 1.0 = exactly the uniform share
    fig = Figure(figsize=(max(4.0, 0.25 * rows.shape[1] + 2), 0.5 * rows.shape[0] + 1.5))
    ax = fig.subplots()
    image = ax.imshow(relative, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(2.0, float(relative.max())))
    ax.set_yticks(range(len(loads)), list(loads))
    ax.set_xlabel("expert")
    ax.set_title(f"{title} (load / uniform share)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def log_expert_load(session, network: nn.Module) -> None:
    """Log moe/expert_load.json and moe/expert_load.png to the run of a TrackingSession."""
    loads = expert_load(network)
    session.log_dict(loads, "moe/expert_load.json")
    session.log_figure(plot_expert_load(loads), "moe/expert_load.png")
