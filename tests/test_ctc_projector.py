"""The CTC projector: greedy grouping into soft text embeddings, CTC learning on real speech,
the encoder and prompt wiring (text modality, no end marker), resumable training."""
import numpy as np
import pytest
import torch

from deeptalk.sequence import SPEECH_MODALITY, TEXT_MODALITY, build_prompt_ids
from deeptalk.speech.ctc_projector import CTCProjector, _runs


class FixedLogits(CTCProjector):
    """A projector whose scores are given: isolates the grouping from the network."""

    def __init__(self, scores, embed):
        super().__init__(8, embed.shape[1], 1, torch.arange(embed.shape[0]))
        self.scores = scores
        self.tie(embed)

    def logits(self, feats, lengths=None):
        return self.scores.unsqueeze(0)


def peaked(classes, n_classes, margin=20.0):
    s = torch.zeros(len(classes), n_classes)
    s[torch.arange(len(classes)), torch.tensor(classes)] = margin
    return s


def test_runs_groups_equal_neighbours():
    assert _runs(torch.tensor([0, 3, 3, 0, 5, 5, 3])) == [(0, (0, 1)), (3, (1, 3)), (0, (3, 4)), (5, (4, 6)), (3, (6, 7))]


def test_greedy_grouping_gives_one_position_per_token_heard():
    embed = torch.randn(6, 4)
    # blank, a, a, blank, b, b, a, blank  (classes are 1 + token index)
    proj = FixedLogits(peaked([0, 2, 2, 0, 4, 4, 2, 0], 7), embed)
    (out,) = proj(torch.zeros(1, 8, 8))
    assert out.shape == (3, 4)
    # peaked posteriors read back as the tokens' own embeddings
    torch.testing.assert_close(out, embed[[1, 3, 1]], atol=1e-4, rtol=1e-4)
    assert proj.greedy_ids(torch.zeros(1, 8, 8)) == [1, 3, 1]
    assert proj.read(torch.zeros(1, 8, 8))[1] == [[1, 3, 1]]  # what it heard, from the same pass


def test_soft_embedding_is_the_probability_weighted_sum():
    embed = torch.randn(3, 4)
    scores = torch.tensor([[-10.0, 1.0, 0.0, -10.0]])  # one non-blank frame, split between tokens 0 and 1
    (out,) = FixedLogits(scores, embed)(torch.zeros(1, 1, 8))
    p = torch.tensor([1.0, 0.0, -10.0]).softmax(0)
    torch.testing.assert_close(out[0], p @ embed, atol=1e-5, rtol=1e-5)


def test_silence_gives_no_positions_and_lengths_are_respected():
    embed = torch.randn(3, 4)
    proj = FixedLogits(peaked([0, 0, 1, 1], 4), embed)
    (out,) = proj(torch.zeros(1, 4, 8), lengths=torch.tensor([2]))  # the token frames are padding
    assert out.shape == (0, 4)


def test_untied_projector_is_a_clear_error():
    p = CTCProjector(8, 4, 2, torch.arange(5))
    with pytest.raises(RuntimeError, match="tie"):
        p(torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="holds id 4"):
        p.tie(torch.zeros(3, 4))


def test_prompt_reads_ctc_positions_as_text():
    from pathlib import Path

    from transformers import AutoTokenizer

    from deeptalk.config import DeepTalkConfig

    ref = Path(__file__).resolve().parent.parent / "checkpoints" / "reference"
    tok, cfg = AutoTokenizer.from_pretrained(ref), DeepTalkConfig.from_pretrained(ref)
    audio_in, audio_end = cfg.special_token_id("<|audio_in|>"), cfg.special_token_id("<|audio_in_end|>")
    ids, mod, _ = build_prompt_ids(tok, cfg, None, 3, speak=False)
    assert ids.count(audio_in) == 3 and audio_end in ids
    assert [m for i, m in zip(ids, mod) if i in (audio_in, audio_end)] == [SPEECH_MODALITY] * 4
    ids, mod, rendered = build_prompt_ids(tok, cfg, None, 3, speak=False, speech_as_text=True)
    assert ids.count(audio_in) == 3 and audio_end not in ids
    assert set(mod) == {TEXT_MODALITY} and "<|audio_in_end|>" not in rendered
    # with an instruction: a spoken turn is the audio then the text; heard text is the
    # instruction, then what was heard as a quoted block
    ids, _, rendered = build_prompt_ids(tok, cfg, "Transcribe this.", 3, speak=False)
    assert "<|audio_in|>x3<|audio_in_end|>Transcribe this." in rendered
    ids, mod, rendered = build_prompt_ids(tok, cfg, "Transcribe this.", 3, speak=False, speech_as_text=True)
    assert 'Transcribe this.\n\n"<|audio_in|>x3"' in rendered and set(mod) == {TEXT_MODALITY}
    first, last = ids.index(audio_in), len(ids) - 1 - ids[::-1].index(audio_in)
    assert "Transcribe this." in tok.decode(ids[:first]) and tok.decode(ids[first - 1]).endswith('"')
    assert tok.decode(ids[last + 1]).startswith('"') and last - first == 2


