"""Whole-model training throughput: the workbench MoE vs Hugging Face's MixtralForCausalLM vs the workbench dense.

At identical dimensions and parameter counts (checked: `params`), each candidate takes forward + backward +
AdamW steps on the same random token batch, fp32, a fixed thread count, interleaved within each repeat under
one allocator setting (benchmarks/README.md). Mixtral is built from a `MixtralConfig` (no download) with the
workbench model's sizes: pre-norm RMSNorm, RoPE, no biases, full multi-head attention (as many KV heads as
heads), tied embeddings, top-k of E SwiGLU experts, router aux loss on (`output_router_logits`), as the
workbench MoE computes its aux loss. Every CPU path transformers offers is timed: each experts implementation
(eager, grouped_mm, batched_mm where its per-assignment weight copies fit in memory) with each attention
implementation (sdpa, eager); the ratio is taken against the fastest. The workbench MoE is dropless, so it
computes every assignment as Mixtral does. The dense model has d_ff = top_k x expert width: equal active
compute (the router aside).

Sizes: "issue13" (d 256, 4 layers, 4 heads, 8 experts top-2 of width 512, seq 256, batch 8) and "quickstart"
(quickstart_moe's sizes, dropless). Targets: MoE >= 1.3x the tokens/s of HF's fastest path; MoE/dense
step time <= 1.10.

    python benchmarks/train_model.py [--sizes issue13 quickstart] [--threads 2] [--repeats 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import harness
import torch
from train_step import train_step

import workbench
from workbench.cost.flops import flops_per_token
from workbench.runner import resolve

VOCAB = 257  # the byte tokenizer's vocabulary
SIZES = {
    "issue13": dict(
        d_model=256, n_layers=4, n_heads=4, num_experts=8, top_k=2, expert_hidden=512, seq=256, batch=8
    ),
    "quickstart": dict(
        d_model=128, n_layers=4, n_heads=4, num_experts=8, top_k=2, expert_hidden=256, seq=256, batch=16
    ),
}
HF_ATTENTION = ("sdpa", "eager")


def workbench_config(size: dict, ffn: str):
    overrides = [
        f"model.d_model={size['d_model']}",
        f"model.n_layers={size['n_layers']}",
        f"model.n_heads={size['n_heads']}",
        f"model.d_ff={size['top_k'] * size['expert_hidden']}",
        f"data.seq_len={size['seq']}",
        f"data.batch_size={size['batch']}",
    ]
    if ffn == "moe":
        overrides += [
            f"moe.num_experts={size['num_experts']}",
            f"moe.top_k={size['top_k']}",
            f"moe.expert_hidden={size['expert_hidden']}",
            "moe.dropless=true",
        ]
    preset = "quickstart_moe" if ffn == "moe" else "quickstart_dense"
    return resolve(workbench.compose(preset, overrides), vocab_size=VOCAB)


def mixtral(cfg, attention: str, experts: str):
    from transformers import MixtralConfig, MixtralForCausalLM

    m, moe = cfg.model, cfg.moe
    config = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=m.d_model,
        intermediate_size=moe.expert_hidden,
        num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads,
        num_key_value_heads=m.n_heads,
        max_position_embeddings=cfg.data.seq_len,
        rms_norm_eps=m.norm_eps,
        rope_theta=m.rope_base,
        num_local_experts=moe.num_experts,
        num_experts_per_tok=moe.top_k,
        router_jitter_noise=0.0,
        output_router_logits=True,
        router_aux_loss_coef=moe.aux_loss_weight,
        tie_word_embeddings=m.tie_embeddings,
        attention_dropout=0.0,
        use_cache=False,
        attn_implementation=attention,
        experts_implementation=experts,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config).train()


def workbench_step(cfg, batch_BT: torch.Tensor) -> tuple[Callable[[], None], int]:
    torch.manual_seed(0)  # the same initial weights on every call
    return train_step(cfg, batch_BT)


def hf_step(model, batch_BT: torch.Tensor) -> tuple[Callable[[], None], int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x_BT = batch_BT[:, :-1]

    def step() -> None:
        out = model(
            input_ids=x_BT, labels=x_BT
        )  # shifts the labels itself; adds the aux loss it was asked for
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def batched_mm_bytes(size: dict) -> int:
    """What HF's batched_mm gathers per layer: each assignment's own copy of its expert's weights, fp32."""
    return size["batch"] * size["seq"] * size["top_k"] * 3 * size["expert_hidden"] * size["d_model"] * 4


