"""Routers: which experts each token goes to, and with what combine weight.

Every router maps x_TD to a `Routing`; dispatch, experts and losses only read that, so a new router is a new
class here plus a name in `ROUTERS`. Routers run in their own dtypes (`RouterDtypes`), fp32 by default under
any autocast (Switch, Fedus et al. 2021, sec. 2.4 "selective precision").

Shape legend:
    T  tokens in the micro-batch (batch * sequence, flattened)
    D  model width
    E  routed experts
    K  experts chosen per token (top_k)
    G  expert groups (group-limited routing)
    C  tokens per expert (expert choice)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.config import ConfigError
from workbench.config.choices import RouterType
from workbench.config.schema import MoEConfig, RouterConfig
from workbench.models.moe.dispatch import DispatchPlan, compute_dtype, plan_expert_choice
from workbench.models.moe.shape import MoEShape

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RouterDtypes:
    """Dtype of each router stage (names from DTYPES, or "compute"); the four stages of a router-precision audit."""

    param: str = "fp32"  # storage of the router weight
    logits: str = "fp32"  # the projection x @ W
    scores: str = "fp32"  # softmax / sigmoid, bias, top-k, the losses
    combine: str = "fp32"  # combine weights and the weighted sum of expert outputs

    def of(self, stage: str, x: Tensor) -> torch.dtype:
        name = getattr(self, stage)
        return compute_dtype(x) if name == "compute" else DTYPES[name]


@dataclass
class Routing:
    """A router's decision for one micro-batch.

    Token-choice routers fill experts_TK/weights_TK and leave capacity to dispatch; expert choice makes the
    assignments itself and fills `plan`.
    """

    scores_TE: Tensor  # each token's distribution over experts (rows sum to 1): the P of the balancing losses
    logits_TE: Tensor | None  # raw router logits (z-loss, logsumexp); None for routers without parameters
    experts_TK: Tensor | None = None  # long: chosen experts, best first
    weights_TK: Tensor | None = None  # combine weights, in the combine dtype
    plan: DispatchPlan | None = None  # expert choice: the kept assignments
    flip_rate: Tensor | None = (
        None  # share of tokens routed differently than by an fp32 router (reduced precision)
    )


class Router(nn.Module):
    """Base: dtype policy, the aux-loss-free bias, and keeping fp32 state fp32 when the model is cast."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig, dtypes: RouterDtypes):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.cfg = cfg
        self.dtypes = dtypes
        self.bias_rate = cfg.bias_update_rate
        if self.bias_rate > 0:
            # Selection-only expert bias (Wang et al. 2024, sec. 3) and the loads seen since its last update.
            self.register_buffer("bias_E", torch.zeros(num_experts, dtype=torch.float32))
            self.register_buffer("pending_load_E", torch.zeros(num_experts, dtype=torch.float32))

    def _apply(self, fn, recurse: bool = True):
        # A whole-model cast (e.g. Lightning's bf16-true) must not round the fp32 router weight or the bias: keep
        # the original values and dtype, follow only the device.
        keep = {}
        if self.dtypes.param != "compute":
            keep.update(
                {
                    n: (p.detach(), DTYPES[self.dtypes.param])
                    for n, p in self._parameters.items()
                    if p is not None
                }
            )
        keep.update(
            {
                n: (b, torch.float32)
                for n, b in self._buffers.items()
                if b is not None and b.is_floating_point()
            }
        )
        super()._apply(fn, recurse)
        for name, (old, dtype) in keep.items():
            new = self._parameters[name] if name in self._parameters else self._buffers[name]
            if new.dtype != dtype:
                restored = old.detach().to(device=new.device, dtype=dtype)
                if name in self._parameters:
                    self._parameters[name].data = restored
                else:
                    self._buffers[name] = restored
        return self

    def observe(self, routed_E: Tensor) -> None:
        """Record a training micro-batch's routed load for the next bias update."""
        if self.bias_rate > 0:
            self.pending_load_E += routed_E.detach().float()

    @torch.no_grad()
    def update_bias(self) -> None:
        """b_i += rate * sign(mean load - load_i) over the loads since the last update (Wang et al. 2024, eq. 4)."""
        if self.bias_rate <= 0:
            return
        load_E = self.pending_load_E.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(
                load_E
            )  # the global batch's load, as DeepSeek-V3 and Megatron count it
        if load_E.sum() == 0:
            return
        error_E = load_E.mean() - load_E
        if self.cfg.bias_update == "sign":
            self.bias_E += self.bias_rate * torch.sign(error_E)
        else:
            self.bias_E += self.bias_rate * error_E / load_E.mean()
        if self.cfg.bias_center:
            self.bias_E -= self.bias_E.mean()  # torchtitan: same selection, bias stays near the score scale
        self.pending_load_E.zero_()

    def bias_range(self) -> float | None:
        return float(self.bias_E.max() - self.bias_E.min()) if self.bias_rate > 0 else None