@pytest.fixture(scope="module")
def spoken():
    """Real Whisper tiny.en features of one Piper sentence, and its SmolLM2 token ids."""
    from transformers import AutoTokenizer

    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig, prepare_audio
    from deeptalk_common.base_llm import resolve_base
    from deeptalk_common.tts import synthesize

    text = "Lisbon is the capital of Portugal."
    tok = AutoTokenizer.from_pretrained(resolve_base("smollm2-135m-instruct"))
    enc = SpeechEncoder.from_whisper(SpeechEncoderConfig(hidden_size=16, stride=4))
    wav, sr = synthesize(text)
    feats = enc.whisper_features(prepare_audio(wav, sr))
    return tok, feats, tok(" " + text, add_special_tokens=False)["input_ids"], enc


def test_ctc_learns_a_real_utterance(one_torch_thread, spoken):
    tok, feats, ids, _ = spoken
    torch.manual_seed(0)
    vocab = torch.tensor(sorted(set(ids) | set(range(100, 300))))
    proj = CTCProjector(feats.shape[1], 16, 4, vocab, hidden=64).tie(torch.randn(49152, 16))
    opt = torch.optim.AdamW(proj.parameters(), lr=3e-3)
    x, n = feats.unsqueeze(0), torch.tensor([feats.shape[0]])
    first = proj.ctc_loss(x, n, [ids]).item()
    for _ in range(150):
        loss = proj.ctc_loss(x, n, [ids])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert proj.greedy_ids(x) == ids
    assert len(proj(x)[0]) == len(ids)


def test_encoder_with_ctc_projector(spoken):
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig

    _, feats, ids, enc = spoken
    ctc = SpeechEncoder(enc.whisper, SpeechEncoderConfig(hidden_size=16, stride=4, projector="ctc"),
                        ctc_vocab=torch.tensor(sorted(set(ids))))
    assert ctc.reads_as_text and not enc.reads_as_text
    ctc.tie(torch.randn(49152, 16))
    embeds, lengths = ctc([feats, feats[:10]])
    assert embeds.shape[0] == 2 and embeds.shape[2] == 16 and lengths.max() == embeds.shape[1]
    with pytest.raises(ValueError, match="needs its vocabulary"):
        SpeechEncoder(enc.whisper, SpeechEncoderConfig(hidden_size=16, projector="ctc"))
    with pytest.raises(ValueError, match="'mlp', 'ctc' or 'ctc_chars'"):
        SpeechEncoder(enc.whisper, SpeechEncoderConfig(hidden_size=16, projector="linear"))


