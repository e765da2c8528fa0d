"""Tiny random checkpoints of transformers' own spoken-model classes, written as the hub lays
them out, for the `qwen2_5_omni`, `qwen3_omni` and `moshi` adapters' offline tests.

Every class is the real one (Qwen2_5OmniForConditionalGeneration with its talker and
token2wav, Qwen3OmniMoeForConditionalGeneration with its talker and code2wav,
MoshiForConditionalGeneration with Mimi), at a few million parameters: random weights, so
they answer nonsense; the tests check protocol and shapes, never scores.

The text tokenizer is the SmolLM2 tokenizer the project ships (`deeptalk_common.base_llm.resolve_base`),
without its BOS post-processor (Qwen's and Moshi's tokenizers add none), plus each model's
special tokens. "assistant" is added as one token: Qwen3-Omni's `generate` reads the role
token after each `<|im_start|>`, a single token in Qwen's vocabulary. The chat templates
are Qwen2.5-Omni's own (as transformers' processor tests carry it) and a ChatML stand-in
with Qwen3-Omni's audio tokens.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

QWEN25_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}{% set video_count = "
    "namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in "
    "message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>{% elif content['type'] == 'audio' or 'audio' in content or "
    "'audio_url' in content %}{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio "
    "{{ audio_count.value }}: {% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'video' or "
    "'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
QWEN3_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'audio' %}"
    "<|audio_start|><|audio_pad|><|audio_end|>{% elif content['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN25_TOKENS = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
                 "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
                 "vision_eos_token": "<|vision_eos|>"}
QWEN3_TOKENS = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>",
                "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_bos_token": "<|vision_start|>",
                "vision_eos_token": "<|vision_end|>"}
TTS_TOKENS = ["<|tts_pad|>", "<|tts_bos|>", "<|tts_eos|>"]


def _smollm2_tokenizer_object():
    from tokenizers import Tokenizer, processors

    from deeptalk_common.base_llm import resolve_base

    tk = Tokenizer.from_file(os.path.join(resolve_base("smollm2-135m-instruct"), "tokenizer.json"))
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return tk


def qwen_tokenizer(named: dict[str, str], extra: list[str]):
    from transformers import Qwen2TokenizerFast

    tok = Qwen2TokenizerFast(tokenizer_object=_smollm2_tokenizer_object(), unk_token="<|endoftext|>", bos_token=None,
                             eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=named)
    tok.add_special_tokens({"additional_special_tokens": list(named.values()) + extra})
    tok.add_tokens(["assistant"])
    return tok


def _save_qwen_processor(processor_cls, tok, template: str, out: Path, feature_size: int) -> None:
    """The processor as the hub has it: one preprocessor_config.json holding the Whisper
    feature extractor's and the image processor's settings, no video processor config."""
    from transformers import Qwen2VLImageProcessor, WhisperFeatureExtractor
    from transformers.video_processing_utils import BaseVideoProcessor

    class Saver(processor_cls):  # the real video processor needs torchvision, not installed here
        def check_argument_for_proper_class(self, name, arg):
            return type(arg) if name == "video_processor" else super().check_argument_for_proper_class(name, arg)

    Saver.__name__ = processor_cls.__name__
    video = BaseVideoProcessor()
    image = Qwen2VLImageProcessor()
    fe = WhisperFeatureExtractor(feature_size=feature_size)
    Saver(image_processor=image, video_processor=video, feature_extractor=fe, tokenizer=tok,
          chat_template=template).save_pretrained(out)
    merged = {**image.to_dict(), **fe.to_dict(), "processor_class": processor_cls.__name__}
    merged.pop("mel_filters", None)
    (out / "preprocessor_config.json").write_text(json.dumps(merged, indent=1))
    (out / "video_preprocessor_config.json").unlink(missing_ok=True)


def build_qwen25_omni(out: Path) -> Path:
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniProcessor

    out = Path(out)
    torch.manual_seed(0)
    tok = qwen_tokenizer(QWEN25_TOKENS, TTS_TOKENS + ["<|spk_chelsie|>", "<|spk_ethan|>"])
    tid = tok.convert_tokens_to_ids
    mel, hidden, codec = 32, 32, 64
    mrope = {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"}  # head_dim 16
    mm = dict(audio_token_index=tid("<|AUDIO|>"), image_token_index=tid("<|IMAGE|>"), video_token_index=tid("<|VIDEO|>"),
              audio_start_token_id=tid("<|audio_bos|>"), audio_end_token_id=tid("<|audio_eos|>"),
              vision_start_token_id=tid("<|vision_bos|>"), vision_end_token_id=tid("<|vision_eos|>"))
    thinker = dict(
        audio_config=dict(d_model=32, encoder_attention_heads=2, encoder_ffn_dim=32, encoder_layers=1,
                          num_mel_bins=mel, n_window=100, output_dim=hidden),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, intermediate_size=16,
                           out_hidden_size=hidden, fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_scaling=mrope, tie_word_embeddings=False),
        user_token_id=tid("user"), eos_token_id=tid("<|im_end|>"), pad_token_id=tok.pad_token_id, **mm)
    talker = dict(vocab_size=codec, tts_codec_start_token_id=codec - 4, tts_codec_end_token_id=codec - 3,
                  tts_codec_pad_token_id=codec - 2, tts_codec_mask_token_id=codec - 1,
                  tts_text_start_token_id=tid("<|tts_bos|>"), tts_text_end_token_id=tid("<|tts_eos|>"),
                  tts_text_pad_token_id=tid("<|tts_pad|>"), embedding_size=hidden, hidden_size=32,
                  intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=16, rope_scaling=mrope, max_position_embeddings=2048, **mm)
    token2wav = dict(
        dit_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16, emb_dim=16,
                        num_embeds=codec, mel_dim=80, enc_emb_dim=16, enc_dim=16, enc_channels=[16, 16, 16, 16, 48],
                        enc_attention_channels=8, enc_se_channels=8, look_ahead_layers=[1], look_backward_layers=[0]),
        # the real upsampling (5*3*2*2*2*2 = 240 samples per mel frame at 24 kHz), tiny channels
        bigvgan_config=dict(mel_dim=80, upsample_initial_channel=64, resblock_kernel_sizes=[3],
                            resblock_dilation_sizes=[[1, 3, 5]]))
    model = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(
        thinker_config=thinker, talker_config=talker, token2wav_config=token2wav)).eval()
    model.save_pretrained(out)
    # speakers as in the hub's spk_dict.pt: the talker's text start token, the DiT's speaker
    # conditioning vector and a reference mel
    speakers = {name: {"bos_token": tid(f"<|spk_{name.lower()}|>"), "cond": torch.randn(1, 16),
                       "ref_mel": torch.randn(1, 40, 80)} for name in ("Chelsie", "Ethan")}
    torch.save(speakers, out / "spk_dict.pt")
    _save_qwen_processor(Qwen2_5OmniProcessor, tok, QWEN25_TEMPLATE, out, mel)
    return out


def build_qwen3_omni(out: Path) -> Path:
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor

    out = Path(out)
    torch.manual_seed(0)
    tok = qwen_tokenizer(QWEN3_TOKENS, TTS_TOKENS)
    tid = tok.convert_tokens_to_ids
    mel, hidden = 32, 32
    mrope = {"mrope_section": [2, 2, 4], "rope_type": "default", "interleaved": True}
    mm = dict(audio_token_id=tid("<|audio_pad|>"), image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
              audio_start_token_id=tid("<|audio_start|>"), vision_start_token_id=tid("<|vision_start|>"))
    moe = dict(moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)
    thinker = dict(
        audio_config=dict(d_model=32, encoder_attention_heads=2, encoder_ffn_dim=32, encoder_layers=1, num_mel_bins=mel,
                          n_window=50, n_window_infer=100, output_dim=hidden, downsample_hidden_size=16),
        vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=hidden,
                           patch_size=16, deepstack_visual_indexes=[0]),
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
                         rope_scaling=mrope, tie_word_embeddings=False, **moe),
        audio_end_token_id=tid("<|audio_end|>"), vision_end_token_id=tid("<|vision_end|>"), user_token_id=tid("user"),
        **mm)
    # The talker suppresses the top 1024 ids of its vocabulary (its special codes), so its
    # vocabulary must be larger than 1024 for it to have codes to say.
    codec = 1100
    talker = dict(
        text_config=dict(vocab_size=codec, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, rope_scaling=mrope,
                         max_position_embeddings=2048, shared_expert_intermediate_size=16, **moe),
        code_predictor_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_code_groups=4,
                                   max_position_embeddings=64),
        num_code_groups=4, thinker_hidden_size=hidden, accept_hidden_layer=1, spatial_merge_size=2,
        codec_eos_token_id=codec - 1000, codec_nothink_id=codec - 999, codec_think_bos_id=codec - 998,
        codec_think_eos_id=codec - 997, codec_pad_id=codec - 996, codec_bos_id=codec - 995,
        speaker_id={"ethan": codec - 990, "chelsie": codec - 989, "aiden": codec - 988}, **mm)
    # the real upsampling (8*5*4*3 * 2*2 = 1920 samples per 12.5 Hz code frame at 24 kHz), tiny widths
    code2wav = dict(codebook_size=64, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                    intermediate_size=64, num_hidden_layers=1, num_quantizers=4, decoder_dim=32, sliding_window=8)
    model = Qwen3OmniMoeForConditionalGeneration(Qwen3OmniMoeConfig(
        thinker_config=thinker, talker_config=talker, code2wav_config=code2wav,
        im_start_token_id=tid("<|im_start|>"), im_end_token_id=tid("<|im_end|>"), tts_pad_token_id=tid("<|tts_pad|>"),
        tts_bos_token_id=tid("<|tts_bos|>"), tts_eos_token_id=tid("<|tts_eos|>"), system_token_id=tid("system"),
        user_token_id=tid("user"), assistant_token_id=tid("assistant"))).eval()
    model.save_pretrained(out)
    _save_qwen_processor(Qwen3OmniMoeProcessor, tok, QWEN3_TEMPLATE, out, mel)
    return out


def build_moshi(out: Path) -> Path:
    from transformers import (
        EncodecFeatureExtractor,
        MoshiConfig,
        MoshiForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    out = Path(out)
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast(tokenizer_object=_smollm2_tokenizer_object(), unk_token="<|endoftext|>",
                                  pad_token="<pad>")
    # Mimi at its real rates (24 kHz, 12.5 frames a second: 8*6*5*4 * 2 = 1920 samples a frame), tiny widths
    mimi = dict(model_type="mimi", hidden_size=16, num_filters=4, num_residual_layers=1, upsampling_ratios=[8, 6, 5, 4],
                codebook_size=32, codebook_dim=16, vector_quantization_hidden_dimension=16, num_quantizers=8,
                num_semantic_quantizers=1, upsample_groups=16, num_hidden_layers=1, intermediate_size=32,
                num_attention_heads=2, num_key_value_heads=2, sliding_window=16, frame_rate=12.5,
                sampling_rate=24000, use_cache=False)
    depth = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, max_position_embeddings=9,
                 sliding_window=8)
    model = MoshiForConditionalGeneration(MoshiConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, num_codebooks=8,
        max_position_embeddings=3000, sliding_window=3000, pad_token_id=tok.pad_token_id, audio_encoder_config=mimi,
        depth_decoder_config=depth, tie_word_embeddings=False)).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0).save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- a tiny task
SPOKEN_QA_TASK = """\
task: tiny_spoken_qa
version: 1
description: Spoken questions at several sample rates, answered in text and speech.
dataset:
  path: data.jsonl
  id_field: id
