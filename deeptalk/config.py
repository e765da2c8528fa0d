"""DeepTalkConfig: a Llama-family decoder whose feed-forward layers are modality-specific MoEs.

Three groups of fields:
  * the Llama fields (attention, RoPE, norms) — copied from the dense base LLM on upcycling;
  * the MoE fields — routed + shared fine-grained experts, top-k routing, DeepSeek aux loss,
    and the modality map (which routed experts of each MoE layer are speech experts);
  * the speech fields — codec codebooks predicted by parallel heads with the delay pattern,
    the speech-encoder width, and the special text tokens the generation protocol needs.

Routing modes (recorded in every checkpoint's config):
  "all"       every token may reach every routed expert (the paper's inference).
  "masked"    the router logits of the frozen group are set to -inf, so tokens reach only the
              group being trained (the paper's stages 2.1 / 2.2). Which group is trainable is a
              runtime setting, `model.set_trainable_modality("speech" | "text" | None)`.
  "modality"  speech-position tokens reach only speech experts, text-position tokens only text
              experts (our extension; needs `token_modality` in forward, default all text).

Where the steps of a spoken answer go under "modality" routing (`answer_routing`): "speech"
(the speech experts, as the paper's speech tokens), or "both": a spoken-answer step carries a
text token and a speech token at once, so it takes what a text token takes (its top-k of the
text experts) plus every speech expert. With unit gates and top-k = every text expert, that
step starts as the dense base FFN, and the speech experts learn the speech on top of an
unchanged text path.

How a spoken answer's text channel lines up with its speech (`answer_layout`): "block" (the
whole text first, then `<|text_pad|>` while the audio runs; the model must learn which word
it is speaking) or "words" (each word's tokens written just before its own units, the text
held while the audio speaks the word; needs a codec that gives a word's units, such as the
phone codec, and the generator releases the next word when the audio ends the current one:
deeptalk/sequence.py).
"""
from __future__ import annotations

from transformers import PretrainedConfig

ROUTING_MODES = ("all", "masked", "modality")
ANSWER_ROUTINGS = ("speech", "both")
ANSWER_LAYOUTS = ("block", "words")
GATE_MODES = ("softmax", "normalized", "unit")

# Text tokens added to the base vocabulary for the speech protocol. Their ids are
# base_vocab_size + position in this list (see `special_token_id`).
SPECIAL_TOKENS = (
    "<|audio_in|>",  # placeholder: its embedding is replaced by one projected speech-encoder frame
    "<|audio_in_end|>",  # closes a spoken input span
    "<|speech_start|>",  # the answer is to be spoken: audio heads start after this step
    "<|speech_end|>",  # the spoken answer is over
    "<|text_pad|>",  # text channel filler once the text is done but audio still runs
    "<|text_end|>",  # the text channel of an answer is over
)

# Per-codebook audio tokens after the codec's `codebook_size` code values.
AUDIO_SPECIALS = ("pad", "bos", "eos")


