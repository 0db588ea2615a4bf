"""Training-step cost of the MoE lever: quickstart_moe vs quickstart_dense, side by side in one process.

Forward + backward + AdamW step of each network on the same random token batch, fp32, fixed thread count,
median of --repeats after --warmup. Prints one JSON record; `moe_over_dense` is the step-time ratio at
(nearly) equal analytic FLOPs, i.e. what routing and dispatch cost on this machine.

    python benchmarks/train_step.py [--threads 2] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import workbench
from workbench.cost.flops import flops_per_token
from workbench.models import build_model
from workbench.runner import resolve


def step_times(cfg, batch_BT: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    model = build_model(cfg.model, cfg.moe, cfg.precision)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x_BT, y_BT = batch_BT[:, :-1], batch_BT[:, 1:]
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        logits_BTV, aux = model(x_BT)
        loss = F.cross_entropy(logits_BTV.flatten(0, 1).float(), y_BT.flatten()) + aux.weighted(cfg.moe)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    record: dict = {
        "benchmark": "train_step",
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    medians = {}
    for name in ("quickstart_dense", "quickstart_moe"):
        cfg = resolve(workbench.compose(name), vocab_size=257)  # the byte tokenizer's vocabulary
        batch_BT = torch.randint(0, 257, (cfg.data.batch_size, cfg.data.seq_len + 1))
        times = step_times(cfg, batch_BT, args.warmup, args.repeats)
        tokens = cfg.data.batch_size * cfg.data.seq_len
        fpt = flops_per_token(cfg.model, cfg.moe, cfg.data.seq_len)["total"]
        medians[name] = statistics.median(times)
        q = statistics.quantiles(times, n=4)
        record[name] = {
            "median_s": medians[name],
            "iqr_s": q[2] - q[0],
            "tokens_per_s": tokens / medians[name],
            "flops_per_token": fpt,
            "achieved_flops": fpt * tokens / medians[name],
        }
    record["moe_over_dense"] = medians["quickstart_moe"] / medians["quickstart_dense"]
    record["flops_ratio"] = (
        record["quickstart_moe"]["flops_per_token"] / record["quickstart_dense"]["flops_per_token"]
    )
    print(json.dumps(record))


if __name__ == "__main__":
    main()
