"""Training-step cost of the MoE lever: quickstart_moe vs quickstart_dense, side by side in one process.

Forward + backward + AdamW step of each network on the same random token batch, fp32, fixed thread count,
interleaved within each repeat under one allocator setting (benchmarks/README.md), median and IQR of --repeats
after --warmup. Prints one JSON record; `moe_over_dense` is the step-time ratio at (nearly) equal analytic
FLOPs, i.e. what routing and dispatch cost on this machine (target <= 1.10).

    python benchmarks/train_step.py [--threads 2] [--repeats 20] [--allocator fixed]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import harness
import torch
import torch.nn.functional as F

import workbench
from workbench.cost.flops import flops_per_token
from workbench.models import build_model
from workbench.runner import resolve

PRESETS = ("quickstart_dense", "quickstart_moe")


def train_step(cfg, batch_BT: torch.Tensor) -> tuple[Callable[[], None], int]:
    """A forward + backward + AdamW step of the config's model on the batch, and the model's parameter count."""
    model = build_model(cfg.model, cfg.moe, cfg.precision)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x_BT, y_BT = batch_BT[:, :-1], batch_BT[:, 1:]

    def step() -> None:
        logits_BTV, aux = model(x_BT)
        loss = F.cross_entropy(logits_BTV.flatten(0, 1).float(), y_BT.flatten()) + aux.weighted(cfg.moe)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    harness.add_timing_arguments(parser)
    args = parser.parse_args()
    allocator = harness.begin(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    load = harness.LoadMeter()
    record = harness.header(
        "train_step", allocator, warmup=args.warmup, repeats=args.repeats, quick=args.quick
    )
    steps, tokens, fpt = {}, {}, {}
    for name in PRESETS:
        cfg = resolve(workbench.compose(name), vocab_size=257)  # the byte tokenizer's vocabulary
        batch_BT = torch.randint(0, 257, (cfg.data.batch_size, cfg.data.seq_len + 1))
        steps[name], _ = train_step(cfg, batch_BT)
        tokens[name] = cfg.data.batch_size * cfg.data.seq_len
        fpt[name] = flops_per_token(cfg.model, cfg.moe, cfg.data.seq_len)["total"]
    summary = harness.summarize(
        harness.time_interleaved(steps, args.warmup, args.repeats), scale=1.0, unit="s"
    )
    for name in PRESETS:
        median = summary[name]["median_s"]
        record[name] = {
            **summary[name],
            "tokens_per_s": tokens[name] / median,
            "flops_per_token": fpt[name],
            "achieved_flops": fpt[name] * tokens[name] / median,
        }
    dense, moe = (summary[name]["median_s"] for name in PRESETS)
    record["moe_over_dense"] = moe / dense
    record["flops_ratio"] = fpt["quickstart_moe"] / fpt["quickstart_dense"]
    record["targets"] = {"moe_over_dense<=1.10": record["moe_over_dense"] <= 1.10}
    record["load"] = load.record()
    harness.emit(record)


if __name__ == "__main__":
    main()
