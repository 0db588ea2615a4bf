"""One MoE layer, forward + backward: ours vs a dense SwiGLU FFN of equal active FLOPs vs Hugging Face's Mixtral block.

All candidates run side by side in one process on the same input and upstream gradient, fp32, a fixed thread
count, interleaved within each repeat (in a rotating order) so machine noise hits them alike; the record holds
the median of --repeats after --warmup. Our layer is dropless, so it routes exactly as the Mixtral block that
holds its weights (checked before timing: `max_abs_diff_vs_hf`). Each of our experts backends is timed; "ours"
is the one `backend="auto"` picks. Prints one JSON record on stdout; progress goes to stderr.

The allocator is fixed for the whole process (benchmarks/README.md, harness.set_allocator); `--allocator
glibc-default` shows what glibc's dynamic mmap threshold does to each side.

    python benchmarks/moe_layer.py [--threads 2] [--repeats 20] [--warmup 3] [--quick] [--allocator fixed]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import harness
import torch

from workbench.config.schema import MoEConfig
from workbench.models.ffn import DenseFFN
from workbench.models.moe import MoELayer
from workbench.models.moe.interop import hf_experts_backends, set_hf_experts_backend, to_hf_mixtral_block

D_MODEL = 512
CASES = {
    "E8_k2": dict(num_experts=8, top_k=2, expert_hidden=1024),
    "E64_k8": dict(num_experts=64, top_k=8, expert_hidden=256),
}
INIT_STD = 0.02  # GPT-2 init, as the model gives its FFNs; the router's scores start near uniform
OUR_BACKENDS = ("loop", "grouped_mm")


def fwd_bwd(
    module: torch.nn.Module, forward: Callable, x: torch.Tensor, g: torch.Tensor
) -> Callable[[], None]:
    """One timed step: forward, backward of sum(y * g) into the input and every weight."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        forward(x).backward(g)

    return step


def batched_mm_bytes(num_tokens: int, top_k: int, hidden: int) -> int:
    """What HF's batched_mm gathers: each assignment's own copy of its expert's up and down weights, fp32."""
    return num_tokens * top_k * 3 * hidden * D_MODEL * 4


def build_candidates(case: dict, num_tokens: int) -> tuple[dict[str, Callable[[], None]], dict, dict]:
    """name -> step for each candidate, names skipped with why, and the checks run before timing."""
    top_k, hidden = case["top_k"], case["expert_hidden"]
    torch.manual_seed(0)
    layer = MoELayer(D_MODEL, MoEConfig(**case, dropless=True))
    dense = DenseFFN(D_MODEL, top_k * hidden)  # same active FLOPs: k experts of width F = one FFN of k*F
    for p in (*layer.parameters(), *dense.parameters()):
        torch.nn.init.normal_(p, std=INIT_STD)
    block = to_hf_mixtral_block(layer)
    x_TD = torch.randn(num_tokens, D_MODEL, requires_grad=True)
    g_TD = torch.randn(num_tokens, D_MODEL)

    def ours(backend: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            layer.experts.backend = backend
            return layer(x)[0]

        return forward

    def hf(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            set_hf_experts_backend(block, name)
            return block(x[None])[0]

        return forward

    steps = {f"ours_{b}": fwd_bwd(layer, ours(b), x_TD, g_TD) for b in OUR_BACKENDS}
    steps["dense"] = fwd_bwd(dense, lambda x: dense(x)[0], x_TD, g_TD)
    skipped = {}
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for name in hf_experts_backends("cpu"):
        need = batched_mm_bytes(num_tokens, top_k, hidden) if name == "batched_mm" else 0
        if 3 * need > available / 3:  # its backward holds about three such copies
            skipped[f"hf_{name}"] = (
                f"gathers {need / 1e9:.1f} GB of per-assignment weights; {available / 1e9:.0f} GB free"
            )
            continue
        steps[f"hf_{name}"] = fwd_bwd(block, hf(name), x_TD, g_TD)

    with torch.no_grad():
        y_ours = ours("auto")(x_TD)
        y_hf = hf("eager")(x_TD)
    checks = {
        # Dropless: the experts see A = T*k rows, which is what "auto" decides on.
        "ours_backend": layer.experts.resolved_backend(x_TD.new_empty(num_tokens * top_k, D_MODEL)),
        "max_abs_diff_vs_hf": float((y_ours - y_hf).abs().max()),
        "output_rms": float(y_ours.pow(2).mean().sqrt()),
    }
    layer.experts.backend = "auto"
    return steps, skipped, checks


def run_case(name: str, case: dict, num_tokens: int, warmup: int, repeats: int) -> dict:
    harness.log(f"{name}: {case}, T={num_tokens}")
    steps, skipped, checks = build_candidates(case, num_tokens)
    summary = harness.summarize(harness.time_interleaved(steps, warmup, repeats))
    ours = f"ours_{checks['ours_backend']}"
    hf_paths = [n for n in summary if n.startswith("hf_")]
    hf = harness.against_fastest(summary, ours, hf_paths)
    median = {n: s["median_ms"] for n, s in summary.items()}
    record = {
        **case,
        "dense_hidden": case["top_k"] * case["expert_hidden"],
        **checks,
        "ours": ours,
        "timings": summary,
        "skipped": skipped,
        "ours_over_dense": median[ours] / median["dense"],
        "hf": hf,
        **{f"{n}_over_ours": median[n] / median[ours] for n in hf_paths},
    }
    if name == "E8_k2":
        record["targets"] = {
            "ours_over_dense<=1.02": record["ours_over_dense"] <= 1.02,
            "ours<=fastest_hf": hf["ours_over_fastest"] <= 1.0,
        }
    elif name == "E64_k8":
        record["targets"] = {
            "ours_over_dense<=1.15": record["ours_over_dense"] <= 1.15,
            "hf_eager_over_ours>=3": record["hf_eager_over_ours"] >= 3.0,
            "ours<=fastest_hf": hf["ours_over_fastest"] <= 1.0,
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=list(CASES))
    harness.add_timing_arguments(parser, quick_help="smoke run: 64 tokens, 1 warm-up, 3 repeats")
    args = parser.parse_args()
    allocator = harness.begin(args)
    if args.quick:
        args.tokens = 64
    torch.set_num_threads(args.threads)
    import transformers  # interop imports it lazily; its version goes in the record

    load = harness.LoadMeter()
    record = harness.header(
        "moe_layer",
        allocator,
        warmup=args.warmup,
        repeats=args.repeats,
        tokens=args.tokens,
        d_model=D_MODEL,
        dtype="float32",
        quick=args.quick,
        transformers=transformers.__version__,
    )
    record["cases"] = {
        name: run_case(name, CASES[name], args.tokens, args.warmup, args.repeats) for name in args.cases
    }
    record["load"] = load.record()
    record["targets_met"] = all(
        ok for case in record["cases"].values() for ok in case.get("targets", {}).values()
    )
    harness.emit(record)


if __name__ == "__main__":
    main()
