"""Upcycling: a dense Llama-family causal LM -> DeepTalk MoE (MoEfication).

Each dense FFN (SwiGLU, `intermediate_size` neurons) is cut into fine-grained experts of
`expert_intermediate_size` neurons: a dense FFN is exactly the sum of its neuron slices,

    down(act(gate x) * up x) = Σ_e down_e(act(gate_e x) * up_e x),

so with every expert active and unit gate weights the MoE *is* the dense model. To keep
its text ability when only top-k experts run, `calibrate_tokens` of offline text are fed
through the dense model and, per MoE layer:
  1. each neuron's contribution |act(gate_j x) * up_j x| * ||down[:, j]|| is measured;
  2. the neurons with the largest mean contribution become the shared experts (always on);
  3. the rest are grouped into routed experts by balanced k-means on their contribution
     patterns over tokens (neurons that fire together share an expert);
  4. the router starts from the cluster centroids in input space and is trained to predict
     each expert's output norm on the calibration tokens (its softmax matches the
     experts' share of output energy), so its top-k keeps most of the FFN's output.
The neuron permutation is stored in every MoE layer (`neuron_index`), which is what lets
a delta checkpoint rebuild the experts from the base LLM (deeptalk/delta.py).
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
import warnings

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.modeling_utils import no_init_weights

from .config import SPECIAL_TOKENS, DeepTalkConfig
from .modeling import DeepTalkForCausalLM

log = logging.getLogger(__name__)

LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias", "attention_dropout", "mlp_bias",
    "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id",
)


# ----------------------------------------------------------------------------- config
def config_from_dense(dense_config, num_routed_experts=30, num_shared_experts=2, top_k=6, first_k_dense_layers=1,
                      special_tokens=SPECIAL_TOKENS, base_model=None, **moe_and_speech) -> DeepTalkConfig:
    """DeepTalkConfig with the dense model's Llama fields and the vocabulary grown by `special_tokens`."""
    if getattr(dense_config, "model_type", None) not in ("llama", "mistral", "qwen2", "deeptalk"):
        log.warning("upcycling a %r model as Llama-family: its attention/MLP must match Llama's", dense_config.model_type)
    fields = {f: getattr(dense_config, f) for f in LLAMA_FIELDS if getattr(dense_config, f, None) is not None}
    n_experts = num_routed_experts + num_shared_experts
    if dense_config.intermediate_size % n_experts:
        raise ValueError(f"intermediate_size {dense_config.intermediate_size} is not divisible by "
                         f"{n_experts} experts ({num_shared_experts} shared + {num_routed_experts} routed)")
    base_vocab = dense_config.vocab_size
    fields.update(
        vocab_size=base_vocab + len(special_tokens), base_vocab_size=base_vocab, special_tokens=list(special_tokens),
        num_routed_experts=num_routed_experts, num_shared_experts=num_shared_experts,
        expert_intermediate_size=dense_config.intermediate_size // n_experts, num_experts_per_tok=top_k,
        first_k_dense_layers=first_k_dense_layers, base_model=base_model,
    )
    fields.setdefault("gate_mode", "unit")
    fields.update(moe_and_speech)
    return DeepTalkConfig(**fields)


def extend_tokenizer(tokenizer, config: DeepTalkConfig):
    """Add the config's special tokens to a base tokenizer (in place); their ids must match the config."""
    if len(tokenizer) != config.base_vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the config's base vocabulary {config.base_vocab_size}")
    tokenizer.add_special_tokens({"additional_special_tokens": list(config.special_tokens)},
                                 replace_additional_special_tokens=False)
    for tok in config.special_tokens:
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != config.special_token_id(tok):
            raise ValueError(f"special token {tok!r} got id {got} in the tokenizer, {config.special_token_id(tok)} in the config")
    return tokenizer