def test_training_resumes_exactly(tmp_path, one_torch_thread, spoken):
    from deeptalk.hearing import HearingTrain, train_ctc

    tok, feats, ids, _ = spoken
    rng = np.random.default_rng(0)
    rows = [{"id": f"u{i}", "text": tok.decode(ids), "voice": "v", "ids": ids,
             "feats": (feats + 0.01 * torch.from_numpy(rng.standard_normal(feats.shape).astype(np.float32))).half()}
            for i in range(6)]
    torch.save(rows[:4], tmp_path / "train.pt")
    torch.save(rows[4:], tmp_path / "dev.pt")
    vocab = torch.tensor(sorted(set(ids) | set(range(100, 200))))
    embed = torch.randn(49152, 16)

    class Killed(Exception):
        pass

    def kill_at_step_2(msg):  # the log line after step 2's checkpoint: the process dies there
        if msg.startswith("hearing: step 2 "):
            raise Killed

    def run(out, resume=False, seed=0, log=lambda m: None, eval_every=100):
        torch.manual_seed(seed)
        proj = CTCProjector(feats.shape[1], 16, 4, vocab, hidden=32).tie(embed)
        cfg = HearingTrain(stride=4, batch_size=3, max_steps=4, checkpoint_every=2, eval_every=eval_every, warmup=1)
        res = train_ctc(proj, [tmp_path / "train.pt"], tmp_path / "dev.pt", tok, cfg, out, resume=resume, log=log)
        return proj, res

    straight, res = run(tmp_path / "a")
    assert res["steps"] == 4 and (tmp_path / "a" / "curve.csv").is_file()
    with pytest.raises(Killed):
        run(tmp_path / "b", log=kill_at_step_2, eval_every=2)
    resumed, res = run(tmp_path / "b", resume=True, seed=123)  # another init: resume overwrites it
    assert res["steps"] == 4
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_hearing_corpus_keeps_out_evaluation_text():
    from deeptalk.hearing_corpus import _norm, evaluation_texts, hearing_sentences

    sents = hearing_sentences(3000, seed=0)
    assert len(set(sents)) == 3000
    ev = evaluation_texts()
    assert _norm("What is the capital of Angola?") in ev  # a bundled spoken QA question
    assert not ev & {_norm(s) for s in sents}
    # a sentence holding an evaluation text is dropped, one that does not is kept
    kept = hearing_sentences(5, seed=0, exclude={_norm(sents[0])})
    assert sents[0] not in kept
    assert hearing_sentences(5, seed=0) == sents[:5]
    # sentences a checkpoint was trained to say can be left out too, on top of the evaluation texts
    unseen = hearing_sentences(3000, seed=0, also_exclude=sents[:2])
    assert not {sents[0], sents[1]} & set(unseen) and not ev & {_norm(s) for s in unseen}
    assert any(s.endswith("?") for s in sents) and sum(s[0].isupper() for s in sents) > 2900


def test_attention_layers_ignore_padding(spoken):
    """With self-attention layers, an utterance padded inside a batch scores as it does alone."""
    _, feats, ids, _ = spoken
    torch.manual_seed(0)
    proj = CTCProjector(feats.shape[1], 16, 4, torch.tensor(sorted(set(ids))), hidden=32, layers=2).tie(
        torch.randn(49152, 16)).eval()
    short = feats[:37]
    batch = torch.zeros(2, feats.shape[0], feats.shape[1])
    batch[0], batch[1, :37] = feats, short
    with torch.no_grad():
        both = proj.logits(batch, torch.tensor([feats.shape[0], 37]))
        alone = proj.logits(short.unsqueeze(0))
    torch.testing.assert_close(both[1, : alone.shape[1]], alone[0], atol=1e-4, rtol=1e-4)
    assert len(proj(batch, torch.tensor([feats.shape[0], 37]))) == 2


def test_tuned_whisper_top_starts_as_the_frozen_encoder_and_trains_alone(spoken, tmp_path):
    """tune_blocks: the projector's copies of Whisper's last blocks give the frozen encoder's
    features before training, read a padded batch as each utterance alone, get the gradient
    (the packaged encoder none), and travel in the projector's state."""
    from safetensors.torch import load_file, save_file

    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig, prepare_audio
    from deeptalk_common.tts import synthesize

    tok, feats, ids, enc = spoken
    vocab = torch.tensor(sorted(set(ids)))
    cfg = SpeechEncoderConfig(hidden_size=16, stride=4, projector="ctc", tune_blocks=2)
    tuned = SpeechEncoder(enc.whisper, cfg, ctc_vocab=vocab).tie(torch.randn(49152, 16))
    assert tuned.frozen_blocks == len(enc.whisper.blocks) - 2 and tuned.features_name == "tiny.en-exact-b2"
    wav, sr = synthesize("Lisbon is the capital of Portugal.")
    low = tuned.whisper_features(prepare_audio(wav, sr))
    with torch.no_grad():
        torch.testing.assert_close(tuned.projector.top(low.unsqueeze(0))[0], feats, atol=1e-4, rtol=1e-4)
        batch = torch.zeros(2, low.shape[0], low.shape[1])
        batch[0], batch[1, :37] = low, low[:37]
        both = tuned.projector.top(batch, torch.arange(low.shape[0]).unsqueeze(0) >= torch.tensor([[low.shape[0]], [37]]))
        torch.testing.assert_close(both[1, :37], tuned.projector.top(low[:37].unsqueeze(0))[0], atol=1e-4, rtol=1e-4)
    loss = tuned.projector.ctc_loss(low.unsqueeze(0), torch.tensor([low.shape[0]]), [ids])
    loss.backward()
    assert all(p.grad is not None for p in tuned.projector.top.parameters())
    assert all(p.grad is None for p in tuned.whisper.parameters())
    with torch.no_grad():
        tuned.projector.top.blocks[-1].mlp[0].weight.add_(0.01)
    save_file(tuned.projector_state(), str(tmp_path / "p.safetensors"))
    state = load_file(str(tmp_path / "p.safetensors"))
    again = SpeechEncoder.from_whisper(cfg, ctc_vocab=vocab)
    again.projector.load_state_dict(state)
    assert torch.equal(again.projector.top.blocks[-1].mlp[0].weight, tuned.projector.top.blocks[-1].mlp[0].weight)
    assert not torch.equal(again.whisper.blocks[-1].mlp[0].weight, again.projector.top.blocks[-1].mlp[0].weight)
    with pytest.raises(ValueError, match="needs the ctc projector"):
        SpeechEncoder(enc.whisper, SpeechEncoderConfig(hidden_size=16, tune_blocks=1))


