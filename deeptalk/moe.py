"""The mixture-of-experts feed-forward layer with modality groups.

    x ─┬─ shared experts (always on) ──────────────────────────────────┐
       └─ router: logits → [mask groups → -inf] → softmax → top-k ──> Σ_k w_k · expert_k(x) ─┴─> out

Routed experts are fine-grained SwiGLU MLPs (slices of a dense FFN after upcycling). Each
routed expert belongs to the speech group or the text group (the config's modality map);
the router can be restricted to one group for all tokens ("masked" training stages) or per
token by its modality ("modality" routing). The DeepSeek expert-level balance loss is
computed over the experts each token could reach.

Routing statistics (which experts each token picked, split by token modality) are summed
into `MoEFeedForward.stats` while `stats` is a tensor — `deeptalk.experts` uses this to
measure modality load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .config import DeepTalkConfig

TEXT, SPEECH, ANSWER = 0, 1, 2   # token modalities (deeptalk/sequence.py)

# How many parameters have been registered on any module in this process: a cached list of
# expert weights is stale once a weight was replaced (MoEFeedForward._expert_params).
_registrations = [0]


def _count_registration(module, name, param):
    _registrations[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)) — the Llama MLP; experts are narrow copies of it."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Linear scores over routed experts, softmax (in fp32), optional group mask, top-k."""

    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None, top_k: int):
        """x [N, H]; allowed [N, E] bool or None. Returns probs [N, E], topk_prob, topk_idx [N, k]."""
        logits = F.linear(x.float(), self.weight.float())
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        probs = logits.softmax(dim=-1)
        topk_prob, topk_idx = probs.topk(top_k, dim=-1)
        return probs, topk_prob, topk_idx