# ----------------------------------------------------------------------------- weights
def empty_model(config: DeepTalkConfig, dtype: torch.dtype = torch.float32) -> DeepTalkForCausalLM:
    """A model whose weights will be copied from a base: skips the random init of the
    base-derived tensors (seconds on 135 M parameters) but initialises the audio tensors,
    which no dense base has. Routers are left for the caller to set."""
    with no_init_weights():
        model = DeepTalkForCausalLM(config)
    for module in (model.model.audio_embed, model.audio_head):
        if module is not None:
            model._init_weights(module)
    return model.to(dtype)


def dense_mlp(dense_model, layer_idx):
    return dense_model.model.layers[layer_idx].mlp


@torch.no_grad()
def copy_from_dense(model: DeepTalkForCausalLM, dense_model, derive_new_rows: bool = True) -> None:
    """Fill `model` from the dense model: attention, norms, dense layers, embeddings, and every
    expert from the dense FFN rows named by its layer's `neuron_index`. Routers, audio
    tensors and the added vocabulary rows are not in the dense model: left as they are,
    except new vocabulary rows, set to the mean base embedding when `derive_new_rows`.
    """
    cfg = model.config
    src = dense_model.state_dict()
    dst = model.state_dict()
    v = cfg.base_vocab_size
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in src and not (name == "lm_head.weight" and cfg.tie_word_embeddings):
            dst[name][:v].copy_(src[name])
            if derive_new_rows:
                dst[name][v:].copy_(src[name].mean(0, keepdim=True))
    dst["model.norm.weight"].copy_(src["model.norm.weight"])
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}."
        for name, t in layer.named_parameters():
            if not name.startswith("mlp."):
                t.copy_(src[p + name])
        if not layer.is_moe:
            for name, t in layer.mlp.named_parameters():
                t.copy_(src[p + "mlp." + name])
            continue
        moe = layer.mlp
        gate, up, down = (src[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
        experts = ([(moe.shared_experts, None)] if moe.shared_experts is not None else []) + list(
            zip(moe.experts, range(len(moe.experts))))
        for expert, e in experts:
            rows = moe.neuron_index[moe.neurons_of(e)]
            expert.gate_proj.weight.copy_(gate[rows])
            expert.up_proj.weight.copy_(up[rows])
            expert.down_proj.weight.copy_(down[:, rows])
    if cfg.tie_word_embeddings:
        model.tie_weights()


# ----------------------------------------------------------------------------- calibration text
def _stdlib_docs() -> list[tuple[str, str]]:
    """(module name, its docstrings) for the pure-Python standard library, in a fixed order."""
    out = []
    skip = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "antigravity", "this", "__")
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        name = info.name
        if name.startswith(skip) or name not in sys.stdlib_module_names:
            continue
        try:
            with warnings.catch_warnings():  # deprecated modules warn on import
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # platform modules that do not import here are simply not in the corpus
            continue
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr, None)
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) \
                    and getattr(obj, "__module__", None) == name:
                docs.append(inspect.getdoc(obj) or "")
        text = "\n\n".join(d for d in docs if len(d) > 40)
        if text:
            out.append((name, text))
    return out


def calibration_texts(split: str = "calib") -> list[str]:
    """Offline English text: Python standard-library docstrings, split by module-name hash
    into "calib" (upcycling calibration) and "heldout" (perplexity). Deterministic.
    """
    if split not in ("calib", "heldout"):
        raise ValueError(f"split {split!r}: expected 'calib' or 'heldout'")
    heldout = split == "heldout"
    return [text for name, text in _stdlib_docs()
            if (int(hashlib.sha256(name.encode()).hexdigest(), 16) % 4 == 0) == heldout]


def token_blocks(tokenizer, texts: list[str], num_tokens: int, block: int = 256) -> torch.Tensor:
    """The first `num_tokens` tokens of the concatenated texts as [n_blocks, block] rows."""
    ids: list[int] = []
    sep = tokenizer.eos_token_id
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + [sep])
        if len(ids) >= num_tokens:
            break
    n = min(num_tokens, len(ids)) // block
    if n == 0:
        raise ValueError(f"calibration text holds {len(ids)} tokens, fewer than one block of {block}")
    return torch.tensor(ids[: n * block]).view(n, block)


