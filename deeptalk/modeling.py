"""DeepTalkForCausalLM: a Llama decoder with modality-specific MoE feed-forward layers,
a text LM head and parallel speech heads (one per codec codebook, Mini-Omni style).

API contract (stable; generation, training and the harness adapter build on it)
-------------------------------------------------------------------------------
model = DeepTalkForCausalLM(config) | DeepTalkForCausalLM.from_pretrained(dir)
        | deeptalk.upcycle.upcycle(dense) | deeptalk.delta.load_delta(dir)

Inputs of one step sequence (B batch, T steps, Q codebooks, V_a = config.audio_vocab_size):
  input_ids       [B, T] long   text channel. `<|audio_in|>` positions are placeholders
                                 whose embedding is replaced by `speech_embeds` rows.
  inputs_embeds   [B, T, H]     instead of input_ids (e.g. from `embed_inputs`).
  audio_codes     [B, Q, T] long the audio channel, ALREADY in the delayed layout
                                 (deeptalk/delay.py: codebook i runs i+1 steps behind the
                                 text; pad = config.audio_pad_id, eos = config.audio_eos_id).
                                 Each step's input embedding = text embedding + sum over
                                 codebooks of that codebook's embedding. Negative codes
                                 (e.g. -1 on prompt steps) add nothing.
  speech_embeds   [B, S, H] or [N, H]  projected speech-encoder frames for the
                                 `<|audio_in|>` placeholders, in order.
  token_modality  [B, T] long   0 text, 1 speech (for "modality" routing and for the
                                 routing statistics); default all text.
  attention_mask  [B, past+T]   1 = real token, 0 = padding (left or right).
  past_key_values               transformers Cache (DynamicCache) for incremental decoding.
  labels          [B, T]        text targets aligned with input_ids (shifted inside; -100 ignored).
  audio_labels    [B, Q, T]     audio targets aligned with audio_codes (shifted inside; -100 ignored).
  return_audio_logits           default: True when the model has codebooks.

Output `DeepTalkOutput`:
  logits [B, T, V] text logits; audio_logits [B, T, Q, V_a] (or None);
  loss = text_loss + audio_loss_weight * audio_loss + aux_loss (each term also returned);
  aux_loss = DeepSeek balance loss summed over MoE layers (0 in eval mode);
  past_key_values.

Runtime settings:
  model.set_trainable_modality("speech" | "text" | None)   masked stages 2.1 / 2.2 / 3
  model.set_modality_map(speech_experts | None)             after adaptive assignment
  model.set_routing_mode("all" | "masked" | "modality")
Checkpoints: save_pretrained / from_pretrained (safetensors); deeptalk.delta.save_delta / load_delta
(only what differs from the upcycled base LLM).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.utils import ModelOutput

from .attention import prefer_grouped
from .config import ROUTING_MODES, DeepTalkConfig
from .moe import MoEFeedForward, Router

MODALITIES = ("speech", "text")


@dataclass
class DeepTalkOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    audio_logits: torch.FloatTensor | None = None
    text_loss: torch.FloatTensor | None = None
    audio_loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: torch.FloatTensor | None = None


class DeepTalkDecoderLayer(GradientCheckpointingLayer):
    """Llama's pre-norm block; the MLP is dense for the first layers and an MoE after."""

    def __init__(self, config: DeepTalkConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = MoEFeedForward(config, config.moe_index(layer_idx)) if self.is_moe else LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask, position_embeddings, past_key_values, cache_position,
                token_modality, valid):
        residual = hidden_states
        h = self.input_layernorm(hidden_states)
        h, _ = self.self_attn(
            hidden_states=h,
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            past_key_values=past_key_values,
            cache_position=cache_position,
        )
        hidden_states = residual + h
        residual = hidden_states
        h = self.post_attention_layernorm(hidden_states)
        if self.is_moe:
            h, aux = self.mlp(h, token_modality, valid)
        else:
            h, aux = self.mlp(h), h.new_zeros(())
        return residual + h, aux