class MoEFeedForward(nn.Module):
    def __init__(self, config: DeepTalkConfig, moe_idx: int):
        super().__init__()
        self.moe_idx = moe_idx
        self.num_experts = config.num_routed_experts
        self.top_k = config.num_experts_per_tok
        self.gate_mode = config.gate_mode
        self.scaling = config.routed_scaling_factor
        self.aux_alpha = config.aux_loss_alpha
        self.routing_mode = config.routing_mode
        h, i = config.hidden_size, config.expert_intermediate_size
        self.router = Router(h, self.num_experts)
        self.experts = nn.ModuleList(SwiGLU(h, i, config.hidden_act, config.mlp_bias) for _ in range(self.num_experts))
        self.shared_experts = (
            SwiGLU(h, i * config.num_shared_experts, config.hidden_act, config.mlp_bias) if config.num_shared_experts else None
        )
        # Which dense-FFN neuron each expert neuron came from (shared first, then routed expert
        # by expert): identity for a fresh model, the clustering permutation after upcycling.
        # Saved with the weights so a delta checkpoint can rebuild the experts from the base.
        self.expert_width, self.shared_width = i, i * config.num_shared_experts
        total = self.shared_width + i * self.num_experts
        self.register_buffer("neuron_index", torch.arange(total), persistent=True)
        # True for speech experts; None = no modality split (pure MoE)
        mask = config.speech_expert_mask(moe_idx)
        self.register_buffer("speech_group", torch.tensor(mask, dtype=torch.bool) if mask is not None else None, persistent=False)
        self.trainable_modality: str | None = None  # for routing_mode "masked"
        self.stats: torch.Tensor | None = None  # [2 (text, speech), E] selection counts when recording
        self.token_counts: torch.Tensor | None = None  # [2] tokens seen when recording
        self.last_topk_idx: torch.Tensor | None = None  # [N, top_k] of the last forward (tests, analysis)
        # Dense-ish routing runs the experts as one wide matmul (see _fused_experts); experts
        # with biases always take the gathered path.
        self.fused = not config.mlp_bias
        self._fused_cache: dict[tuple[int, ...], tuple] = {}
        self._params_cache: dict[tuple[int, ...], tuple] = {}

    def neurons_of(self, expert: int | None) -> slice:
        """Where `expert` (a routed expert's number; None: the shared experts) sits in neuron_index."""
        if expert is None:
            return slice(0, self.shared_width)
        start = self.shared_width + expert * self.expert_width
        return slice(start, start + self.expert_width)

    def set_modality_map(self, speech_group: torch.Tensor | None) -> None:
        self.speech_group = None if speech_group is None else speech_group.to(torch.bool).to(self.router.weight.device)

    def routing_parts(self, token_modality: torch.Tensor) -> list[tuple[torch.Tensor | None, torch.Tensor | None,
                                                                          int | None]]:
        """(token rows or None = all, reachable-expert mask [E] or None = all, k or None = top_k) per group
        of tokens that share their reachable experts under the routing mode; a token in two parts sums both."""
        if self.routing_mode == "all" or self.speech_group is None:
            return [(None, None, None)]
        if self.routing_mode == "masked":
            if self.trainable_modality is None:
                return [(None, None, None)]
            return [(None, self.speech_group if self.trainable_modality == "speech" else ~self.speech_group, None)]
        # "modality": speech tokens -> speech experts, text tokens -> text experts, spoken-answer
        # steps -> their text top-k and every speech expert
        every_speech = int(self.speech_group.sum())
        plan = ((TEXT, ~self.speech_group, None), (SPEECH, self.speech_group, None),
                (ANSWER, ~self.speech_group, None), (ANSWER, self.speech_group, every_speech))
        parts = []
        for m, group, k in plan:
            rows = (token_modality == m).nonzero().squeeze(1)
            if len(rows):
                parts.append((None if len(rows) == len(token_modality) else rows, group, k))
        return parts

    def forward(self, x: torch.Tensor, token_modality: torch.Tensor | None = None, valid: torch.Tensor | None = None):
        """x [B, T, H]; token_modality [B, T] (0 text / 1 speech / 2 spoken-answer step); valid [B, T]
        (False = padding).

        Returns (out [B, T, H], aux_loss scalar). Each group of tokens with the same reachable
        experts (one group, or up to four parts under modality routing) is routed with its own
        top-k: k = min(top_k, experts it can reach), so a text token next to speech keeps its k;
        a spoken-answer step sums a text part (top_k) and a speech part (every speech expert).
        """
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n = x.shape[0]
        mod = token_modality.reshape(-1) if token_modality is not None else x.new_zeros(n, dtype=torch.long)
        ok = valid.reshape(-1) if valid is not None else None
        total = ok.sum().clamp_min(1) if ok is not None else n
        parts = self.routing_parts(mod)
        out = x.new_zeros(n, shape[-1]) if len(parts) > 1 else None
        topk_all = torch.full((n, self.top_k), -1, dtype=torch.long, device=x.device)
        aux = x.new_zeros(())
        for rows, group, k_part in parts:
            xs = x if rows is None else x.index_select(0, rows)
            reach = self.num_experts if group is None else int(group.sum())
            # a group may hold fewer experts than top_k: never pick a masked one
            k = min(self.top_k if k_part is None else k_part, reach)
            if k == 0:
                raise ValueError(f"MoE layer {self.moe_idx}: a token has no reachable routed expert (empty modality group)")
            allowed = None if group is None else group.unsqueeze(0).expand(len(xs), -1)
            probs, topk_prob, topk_idx = self.router(xs, allowed, k)
            if self.gate_mode == "softmax":
                weights = topk_prob
            elif self.gate_mode == "normalized":
                weights = topk_prob / topk_prob.sum(-1, keepdim=True).clamp_min(1e-20)
            else:  # "unit": the value is exactly 1 (dense-equivalent sum), the gradient still reaches the router
                weights = 1.0 + topk_prob - topk_prob.detach()
            weights = (weights * self.scaling).to(x.dtype)
            if self.fused and 2 * k >= reach:
                ys = self._fused_experts(xs, topk_idx, weights, group)
            else:
                ys = self._gathered_experts(xs, topk_idx, weights)
            if len(parts) == 1:
                out = ys
            else:   # a spoken-answer step sums its text part and its speech part
                out = out + ys if rows is None else out.index_add(0, rows, ys)
            if k_part is None:   # the record keeps each token's top-k part
                if rows is None:
                    topk_all[:, :k] = topk_idx
                else:
                    topk_all[rows, :k] = topk_idx
            oks = None if ok is None else (ok if rows is None else ok[rows])
            if self.stats is not None:
                self._record(topk_idx, mod if rows is None else mod[rows], oks)
            if self.training and self.aux_alpha > 0:
                share = (oks.sum() if oks is not None else len(xs)) / total
                aux = aux + share * self.balance_loss(probs, topk_idx, allowed, oks)
        self.last_topk_idx = topk_all  # -1 where a token's group took fewer than top_k experts
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.reshape(shape), aux

    def _gathered_experts(self, x, topk_idx, weights):
        """Sparse routing: a loop over experts, each batched over the tokens that chose it."""
        n, k = topk_idx.shape
        flat_idx = topk_idx.reshape(-1)
        order = flat_idx.argsort(stable=True)
        counts = torch.bincount(flat_idx, minlength=self.num_experts).tolist()
        token_of = order // k  # token index of each sorted (token, slot) pair
        weight_of = weights.reshape(-1)[order]
        # Expert outputs are written slot by slot and summed over the k slots at the end:
        # a CPU index_add_ into `out` costs ~1 ms per call with 2 threads (measured), which
        # dominated a decode step.
        slots = x.new_empty(n * k, x.shape[-1])
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            rows = token_of[start : start + c]
            slots[order[start : start + c]] = self.experts[e](x.index_select(0, rows)) * weight_of[start : start + c, None]
            start += c
        return slots.view(n, k, x.shape[-1]).sum(1)

    def _fused_experts(self, x, topk_idx, weights, group):
        """Dense-ish routing (k >= half the reachable experts): every reachable expert as one
        wide SwiGLU, each expert's neurons scaled by its gate weight (0 where not chosen).
        Exactly the gathered sum (up to float summation order), without per-expert gathers."""
        ids = tuple(range(self.num_experts)) if group is None else tuple(group.nonzero().squeeze(1).tolist())
        gate_w, up_w, down_w = self._fused_weights(ids)
        per_expert = x.new_zeros(x.shape[0], self.num_experts).scatter(1, topk_idx, weights)[:, list(ids)]
        h = self.experts[0].act_fn(F.linear(x, gate_w)) * F.linear(x, up_w)
        h = (h.view(x.shape[0], len(ids), -1) * per_expert.unsqueeze(-1)).view(x.shape[0], -1)
        return F.linear(h, down_w)

    def _fused_weights(self, ids: tuple[int, ...]):
        """The experts' weights side by side; cached while none of them can change (no grad)."""
        params = self._expert_params(ids)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._concat(ids)  # differentiable: each expert gets its own gradient
        key = tuple((p.data_ptr(), p._version) for p in params)  # an in-place update bumps _version
        cached = self._fused_cache.get(ids)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self._concat(ids))
            self._fused_cache[ids] = cached
        return cached[1]

    def _expert_params(self, ids: tuple[int, ...]) -> list[torch.Tensor]:
        """The experts' weight parameters, looked up once per set of experts: walking the modules
        on every call took a tenth of a decoding step at batch 1. A parameter registered anywhere
        since (a module's weight replaced) makes the list be looked up again."""
        cached = self._params_cache.get(ids)
        if cached is not None and cached[0] == _registrations[0]:
            return cached[1]
        params = [p for e in ids for p in (self.experts[e].gate_proj.weight, self.experts[e].up_proj.weight,
                                           self.experts[e].down_proj.weight)]
        self._params_cache[ids] = (_registrations[0], params)
        return params

    def _concat(self, ids):
        ex = [self.experts[e] for e in ids]
        return (torch.cat([e.gate_proj.weight for e in ex]), torch.cat([e.up_proj.weight for e in ex]),
                torch.cat([e.down_proj.weight for e in ex], dim=1))

    def balance_loss(self, probs, topk_idx, allowed, valid) -> torch.Tensor:
        """DeepSeek expert-level balance loss: alpha * sum_i f_i * P_i.

        f_i = E' / (k T) * #tokens choosing i, P_i = mean router prob of i, over the T tokens
        of one group of tokens sharing the same reachable experts (E' of them). With several
        groups (modality routing) the group losses are weighted by their token share.
        """
        n, e = probs.shape
        k = topk_idx.shape[1]
        keep = valid if valid is not None else torch.ones(n, dtype=torch.bool, device=probs.device)
        if allowed is None:
            groups = [(keep, e)]
        else:
            groups = []
            for pattern in allowed[keep].unique(dim=0):
                members = keep & (allowed == pattern).all(-1)
                groups.append((members, int(pattern.sum())))
        total = keep.sum().clamp_min(1)
        loss = probs.new_zeros(())
        for members, reachable in groups:
            t = members.sum()
            if t == 0:
                continue
            chosen = F.one_hot(topk_idx[members], e).sum(1).float()  # [t, E]
            f = chosen.sum(0) * reachable / (k * t)
            p = probs[members].mean(0)
            loss = loss + (t / total) * (f * p).sum()
        return self.aux_alpha * loss

    @torch.no_grad()
    def _record(self, topk_idx, mod, valid):
        keep = valid if valid is not None else torch.ones_like(mod, dtype=torch.bool)
        for m in (TEXT, SPEECH):
            sel = keep & (mod == m)
            self.token_counts[m] += sel.sum().to(self.token_counts.dtype)
            self.stats[m] += torch.bincount(topk_idx[sel].reshape(-1), minlength=self.num_experts).to(self.stats.dtype)

    def start_recording(self) -> None:
        dev = self.router.weight.device
        self.stats = torch.zeros(2, self.num_experts, dtype=torch.float64, device=dev)
        self.token_counts = torch.zeros(2, dtype=torch.float64, device=dev)

    def stop_recording(self) -> tuple[torch.Tensor, torch.Tensor]:
        stats, tokens = self.stats, self.token_counts
        self.stats = self.token_counts = None
        return stats, tokens