input:
  modality: speech
  audio_field: wav
output: both
generation: {max_new_tokens: 4, temperature: 0.0}
scorers:
  - {name: qa_match, channel: text, args: {answers_field: answers}}
metrics:
  - {name: acc, aggregation: mean, on_failure: zero}
  - {name: no_answer, aggregation: mean, on_failure: one}
"""


def tone(seconds: float, rate: int):
    """A 220 Hz tone as the harness's Audio (what the adapters hear in these tests)."""
    import numpy as np

    from deeptalk_eval.api import Audio

    t = np.arange(int(seconds * rate)) / rate
    return Audio((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


def write_spoken_qa_task(folder: Path, rates: dict[str, int], seconds: float, step: float,
                         system: str | None = None) -> Path:
    """`tiny_spoken_qa` in `folder`: one tone per id at its sample rate (seconds + i * step long)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (sid, rate) in enumerate(rates.items()):
        sf.write(folder / f"{sid}.wav", tone(seconds + step * i, rate).samples, rate)
        rows.append({"id": sid, "wav": f"{sid}.wav", "answers": ["Paris"]})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = SPOKEN_QA_TASK if system is None else SPOKEN_QA_TASK.replace("output: both", f"system: {system}\noutput: both")
    (folder / "tiny_spoken_qa.yaml").write_text(task)
    return folder