class DeepTalkConfig(PretrainedConfig):
    model_type = "deeptalk"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        # --- Llama fields ---
        vocab_size: int = 32000,
        hidden_size: int = 256,
        intermediate_size: int = 768,  # the dense FFN width (dense layers; the upcycled source)
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-5,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        mlp_bias: bool = False,
        # --- MoE fields ---
        num_routed_experts: int = 8,
        num_shared_experts: int = 1,
        expert_intermediate_size: int | None = None,  # default: intermediate_size // (routed + shared)
        num_experts_per_tok: int = 2,
        first_k_dense_layers: int = 1,  # the paper's backbone keeps layer 0 dense
        aux_loss_alpha: float = 0.001,
        router_scoring: str = "softmax",
        gate_mode: str = "softmax",  # softmax | normalized (renormalised over top-k) | unit (weight 1, MoEfication)
        routed_scaling_factor: float = 1.0,
        routing_mode: str = "all",
        answer_routing: str = "speech",
        answer_layout: str = "block",
        speech_experts: list[list[int]] | None = None,  # per MoE layer; None = pure MoE (no split)
        # --- speech fields ---
        num_codebooks: int = 0,  # 0 = text-only model (no audio embeddings / heads)
        codebook_size: int = 0,
        speech_encoder_dim: int = 0,
        base_vocab_size: int | None = None,  # text vocabulary before SPECIAL_TOKENS were added
        special_tokens: list[str] | None = None,
        base_model: str | None = None,  # what this model was upcycled from (name or path)
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.mlp_bias = mlp_bias

        self.num_routed_experts = num_routed_experts
        self.num_shared_experts = num_shared_experts
        if expert_intermediate_size is None:
            expert_intermediate_size = intermediate_size // max(num_routed_experts + num_shared_experts, 1)
        self.expert_intermediate_size = expert_intermediate_size
        self.num_experts_per_tok = num_experts_per_tok
        self.first_k_dense_layers = first_k_dense_layers
        self.aux_loss_alpha = aux_loss_alpha
        self.router_scoring = router_scoring
        self.gate_mode = gate_mode
        self.routed_scaling_factor = routed_scaling_factor
        self.routing_mode = routing_mode
        self.answer_routing = answer_routing
        self.answer_layout = answer_layout
        self.speech_experts = [sorted(int(e) for e in layer) for layer in speech_experts] if speech_experts is not None else None

        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.speech_encoder_dim = speech_encoder_dim
        self.base_vocab_size = base_vocab_size if base_vocab_size is not None else vocab_size
        self.special_tokens = list(special_tokens) if special_tokens is not None else []
        self.base_model = base_model

        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate()

    # --- derived sizes ---
    @property
    def num_moe_layers(self) -> int:
        return max(self.num_hidden_layers - self.first_k_dense_layers, 0)

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_layers

    def moe_index(self, layer_idx: int) -> int:
        """Position of decoder layer `layer_idx` among the MoE layers (index into speech_experts)."""
        if not self.is_moe_layer(layer_idx):
            raise ValueError(f"layer {layer_idx} is dense (first_k_dense_layers={self.first_k_dense_layers})")
        return layer_idx - self.first_k_dense_layers

    @property
    def audio_vocab_size(self) -> int:
        """Tokens per codebook: the codec's codes + pad, bos, eos."""
        return self.codebook_size + len(AUDIO_SPECIALS) if self.num_codebooks else 0

    @property
    def audio_pad_id(self) -> int:
        return self.codebook_size + AUDIO_SPECIALS.index("pad")

    @property
    def audio_eos_id(self) -> int:
        return self.codebook_size + AUDIO_SPECIALS.index("eos")

    def special_token_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise KeyError(f"special token {token!r} is not in this config (has {self.special_tokens})")
        return self.base_vocab_size + self.special_tokens.index(token)

    def speech_expert_mask(self, moe_idx: int) -> list[bool] | None:
        """Per routed expert of MoE layer `moe_idx`: True for speech experts; None = no split."""
        if self.speech_experts is None:
            return None
        chosen = set(self.speech_experts[moe_idx])
        return [e in chosen for e in range(self.num_routed_experts)]

    def validate(self) -> None:
        def bad(msg):
            raise ValueError(f"DeepTalkConfig: {msg}")

        if self.routing_mode not in ROUTING_MODES:
            bad(f"routing_mode={self.routing_mode!r}, expected one of {ROUTING_MODES}")
        if self.answer_routing not in ANSWER_ROUTINGS:
            bad(f"answer_routing={self.answer_routing!r}, expected one of {ANSWER_ROUTINGS}")
        if self.answer_layout not in ANSWER_LAYOUTS:
            bad(f"answer_layout={self.answer_layout!r}, expected one of {ANSWER_LAYOUTS}")
        if self.gate_mode not in GATE_MODES:
            bad(f"gate_mode={self.gate_mode!r}, expected one of {GATE_MODES}")
        if self.router_scoring != "softmax":
            bad(f"router_scoring={self.router_scoring!r}: only 'softmax' is implemented")
        if not 0 <= self.first_k_dense_layers <= self.num_hidden_layers:
            bad(f"first_k_dense_layers={self.first_k_dense_layers} outside [0, {self.num_hidden_layers}]")
        if self.num_moe_layers and not 1 <= self.num_experts_per_tok <= self.num_routed_experts:
            bad(f"num_experts_per_tok={self.num_experts_per_tok} outside [1, num_routed_experts={self.num_routed_experts}]")
        if self.hidden_size % self.num_attention_heads:
            bad(f"hidden_size={self.hidden_size} not divisible by num_attention_heads={self.num_attention_heads}")
        if self.speech_experts is not None:
            if len(self.speech_experts) != self.num_moe_layers:
                bad(f"speech_experts has {len(self.speech_experts)} layers, the model has {self.num_moe_layers} MoE layers")
            for i, layer in enumerate(self.speech_experts):
                out = [e for e in layer if not 0 <= e < self.num_routed_experts]
                if out or len(set(layer)) != len(layer):
                    bad(f"speech_experts[{i}]={layer}: indices must be distinct and in [0, {self.num_routed_experts})")
        elif self.routing_mode != "all":
            bad(f"routing_mode={self.routing_mode!r} needs a modality map (speech_experts)")
        if self.num_codebooks and self.codebook_size <= 0:
            bad(f"num_codebooks={self.num_codebooks} needs codebook_size > 0")
        if self.vocab_size < self.base_vocab_size + len(self.special_tokens):
            bad(f"vocab_size={self.vocab_size} < base_vocab_size {self.base_vocab_size} + {len(self.special_tokens)} special tokens")