class TopKRouter(Router):
    """Token choice: each token picks its top-k experts by score (GShard; Mixtral; DeepSeek-V2/V3 options).

    Scores are a softmax over all experts (optionally after the top-k, over the chosen logits only) or
    independent sigmoids. Selection may add the aux-free bias and be limited to the best groups; the combine
    weights always come from the unbiased scores, optionally renormalised over the k and scaled.
    """

    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig, dtypes: RouterDtypes):
        super().__init__(d_model, num_experts, top_k, cfg, dtypes)
        self.w_ED = nn.Parameter(
            torch.empty(num_experts, d_model, dtype=self._param_dtype())
        )  # no bias (Switch)
        self.softmax_after_topk = cfg.softmax_after_topk

    def _param_dtype(self) -> torch.dtype | None:
        return None if self.dtypes.param == "compute" else DTYPES[self.dtypes.param]

    def logits(self, x_TD: Tensor, dtype: torch.dtype) -> Tensor:
        if self.training and self.cfg.jitter_eps > 0:
            eps = self.cfg.jitter_eps  # Switch (Fedus et al. 2021), Table 11: multiplicative input jitter
            x_TD = x_TD * torch.empty_like(x_TD).uniform_(1.0 - eps, 1.0 + eps)
        return F.linear(x_TD.to(dtype), self.w_ED.to(dtype))

    def forward(
        self, x_TD: Tensor, token_ids_T: Tensor | None = None, capacity: int | None = None
    ) -> Routing:
        # Resolve "compute" while autocast is still on; then autocast off: it would cast fp32 operands to half.
        logits_dt, scores_dt, combine_dt = (self.dtypes.of(s, x_TD) for s in ("logits", "scores", "combine"))
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = self.logits(x_TD, logits_dt)
            s_TE = logits_TE.to(scores_dt)
            scores_TE, probs_TE, experts_TK = self._choose(s_TE)
            if self.softmax_after_topk:
                weights_TK = s_TE.gather(1, experts_TK).softmax(dim=-1)  # Shazeer et al. 2017, eq. 3
            else:
                weights_TK = scores_TE.gather(1, experts_TK)
                if self.cfg.normalize_top_k and self.top_k > 1:
                    weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
            weights_TK = (weights_TK * self.cfg.route_scale).to(combine_dt)
            flip_rate = self._flip_rate(x_TD, experts_TK, (logits_dt, scores_dt))
        return Routing(probs_TE, logits_TE, experts_TK, weights_TK, flip_rate=flip_rate)

    def _choose(self, s_TE: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From logits (in the scores dtype): the scores, each token's distribution over experts, and the chosen
        experts (selection adds the aux-free bias and the group limit)."""
        if self.cfg.score == "sigmoid":
            scores_TE = torch.sigmoid(s_TE)  # DeepSeek-V3 eq. 15
            probs_TE = scores_TE / scores_TE.sum(
                dim=-1, keepdim=True
            )  # DeepSeek-V3 eq. 20: P from normalised s
            select_TE = scores_TE
        else:
            scores_TE = probs_TE = s_TE.softmax(dim=-1)
            select_TE = s_TE if self.softmax_after_topk else scores_TE
        if self.bias_rate > 0:
            select_TE = select_TE + self.bias_E.to(select_TE.dtype)  # selection only (DeepSeek-V3 eq. 16)
        if self.cfg.num_groups > 1:
            select_TE = limit_groups(
                select_TE, self.cfg.num_groups, self.cfg.group_top_k, self.cfg.group_score
            )
        return scores_TE, probs_TE, select_TE.topk(self.top_k, dim=-1).indices

    @torch.no_grad()
    def _flip_rate(self, x_TD: Tensor, experts_TK: Tensor, dtypes: tuple[torch.dtype, ...]) -> Tensor | None:
        """Share of tokens whose set of chosen experts differs from what an all-fp32 router picks on the same
        input: what a reduced-precision router policy costs in routing decisions. None when the router is
        already fp32 (or wider), or when training noise makes the two draws incomparable."""
        low = {torch.bfloat16, torch.float16}
        if not (low & {*dtypes, self.w_ED.dtype}):
            return None
        if self.training and (self.cfg.jitter_eps > 0 or isinstance(self, NoisyTopKRouter)):
            return None
        _, _, reference_TK = self._choose(F.linear(x_TD.float(), self.w_ED.float()))
        same_T = (experts_TK.sort(dim=-1).values == reference_TK.sort(dim=-1).values).all(dim=-1)
        return 1.0 - same_T.float().mean()


class SwitchRouter(TopKRouter):
    """Switch Transformer top-1 (Fedus et al. 2021): softmax, argmax, weight = the chosen probability."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig, dtypes: RouterDtypes):
        if top_k != 1:
            raise ValueError(f"the switch router routes each token to 1 expert, got top_k={top_k}")
        super().__init__(d_model, num_experts, top_k, cfg, dtypes)


class NoisyTopKRouter(TopKRouter):
    """Noisy top-k gating (Shazeer et al. 2017, eq. 3-5): H = xW_g + N(0,1) * softplus(xW_noise) in training,
    top-k of H, softmax over the k. The noise scale is learned per expert and token."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig, dtypes: RouterDtypes):
        super().__init__(d_model, num_experts, top_k, cfg, dtypes)
        self.w_noise_ED = nn.Parameter(torch.empty(num_experts, d_model, dtype=self._param_dtype()))
        self.softmax_after_topk = True

    def logits(self, x_TD: Tensor, dtype: torch.dtype) -> Tensor:
        clean_TE = super().logits(x_TD, dtype)
        if not self.training:
            return clean_TE
        dtype = clean_TE.dtype
        std_TE = F.softplus(F.linear(x_TD.to(dtype), self.w_noise_ED.to(dtype)))  # Shazeer et al. 2017, eq. 4
        return clean_TE + torch.randn_like(clean_TE) * std_TE


class ExpertChoiceRouter(Router):
    """Expert choice (Zhou et al. 2022): softmax over experts per token, then each expert takes the C tokens
    with the highest score for it. Balanced by construction; a token may get 0..E experts. In a causal LM it
    sees the whole micro-batch, later tokens included (README, "MoE")."""

    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig, dtypes: RouterDtypes):
        super().__init__(d_model, num_experts, top_k, cfg, dtypes)
        dtype = None if dtypes.param == "compute" else DTYPES[dtypes.param]
        self.w_ED = nn.Parameter(torch.empty(num_experts, d_model, dtype=dtype))

    def forward(
        self, x_TD: Tensor, token_ids_T: Tensor | None = None, capacity: int | None = None
    ) -> Routing:
        if capacity is None:
            raise ValueError("expert choice needs a capacity (tokens per expert)")
        logits_dt, scores_dt, combine_dt = (self.dtypes.of(s, x_TD) for s in ("logits", "scores", "combine"))
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.to(logits_dt), self.w_ED.to(logits_dt))
            scores_TE = logits_TE.to(scores_dt).softmax(dim=-1)  # Zhou et al. 2022, eq. 1
            weight_EC, token_EC = scores_TE.t().topk(capacity, dim=-1)  # eq. 2: I, G = TopK(S^T, C)
            weight_EC = weight_EC * self.cfg.route_scale
        plan = plan_expert_choice(token_EC, weight_EC.to(combine_dt))
        return Routing(scores_TE, logits_TE, plan=plan)


def _uniform_routing(experts_TK: Tensor, num_experts: int, x_TD: Tensor, dtypes: RouterDtypes, scale: float):
    """Routing for parameter-free routers: weight 1/k per chosen expert; `scores` is that same distribution."""
    k = experts_TK.shape[1]
    scores_TE = torch.zeros(experts_TK.shape[0], num_experts, device=x_TD.device).scatter_(
        1, experts_TK, 1.0 / k
    )
    weights_TK = torch.full(experts_TK.shape, scale / k, device=x_TD.device, dtype=dtypes.of("combine", x_TD))
    return Routing(scores_TE, None, experts_TK, weights_TK)


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer mixing function (two multiply-xorshift rounds) on int64 tensors holding values < 2**32."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


class HashRouter(Router):
    """Hash layer control (Roller et al. 2021): a fixed pseudo-random map from token id to k distinct experts,
    uniform weights, nothing learned. Deterministic across runs and machines (no Python hash())."""

    def forward(
        self, x_TD: Tensor, token_ids_T: Tensor | None = None, capacity: int | None = None
    ) -> Routing:
        if token_ids_T is None:
            raise ValueError("the hash router needs the token ids (pass token_ids_T)")
        ids_T1 = token_ids_T.reshape(-1, 1).long()
        e_1E = torch.arange(self.num_experts, device=x_TD.device).view(1, -1)
        key_TE = _mix32((ids_T1 * self.num_experts + e_1E + self.cfg.seed * 0x9E3779B1) & 0xFFFFFFFF)
        experts_TK = key_TE.topk(self.top_k, dim=-1).indices
        return _uniform_routing(experts_TK, self.num_experts, x_TD, self.dtypes, self.cfg.route_scale)


class RandomRouter(Router):
    """Uniform random routing control: k distinct experts drawn afresh for every token; at evaluation the draw is
    seeded (router.seed + layer) so validation is repeatable."""

    def __init__(self, *args, layer: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer = layer

    def forward(
        self, x_TD: Tensor, token_ids_T: Tensor | None = None, capacity: int | None = None
    ) -> Routing:
        generator = None
        if not self.training:
            generator = torch.Generator(device=x_TD.device).manual_seed(self.cfg.seed * 1000 + self.layer)
        noise_TE = torch.rand(x_TD.shape[0], self.num_experts, device=x_TD.device, generator=generator)
        experts_TK = noise_TE.topk(self.top_k, dim=-1).indices
        return _uniform_routing(experts_TK, self.num_experts, x_TD, self.dtypes, self.cfg.route_scale)


def limit_groups(select_TE: Tensor, num_groups: int, group_top_k: int | None, how: str) -> Tensor:
    """Mask experts outside each token's best `group_top_k` groups to -inf (DeepSeek-V2 eq. 9-10; V3 sec. 2.1.2).

    Groups are contiguous blocks of E/G experts; a group's score is its best expert's (`max`, V2) or the sum of
    its best two (`top2_sum`, V3's released code).
    """
    if group_top_k is None or group_top_k >= num_groups:
        return select_TE
    T, E = select_TE.shape
    per_group = E // num_groups
    grouped_TGe = select_TE.view(T, num_groups, per_group)
    if how == "max":
        group_TG = grouped_TGe.max(dim=-1).values
    else:
        group_TG = grouped_TGe.topk(min(2, per_group), dim=-1).values.sum(dim=-1)
    keep_TG = torch.zeros_like(group_TG, dtype=torch.bool).scatter_(
        1, group_TG.topk(group_top_k, dim=-1).indices, True
    )
    return select_TE.masked_fill(~keep_TG.repeat_interleave(per_group, dim=1), float("-inf"))


# One line per router: `moe.router.type` (workbench.config.choices.RouterType) -> its class.
ROUTERS: dict[RouterType, type[Router]] = {
    RouterType.topk: TopKRouter,
    RouterType.switch: SwitchRouter,
    RouterType.noisy_topk: NoisyTopKRouter,
    RouterType.expert_choice: ExpertChoiceRouter,
    RouterType.hash: HashRouter,
    RouterType.random: RandomRouter,
}


def build_router(
    d_model: int, num_experts: int, top_k: int, cfg: RouterConfig, dtypes: RouterDtypes, layer: int = 0
):
    kwargs = {"layer": layer} if cfg.type == "random" else {}
    return ROUTERS[RouterType(cfg.type)](d_model, num_experts, top_k, cfg, dtypes, **kwargs)


def validate_router(moe: MoEConfig, shape: MoEShape) -> None:
    """The router's rules, given the routed shape (`moe.router.*`, and the capacity settings it depends on)."""
    r = moe.router
    routed_k, experts = shape.top_k, shape.num_experts
    if r.type == "switch" and routed_k != 1:
        raise ConfigError(
            f"moe.router.type=switch routes to 1 expert; got {routed_k} routed experts per token (moe.top_k)"
        )
    if r.softmax_after_topk and r.score != "softmax":
        raise ConfigError("moe.router.softmax_after_topk=true needs moe.router.score=softmax")
    if r.type in ("noisy_topk", "expert_choice") and r.score != "softmax":
        raise ConfigError(
            f"moe.router.score={r.score!r} with moe.router.type={r.type}: only softmax is allowed"
        )
    if r.type in ("expert_choice", "hash", "random"):
        for key, off in (("bias_update_rate", 0.0), ("num_groups", 1), ("jitter_eps", 0.0)):
            if getattr(r, key) != off:
                raise ConfigError(
                    f"moe.router.{key}={getattr(r, key)} does not apply to moe.router.type={r.type}; set it to {off}"
                )
    if r.type == "expert_choice":
        if moe.dropless:
            raise ConfigError(
                "moe.dropless=true with moe.router.type=expert_choice: each expert always takes "
                "C = T*top_k/E*capacity_factor tokens; set moe.dropless=false"
            )
        if moe.seq_aux_loss_weight > 0:
            raise ConfigError("moe.seq_aux_loss_weight > 0 needs a token-choice router (not expert_choice)")
    if experts % r.num_groups:
        raise ConfigError(
            f"moe.router.num_groups={r.num_groups} must divide the {experts} routed experts "
            f"(moe.num_experts * moe.segmentation)"
        )
    if r.group_top_k is not None:
        if not 1 <= r.group_top_k <= r.num_groups:
            raise ConfigError(
                f"moe.router.group_top_k={r.group_top_k} must be in 1..moe.router.num_groups={r.num_groups}"
            )
        if r.group_top_k * (experts // r.num_groups) < routed_k:
            raise ConfigError(
                f"moe.router.group_top_k={r.group_top_k} groups of {experts // r.num_groups} experts cannot hold "
                f"the {routed_k} experts each token picks"
            )