class DeepTalkPreTrainedModel(PreTrainedModel):
    config_class = DeepTalkConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeepTalkDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def get_correct_attn_implementation(self, requested_attention, is_init_check=False):
        # sdpa with grouped key/value heads left grouped on CPU (deeptalk/attention.py)
        return prefer_grouped(super().get_correct_attn_implementation(requested_attention, is_init_check))

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, Router):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, LlamaRMSNorm):
            module.weight.data.fill_(1.0)


class DeepTalkModel(DeepTalkPreTrainedModel):
    """Embeddings (text + audio codebooks) → decoder layers → final norm."""

    def __init__(self, config: DeepTalkConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        # one table for all codebooks; codebook q's token c is row q * V_a + c
        self.audio_embed = (
            nn.Embedding(config.num_codebooks * config.audio_vocab_size, config.hidden_size) if config.num_codebooks else None
        )
        self.layers = nn.ModuleList(DeepTalkDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def embed_inputs(self, input_ids, audio_codes=None, speech_embeds=None, inputs_embeds=None):
        """Step embeddings [B, T, H] = text (or speech frame at <|audio_in|>) + Σ codebook embeddings."""
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            if int(input_ids.max()) >= cfg.vocab_size or int(input_ids.min()) < 0:
                raise ValueError(f"input_ids outside [0, vocab_size={cfg.vocab_size}): "
                                 f"min {int(input_ids.min())}, max {int(input_ids.max())}")
            inputs_embeds = self.embed_tokens(input_ids)
            if speech_embeds is not None:
                inputs_embeds = self._insert_speech(input_ids, inputs_embeds, speech_embeds)
        elif speech_embeds is not None:
            raise ValueError("speech_embeds needs input_ids (its <|audio_in|> placeholders say where the frames go)")
        if audio_codes is not None:
            inputs_embeds = inputs_embeds + self.embed_audio(audio_codes).to(inputs_embeds.dtype)
        return inputs_embeds

    def embed_audio(self, audio_codes: torch.Tensor) -> torch.Tensor:
        """audio_codes [B, Q, T] (delayed layout; negative = nothing) -> [B, T, H]."""
        cfg = self.config
        if self.audio_embed is None:
            raise ValueError("audio_codes given but this model has no codebooks (config.num_codebooks=0)")
        if audio_codes.dim() != 3 or audio_codes.shape[1] != cfg.num_codebooks:
            raise ValueError(f"audio_codes must be [B, Q={cfg.num_codebooks}, T], got {tuple(audio_codes.shape)}")
        if int(audio_codes.max()) >= cfg.audio_vocab_size:
            raise ValueError(f"audio_codes hold {int(audio_codes.max())} >= audio_vocab_size {cfg.audio_vocab_size}")
        present = audio_codes >= 0
        offsets = torch.arange(cfg.num_codebooks, device=audio_codes.device).view(1, -1, 1) * cfg.audio_vocab_size
        rows = torch.where(present, audio_codes + offsets, torch.zeros_like(audio_codes))
        emb = self.audio_embed(rows) * present.unsqueeze(-1)  # [B, Q, T, H]
        return emb.sum(1)

    def _insert_speech(self, input_ids, inputs_embeds, speech_embeds):
        slot = input_ids == self.config.special_token_id("<|audio_in|>")
        frames = speech_embeds.reshape(-1, speech_embeds.shape[-1])
        n_slots = int(slot.sum())
        if speech_embeds.dim() == 3 and (slot.sum(1) != speech_embeds.shape[1]).any():
            raise ValueError(f"speech_embeds has {speech_embeds.shape[1]} frames per row but the rows hold "
                             f"{slot.sum(1).tolist()} <|audio_in|> placeholders")
        if frames.shape[0] != n_slots:
            raise ValueError(f"{frames.shape[0]} speech frames for {n_slots} <|audio_in|> placeholders")
        out = inputs_embeds.clone()
        out[slot] = frames.to(out.dtype)
        return out

    def forward(self, input_ids=None, inputs_embeds=None, audio_codes=None, speech_embeds=None, token_modality=None,
                attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, cache_position=None):
        hidden = self.embed_inputs(input_ids, audio_codes, speech_embeds, inputs_embeds)
        b, t = hidden.shape[:2]
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if cache_position is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            cache_position = torch.arange(past, past + t, device=hidden.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)
        causal_mask = create_causal_mask(
            config=self.config, input_embeds=hidden, attention_mask=attention_mask,
            cache_position=cache_position, past_key_values=past_key_values, position_ids=position_ids,
        )
        valid = attention_mask[:, -t:].bool() if attention_mask is not None and attention_mask.dim() == 2 else None
        if token_modality is not None and token_modality.shape != (b, t):
            raise ValueError(f"token_modality must be [B, T]={[b, t]}, got {list(token_modality.shape)}")
        position_embeddings = self.rotary_emb(hidden, position_ids)
        aux_total = hidden.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            hidden, aux = layer(hidden, causal_mask, position_embeddings, past_key_values, cache_position,
                                token_modality, valid)
            aux_total = aux_total + aux
        return self.norm(hidden), past_key_values, aux_total


class DeepTalkForCausalLM(DeepTalkPreTrainedModel, GenerationMixin):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: DeepTalkConfig):
        super().__init__(config)
        self.model = DeepTalkModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.audio_head = (
            nn.Linear(config.hidden_size, config.num_codebooks * config.audio_vocab_size, bias=False)
            if config.num_codebooks else None
        )
        self.audio_loss_weight = 1.0
        self.post_init()

    # --- transformers plumbing ---
    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def embed_inputs(self, input_ids=None, audio_codes=None, speech_embeds=None, inputs_embeds=None):
        return self.model.embed_inputs(input_ids, audio_codes, speech_embeds, inputs_embeds)

    @property
    def moe_layers(self) -> list[MoEFeedForward]:
        return [layer.mlp for layer in self.model.layers if layer.is_moe]

    def forward(self, input_ids=None, inputs_embeds=None, audio_codes=None, speech_embeds=None, token_modality=None,
                attention_mask=None, position_ids=None, past_key_values=None, use_cache=None, cache_position=None,
                labels=None, audio_labels=None, return_audio_logits=None, logits_to_keep=0, return_dict=None,
                text_logits_where_labelled=False, **kwargs):
        """`text_logits_where_labelled` (training, with `labels`): the text head runs only on the
        positions whose next token is labelled, and `logits` holds those rows [N, V] in batch order.
        The loss is the same; the 49k-word head over every position is a fifth of a CPU training
        step otherwise, while a spoken-answer turn labels few text positions."""
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise ValueError("DeepTalkForCausalLM does not return attentions / per-layer hidden states")
        use_cache = self.config.use_cache if use_cache is None and labels is None and audio_labels is None else use_cache
        hidden, past_key_values, aux = self.model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, audio_codes=audio_codes, speech_embeds=speech_embeds,
            token_modality=token_modality, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=use_cache, cache_position=cache_position,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        labelled = None
        if text_logits_where_labelled:
            if labels is None or logits_to_keep:
                raise ValueError("text_logits_where_labelled needs labels and every position (logits_to_keep=0)")
            labelled = labels[:, 1:] != -100   # [B, T-1]: position t predicts labels[t+1]
            logits = self.lm_head(hidden[:, :-1][labelled])
        else:
            logits = self.lm_head(hidden[:, keep])
        if return_audio_logits is None:
            return_audio_logits = self.audio_head is not None
        audio_logits = None
        if return_audio_logits or audio_labels is not None:
            if self.audio_head is None:
                raise ValueError("audio logits asked but this model has no codebooks (config.num_codebooks=0)")
            h = hidden[:, keep]
            audio_logits = self.audio_head(h).view(*h.shape[:2], self.config.num_codebooks, self.config.audio_vocab_size)

        text_loss = audio_loss = None
        if labelled is not None:   # no labelled position: NaN, as ignore_index gives
            text_loss = F.cross_entropy(logits.float(), labels[:, 1:][labelled])
        elif labels is not None:
            text_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        if audio_labels is not None:
            b, t = hidden.shape[:2]
            if audio_labels.shape != (b, self.config.num_codebooks, t):
                raise ValueError(f"audio_labels must be [B, Q, T]={[b, self.config.num_codebooks, t]}, "
                                 f"got {list(audio_labels.shape)}")
            target = audio_labels[:, :, 1:].transpose(1, 2)  # [B, T-1, Q]
            audio_loss = F.cross_entropy(audio_logits[:, :-1].flatten(0, 2).float(), target.flatten(), ignore_index=-100)
        loss = None
        if text_loss is not None or audio_loss is not None:
            loss = aux.to(logits.dtype) if self.training else logits.new_zeros(())
            if text_loss is not None:
                loss = loss + text_loss
            if audio_loss is not None:
                loss = loss + self.audio_loss_weight * audio_loss
        return DeepTalkOutput(loss=loss, logits=logits, audio_logits=audio_logits, text_loss=text_loss,
                              audio_loss=audio_loss, aux_loss=aux, past_key_values=past_key_values)

    # --- modality groups ---
    def set_routing_mode(self, mode: str) -> None:
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing mode {mode!r}: expected one of {ROUTING_MODES}")
        if mode != "all" and self.config.speech_experts is None:
            raise ValueError(f"routing mode {mode!r} needs a modality map: call set_modality_map first")
        self.config.routing_mode = mode
        for moe in self.moe_layers:
            moe.routing_mode = mode

    def set_modality_map(self, speech_experts: list[list[int]] | None) -> None:
        """Install the per-MoE-layer speech-expert lists (None = pure MoE: no split)."""
        old = self.config.speech_experts
        self.config.speech_experts = None if speech_experts is None else [sorted(int(e) for e in l) for l in speech_experts]
        try:
            self.config.validate()
        except ValueError:
            self.config.speech_experts = old
            raise
        for i, moe in enumerate(self.moe_layers):
            mask = self.config.speech_expert_mask(i)
            moe.set_modality_map(None if mask is None else torch.tensor(mask))

    def set_trainable_modality(self, modality: str | None) -> None:
        """Stage switch: route to (in "masked" mode) and train only `modality`'s routed experts.

        "speech" (stage 2.1) / "text" (stage 2.2): the other group's router logits are -inf
        when routing_mode == "masked", and its experts get requires_grad=False. None (stage 3):
        all routed experts trainable, no mask. Other parameters are left to the trainer.
        """
        if modality is not None and modality not in MODALITIES:
            raise ValueError(f"trainable modality {modality!r}: expected 'speech', 'text' or None")
        if modality is not None and self.config.speech_experts is None:
            raise ValueError("set_trainable_modality needs a modality map (config.speech_experts)")
        for moe in self.moe_layers:
            moe.trainable_modality = modality
            for e, expert in enumerate(moe.experts):
                trainable = modality is None or bool(moe.speech_group[e]) == (modality == "speech")
                expert.requires_grad_(trainable)

    def modality_expert_parameters(self, modality: str):
        """(name, parameter) of the routed experts of `modality` in every MoE layer."""
        if self.config.speech_experts is None:
            raise ValueError("no modality map (config.speech_experts is None)")
        want_speech = modality == "speech"
        for name, p in self.named_parameters():
            parts = name.split(".")
            if "experts" in parts and parts[parts.index("experts") - 1] == "mlp":
                layer = self.model.layers[int(parts[2])].mlp
                if bool(layer.speech_group[int(parts[parts.index("experts") + 1])]) == want_speech:
                    yield name, p


AutoConfig.register("deeptalk", DeepTalkConfig, exist_ok=True)
AutoModelForCausalLM.register(DeepTalkConfig, DeepTalkForCausalLM, exist_ok=True)
