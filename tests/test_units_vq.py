"""Supervised semantic units (deeptalk/speech/units_vq.py) on real speech: Piper joe, the real
Whisper tiny.en encoder and its frozen decoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deeptalk.speech.codec_units import UNIT_MEL, UnitCodec
from deeptalk.speech.units_vq import UnitVQ, VQConfig, greedy_transcribe, transcript_batch

TEXTS = ["The museum opens at nine on the fourth of May.",
         "Please bring two tickets to the old bridge before seven.",
         "A cold wind blew across the harbour all night long."]


@pytest.fixture(scope="module")
def whisper_parts():
    from whisper.tokenizer import get_tokenizer

    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig, prepare_audio
    from deeptalk_common.tts import synthesize
    from deeptalk_common.whisper_ckpt import load_whisper

    enc = SpeechEncoder.from_whisper(SpeechEncoderConfig(hidden_size=1))
    feats = [enc.whisper_features(prepare_audio(synthesize(t, "piper", "joe", sample_rate=16000)[0], 16000)).float()
             for t in TEXTS]
    return feats, load_whisper("tiny.en").decoder.eval().requires_grad_(False), get_tokenizer(multilingual=False)


def test_greedy_transcription_matches_whispers_own(whisper_parts):
    import whisper

    from deeptalk_common.tts import synthesize
    from deeptalk_common.whisper_ckpt import load_whisper

    _, decoder, tok = whisper_parts
    model = load_whisper("tiny.en")
    audio = torch.from_numpy(synthesize(TEXTS[0], "piper", "joe", sample_rate=16000)[0])
    with torch.no_grad():
        enc = model.encoder(whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))[None])   # the 30 s window
    ours = greedy_transcribe(decoder, enc, tok)
    theirs = whisper.decode(model, enc, whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False))
    assert ours == theirs[0].text.strip() and "museum" in ours


def test_transcript_batch_teacher_forces_the_text_and_end():
    from whisper.tokenizer import get_tokenizer

    tok = get_tokenizer(multilingual=False)
    inp, tgt = transcript_batch(["Hello world.", "Hi."], tok)
    sot = list(tok.sot_sequence_including_notimestamps)
    assert inp[0, : len(sot)].tolist() == sot and inp.shape == tgt.shape
    text = tok.encode(" Hello world.")
    assert tgt[0, len(sot) - 1: len(sot) - 1 + len(text)].tolist() == text
    assert tgt[0, len(sot) - 1 + len(text)] == tok.eot
    assert (tgt[0, : len(sot) - 1] == -100).all() and (tgt[1] != -100).sum() == len(tok.encode(" Hi.")) + 1


def test_training_the_bottleneck_lowers_whispers_loss_on_the_units(whisper_parts):
    feats, decoder, tok = whisper_parts
    torch.manual_seed(0)
    vq = UnitVQ(VQConfig(codebook_size=32, code_dim=8, post_layers=1))
    opt = torch.optim.AdamW(vq.parameters(), lr=3e-3)
    n = max(len(f) for f in feats)
    x = torch.stack([torch.cat([f, f[-1:].expand(n - len(f), -1)]) for f in feats])
    inp, tgt = transcript_batch(TEXTS, tok)
    losses = []
    for _ in range(30):
        h, codes, vq_loss, recon = vq(x)
        assert recon.shape == codes.shape
        ce = torch.nn.functional.cross_entropy(decoder(inp, h).transpose(1, 2), tgt, ignore_index=-100)
        opt.zero_grad()
        (ce + vq_loss).backward()
        opt.step()
        losses.append(float(ce))
    assert codes.shape == (3, -(-n // 2)) and int(codes.max()) < 32
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    # dead codes restart at current vectors
    used = torch.zeros(32, dtype=torch.bool)
    used[codes.flatten()] = True
    z = vq.pre(vq.pool(x)).reshape(-1, 8)
    assert vq.restart_dead(z, used, torch.Generator().manual_seed(0)) == int((~used).sum())


def test_a_units_codec_with_the_vq_encoding_half_round_trips(whisper_parts, tmp_path):
    from deeptalk_common.tts import synthesize

    torch.manual_seed(0)
    vq = UnitVQ(VQConfig(codebook_size=64, code_dim=8))
    codec = UnitCodec(vq.codebook_normed().detach().numpy(), np.zeros((64, 4 * 80), np.float32), np.zeros(80),
                      np.ones(80), pool=2, pre=vq.pre)
    wav = synthesize(TEXTS[1], "piper", "joe", sample_rate=UNIT_MEL.sample_rate)[0]
    codes = codec.encode(wav, UNIT_MEL.sample_rate)
    feats = torch.as_tensor(codec.pooled_features(wav, UNIT_MEL.sample_rate))
    assert np.array_equal(codes[0], vq.codes(vq.pre(feats)).numpy())          # cosine match in code space
    codec.save(tmp_path / "vq.safetensors")
    loaded = UnitCodec.load(tmp_path / "vq.safetensors")
    assert loaded.pre is not None and np.array_equal(loaded.encode(wav, UNIT_MEL.sample_rate), codes)