def test_spelling_keeps_letters_digits_apostrophes_and_single_spaces():
    from deeptalk.speech.char_ctc import ALPHABET, spell

    ids = spell("  Don't stop -- the 2nd train, Mr. O'Hara!")
    assert "".join(ALPHABET[i - 1] for i in ids) == "don't stop the 2nd train mr o'hara"
    assert spell("?!") is None


def test_char_ctc_learns_a_real_utterance_and_hands_the_llm_its_tokens(one_torch_thread, spoken):
    """The character head spells a real Piper sentence after training on it; the LLM reads
    the transcript's own tokens (as typed), through the encoder as through the projector."""
    from deeptalk.speech.char_ctc import CharCTC, spell
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig

    tok, feats, ids, enc = spoken
    text = "Lisbon is the capital of Portugal."
    torch.manual_seed(0)
    embed = torch.randn(49152, 16)
    proj = CharCTC(feats.shape[1], 16, 2, hidden=64).tie(embed, tok)
    opt = torch.optim.AdamW(proj.parameters(), lr=3e-3)
    x, n = feats.unsqueeze(0), torch.tensor([feats.shape[0]])
    target = [spell(text)]
    first = proj.ctc_loss(x, n, target).item()
    for _ in range(200):
        loss = proj.ctc_loss(x, n, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert proj.transcribe(x) == ["lisbon is the capital of portugal"]
    (rows,), (heard,) = proj.read(x)
    assert heard == tok(" lisbon is the capital of portugal", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(rows, embed[heard])
    assert proj.targets({"text": text}) == target[0] and proj.heard_text(x) == "lisbon is the capital of portugal"
    # in the speech encoder: read as text, and the tokenizer is required
    cfg = SpeechEncoderConfig(hidden_size=16, stride=2, projector="ctc_chars", projector_hidden=64)
    chars = SpeechEncoder(enc.whisper, cfg)
    chars.projector.load_state_dict(proj.state_dict())
    assert chars.reads_as_text
    with pytest.raises(ValueError, match="needs the LLM's tokenizer"):
        chars.tie(embed)
    chars.tie(embed, tok)
    embeds, lengths = chars([feats])
    assert int(lengths[0]) == len(heard)
    torch.testing.assert_close(embeds[0, : len(heard)], embed[heard])


def test_word_pieces_write_any_transcript_and_travel_in_the_state(tmp_path):
    """ctc_chars with pieces: a BPE learnt by tokenizers' trainer writes common words whole
    and anything else letter by letter; a saved state rebuilds the same head."""
    from safetensors.torch import load_file, save_file

    from deeptalk.speech.char_ctc import CharCTC, pieces_from_state, spell, train_pieces

    texts = ["the capital of france is paris", "what is the largest planet in the solar system"] * 50
    pieces = train_pieces(texts, 80)
    torch.manual_seed(0)
    head = CharCTC(8, 16, 2, hidden=16, pieces=pieces)
    common = head.targets({"text": "The capital of France?"})
    rare = head.targets({"text": "Zebra-quux"})
    assert 3 * len(common) < len(spell("The capital of France?")) and len(rare) >= 8
    assert head.chars.out_features == 1 + head.bpe.get_vocab_size()
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "h.safetensors"))
    state = load_file(str(tmp_path / "h.safetensors"))
    again = CharCTC(8, 16, 2, hidden=16, pieces=pieces_from_state(state))
    again.load_state_dict(state)
    x = torch.randn(1, 20, 8)
    assert again.transcribe(x) == head.transcribe(x)
    assert pieces_from_state({"vocab": torch.zeros(0)}) is None
    # a piece run decodes to spaced words
    ids = [i for i in head.targets({"text": "what is the solar system"})]
    assert " ".join(head.bpe.decode([i - 1 for i in ids]).split()) == "what is the solar system"