@torch.no_grad()
def capture_ffn_inputs(dense_model, blocks: torch.Tensor, layers: list[int], batch: int = 8) -> dict[int, torch.Tensor]:
    """The (post-norm) inputs of the FFNs of `layers`, [n_tokens, H] each, on calibration blocks."""
    store: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    hooks = [dense_mlp(dense_model, i).register_forward_hook(
        lambda mod, args, out, i=i: store[i].append(args[0].reshape(-1, args[0].shape[-1]).float()))
        for i in layers]
    try:
        for s in tqdm(range(0, len(blocks), batch), desc="calibration forward", leave=False):
            dense_model(input_ids=blocks[s : s + batch], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {i: torch.cat(v) for i, v in store.items()}


def neuron_activations(mlp, x: torch.Tensor) -> torch.Tensor:
    """act(gate x) * up x for every dense neuron: [n_tokens, intermediate]."""
    return mlp.act_fn(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight)


def balanced_kmeans(features: torch.Tensor, k: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """Cluster rows of `features` (unit-norm, cosine) into k clusters of equal size.

    Assignment is greedy over all (row, cluster) pairs by similarity, respecting the
    capacity n / k of every cluster. Returns the cluster id of every row.
    """
    n = features.shape[0]
    if n % k:
        raise ValueError(f"{n} neurons do not split into {k} equal experts")
    cap = n // k
    g = torch.Generator().manual_seed(seed)
    centroids = features[torch.randperm(n, generator=g)[:k]].clone()
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        sim = features @ centroids.T  # [n, k]
        order = sim.flatten().argsort(descending=True).tolist()
        new, fill, done = [-1] * n, [0] * k, 0
        for flat in order:  # plain Python lists: this loop runs up to n * k times
            r, c = divmod(flat, k)
            if new[r] >= 0 or fill[c] >= cap:
                continue
            new[r] = c
            fill[c] += 1
            done += 1
            if done == n:
                break
        new = torch.tensor(new)
        if torch.equal(new, assign):
            break
        assign = new
        for c in range(k):
            centroids[c] = F.normalize(features[assign == c].mean(0), dim=0)
    return assign


def cluster_neurons(mlp, x: torch.Tensor, num_shared: int, num_routed: int, width: int, seed: int = 0):
    """The neuron order of one layer: shared experts' neurons first, then routed expert by expert."""
    h = neuron_activations(mlp, x)
    contrib = h.abs() * mlp.down_proj.weight.norm(dim=0)  # [n, I]
    mean = contrib.mean(0)
    shared = mean.argsort(descending=True)[: num_shared * width]
    is_shared = torch.zeros_like(mean, dtype=torch.bool)
    is_shared[shared] = True
    rest = (~is_shared).nonzero().squeeze(1)
    feats = F.normalize(contrib[:, rest].T, dim=1)  # each neuron's activation pattern over tokens
    assign = balanced_kmeans(feats, num_routed, seed=seed)
    routed = [rest[assign == c] for c in range(num_routed)]
    return torch.cat([shared.sort().values] + [r.sort().values for r in routed])


def expert_output_norms(moe, x: torch.Tensor) -> torch.Tensor:
    """||expert_e(x)|| for every routed expert: the calibration target of the router, [n, E]."""
    return torch.stack([expert(x).norm(dim=-1) for expert in moe.experts], dim=1)


def calibrate_router(moe, x: torch.Tensor, steps: int = 300, lr: float = 3e-3, temperature: float | None = None) -> dict:
    """Train the router so that softmax(router x) matches each expert's share of output norm.

    Initialised from the experts' mean gate rows (the cluster centroids in input space).
    Returns the top-k recall of the oracle experts (by output norm) after training.
    """
    with torch.no_grad():
        target_norm = expert_output_norms(moe, x)
        centroids = torch.stack([F.normalize(e.gate_proj.weight.mean(0), dim=0) for e in moe.experts])
        moe.router.weight.copy_(centroids * x.norm(dim=1).mean().reciprocal())
    log_target = torch.log_softmax(torch.log(target_norm + 1e-6) / (temperature or 1.0), dim=-1)
    weight = moe.router.weight
    opt = torch.optim.Adam([weight], lr=lr)
    with torch.enable_grad():  # callers may hold no_grad; only the router weight trains here
        for _ in range(steps):
            logp = torch.log_softmax(F.linear(x, weight), dim=-1)
            loss = F.kl_div(logp, log_target, log_target=True, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        k = moe.top_k
        pred = F.linear(x, weight).topk(k, dim=-1).indices
        oracle = target_norm.topk(k, dim=-1).indices
        hit = (pred.unsqueeze(2) == oracle.unsqueeze(1)).any(2).float().mean()
    return {"kl": loss.item(), "topk_recall": hit.item()}


# ----------------------------------------------------------------------------- upcycle
def upcycle(dense_model, num_routed_experts: int = 30, num_shared_experts: int = 2, top_k: int = 6,
            first_k_dense_layers: int = 1, calibrate_tokens: int = 16384, tokenizer=None,
            calibration_text: list[str] | None = None, router_steps: int = 300, seed: int = 0,
            base_model: str | None = None, **config_overrides) -> DeepTalkForCausalLM:
    """Turn a dense Llama-family causal LM into a DeepTalkForCausalLM (see the module docstring).

    calibrate_tokens=0 keeps the neurons in order and initialises routers from the experts'
    gate rows (no tokenizer needed): the exactness check uses this. `config_overrides` go to
    DeepTalkConfig (e.g. num_codebooks, codebook_size, speech_encoder_dim, gate_mode).
    The calibration record (per-layer router top-k recall, seed, token count) is attached
    as `model.upcycle_report`.
    """
    torch.manual_seed(seed)
    base_model = base_model or getattr(dense_model.config, "name_or_path", None) or getattr(dense_model.config, "_name_or_path", None)
    config = config_from_dense(dense_model.config, num_routed_experts, num_shared_experts, top_k,
                               first_k_dense_layers, base_model=base_model, **config_overrides)
    model = empty_model(config, dense_model.dtype)
    report = {"seed": seed, "calibrate_tokens": 0, "router_steps": router_steps, "layers": []}
    moe_layers = [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]
    if calibrate_tokens:
        if tokenizer is None:
            raise ValueError("upcycle(calibrate_tokens>0) needs the dense model's tokenizer")
        texts = calibration_text if calibration_text is not None else calibration_texts("calib")
        blocks = token_blocks(tokenizer, texts, calibrate_tokens)
        report["calibrate_tokens"] = int(blocks.numel())
        inputs = capture_ffn_inputs(dense_model.eval(), blocks, moe_layers)
        for i in tqdm(moe_layers, desc="clustering neurons", leave=False):
            moe = model.model.layers[i].mlp
            moe.neuron_index.copy_(cluster_neurons(dense_mlp(dense_model, i), inputs[i], num_shared_experts,
                                                   num_routed_experts, config.expert_intermediate_size, seed=seed + i))
    copy_from_dense(model, dense_model)
    for i in tqdm(moe_layers, desc="calibrating routers", leave=False):
        moe = model.model.layers[i].mlp
        if calibrate_tokens:
            stats = calibrate_router(moe, inputs[i], steps=router_steps)
            report["layers"].append({"layer": i, **stats})
        else:
            with torch.no_grad():
                moe.router.weight.copy_(torch.stack([e.gate_proj.weight.mean(0) for e in moe.experts]))
    model.upcycle_report = report
    return model.eval()