def run_size(name: str, size: dict, warmup: int, repeats: int) -> dict:
    from workbench.models.moe.interop import hf_experts_backends

    harness.log(f"{name}: {size}")
    moe_cfg, dense_cfg = workbench_config(size, "moe"), workbench_config(size, "dense")
    torch.manual_seed(1)
    batch_BT = torch.randint(0, VOCAB, (size["batch"], size["seq"] + 1))
    steps, params, skipped = {}, {}, {}
    steps["ours_moe"], params["ours_moe"] = workbench_step(moe_cfg, batch_BT)
    steps["ours_dense"], params["ours_dense"] = workbench_step(dense_cfg, batch_BT)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for experts in hf_experts_backends("cpu"):
        for attention in HF_ATTENTION:
            path = f"hf_{experts}_{attention}"
            need = size["n_layers"] * batched_mm_bytes(size) if experts == "batched_mm" else 0
            if 3 * need > available / 3:  # its backward holds about three such copies per layer
                skipped[path] = (
                    f"gathers {need / 1e9:.1f} GB of per-assignment weights; {available / 1e9:.0f} GB free"
                )
                continue
            steps[path], params[path] = hf_step(mixtral(moe_cfg, attention, experts), batch_BT)
    hf_paths = [p for p in steps if p.startswith("hf_")]
    mismatched = {p: n for p, n in params.items() if p != "ours_dense" and n != params["ours_moe"]}
    if mismatched:
        raise SystemExit(
            f"parameter counts differ from the workbench MoE's {params['ours_moe']}: {mismatched}"
        )

    summary = harness.summarize(harness.time_interleaved(steps, warmup, repeats))
    tokens = size["batch"] * size["seq"]
    tokens_per_s = {p: tokens / (s["median_ms"] / 1e3) for p, s in summary.items()}
    hf = harness.against_fastest(summary, "ours_moe", hf_paths)
    moe_over_dense = summary["ours_moe"]["median_ms"] / summary["ours_dense"]["median_ms"]
    fpt = {
        "moe": flops_per_token(moe_cfg.model, moe_cfg.moe, size["seq"])["total"],
        "dense": flops_per_token(dense_cfg.model, dense_cfg.moe, size["seq"])["total"],
    }
    return {
        **size,
        "tokens_per_step": tokens,
        "params": params,
        "timings": summary,
        "tokens_per_s": tokens_per_s,
        "skipped": skipped,
        "hf": hf,
        "moe_over_fastest_hf_tokens_per_s": hf["fastest_over_ours"],
        "moe_over_dense": moe_over_dense,
        "flops_per_token": fpt,
        "flops_ratio": fpt["moe"] / fpt["dense"],
        "targets": {
            "moe>=1.3x_fastest_hf": hf["fastest_over_ours"] >= 1.3,
            "moe_over_dense<=1.10": moe_over_dense <= 1.10,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    harness.add_timing_arguments(parser, quick_help="smoke run: seq 32, batch 2, 1 warm-up, 3 repeats")
    args = parser.parse_args()
    allocator = harness.begin(args)
    sizes = {name: dict(SIZES[name]) for name in args.sizes}
    if args.quick:
        for size in sizes.values():
            size.update(seq=32, batch=2)
    torch.set_num_threads(args.threads)
    import transformers

    load = harness.LoadMeter()
    record = harness.header(
        "train_model",
        allocator,
        warmup=args.warmup,
        repeats=args.repeats,
        dtype="float32",
        quick=args.quick,
        transformers=transformers.__version__,
    )
    record["sizes"] = {name: run_size(name, size, args.warmup, args.repeats) for name, size in sizes.items()}
    record["load"] = load.record()
    record["targets_met"] = all(ok for s in record["sizes"].values() for ok in s["targets"].values())
    harness.emit(record)


if __name__ == "__main__":
    main()
