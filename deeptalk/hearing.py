"""Stage 1 for a CTC projector: hours of synthetic speech, Whisper features, a CTC loss.

    sentences (deeptalk/hearing_corpus.py) -> shards of N utterances, each a seeded choice of
    voice (Piper joe presets, flite voices) -> 16 kHz -> frozen Whisper encoder features (fp16)
    -> CTCProjector trained with CTC onto the LLM's token ids

Everything is cached per shard under cache_dir()/data/ (a killed build keeps its finished
shards), and training checkpoints every `checkpoint_every` steps with its optimizer and data
order, so `train_ctc(..., resume=True)` continues where a kill left it. A fixed dev shard
(sentences the training shards never hold) gives the learning curve: greedy CTC WER
against training minutes, written as a CSV beside the checkpoint.
"""
from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from deeptalk_common.paths import cache_dir

DEFAULT_VOICES = ("piper:joe", "piper:joe", "piper:joe-fast", "piper:joe-slow", "piper:joe-lively",
                  "flite:slt", "flite:kal16", "flite:awb", "flite:rms")


@dataclass
class HearingData:
    sentences: int = 8000  # training utterances
    dev: int = 200  # held-out utterances for the learning curve
    shard: int = 1000
    voices: tuple[str, ...] = DEFAULT_VOICES
    seed: int = 0


@dataclass
class HearingTrain:
    stride: int = 2
    hidden: int | None = None
    lr: float = 1e-3
    batch_size: int = 16
    max_steps: int = 3000
    max_seconds: float = 3600.0
    checkpoint_every: int = 100
    eval_every: int = 250
    warmup: int = 100
    spec_augment: bool = True  # time and channel masks on the Whisper features
    top_lr: float | None = None  # the tuned Whisper blocks' learning rate (tune_blocks); default lr
    seed: int = 0
    extra: dict = field(default_factory=dict)


def shard_features(sentences: list[str], voices, seed: int, name: str, encoder, tokenizer) -> Path:
    """Synthesise one shard, then cache its Whisper features and token ids in one file."""
    from deeptalk.data import build_asr_set, load_wav
    from deeptalk.speech.encoder import prepare_audio

    built = build_asr_set(sentences, list(voices), seed, name=name)
    out = built.root / f"features-{encoder.features_name}.pt"
    if out.is_file():
        return out
    rows = []
    for item in tqdm(built.items, desc=f"{name}: whisper features"):
        feats = encoder.whisper_features(prepare_audio(load_wav(built, item), 16000, name=item["id"]))
        ids = tokenizer(" " + item["text"].strip(), add_special_tokens=False)["input_ids"]
        rows.append({"id": item["id"], "text": item["text"], "voice": item["voice"],
                     "feats": feats.to(torch.float16), "ids": ids})
    tmp = out.with_suffix(".tmp")
    torch.save(rows, tmp)
    tmp.rename(out)
    return out


def question_features(path: Path, encoder, tokenizer, voice: str = "piper:joe", field: str = "question") -> Path:
    """The questions of a JSONL file spoken by one voice, as a shard: what a spoken-QA task asks
    the head to hear (short questions, names), which the corpus's glosses and quotations are not."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    texts = [json.loads(ln)[field] for ln in lines]
    return shard_features(texts, [voice], 0, f"questions-{path.stem}", encoder, tokenizer)


def build_hearing_data(cfg: HearingData, encoder, tokenizer) -> tuple[list[Path], Path]:
    """(training shard files, dev shard file); sentences disjoint from each other and from the tasks."""
    from deeptalk.hearing_corpus import hearing_sentences

    sents = hearing_sentences(cfg.sentences + cfg.dev, cfg.seed)
    dev = shard_features(sents[: cfg.dev], cfg.voices, cfg.seed + 1, "hearing-dev", encoder, tokenizer)
    train = []
    for k, s in enumerate(range(cfg.dev, len(sents), cfg.shard)):
        chunk = sents[s : s + cfg.shard]
        train.append(shard_features(chunk, cfg.voices, cfg.seed + 1000 * (k + 2), f"hearing-{k:03d}", encoder,
                                    tokenizer))
    return train, dev


def _whole_corpus(seed: int) -> list[str]:
    """Every sentence of the hearing corpus, not only the synthesised part, in a fixed order."""
    from deeptalk.hearing_corpus import fortune_sentences, wordnet_sentences

    return wordnet_sentences(random.Random(seed)) + fortune_sentences()


def corpus_vocab(tokenizer, n_sentences: int = 200_000, seed: int = 0) -> torch.Tensor:
    """LLM token ids the CTC head may emit: every token of the whole hearing corpus (not only
    the synthesised part), sorted. Cached by the tokenizer's vocabulary size and the corpus."""
    path = cache_dir() / "data" / f"hearing-vocab-{len(tokenizer)}-{seed}.json"
    if path.is_file():
        return torch.tensor(json.loads(path.read_text()))
    texts = _whole_corpus(seed)
    ids: set[int] = set()
    for s in range(0, min(len(texts), n_sentences), 2000):
        for row in tokenizer([" " + t for t in texts[s : s + 2000]], add_special_tokens=False)["input_ids"]:
            ids.update(row)
    out = sorted(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return torch.tensor(out)


def hearing_pieces(size: int, seed: int = 0, n_sentences: int = 200_000) -> str:
    """The BPE a ctc_chars head spells in, learnt on the whole hearing corpus (as corpus_vocab
    reads it); cached by size and seed."""
    from deeptalk.speech.char_ctc import train_pieces

    path = cache_dir() / "data" / f"hearing-pieces-{size}-{seed}.json"
    if path.is_file():
        return path.read_text()
    out = train_pieces(_whole_corpus(seed)[:n_sentences], size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)
    return out


def _length_grouped(rows: list[dict], batch_size: int, rng: random.Random, window: int = 50) -> list[int]:
    """One epoch's order: shuffled, then sorted by length inside windows of `window` batches,
    so a batch pads little (random batches of this corpus were mostly padding), and the batches shuffled again."""
    perm = list(range(len(rows)))
    rng.shuffle(perm)
    batches = []
    for s in range(0, len(perm), batch_size * window):
        chunk = sorted(perm[s : s + batch_size * window], key=lambda i: rows[i]["feats"].shape[0])
        batches += [chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]


def _spec_augment(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Two time masks (up to 10 % each) and two channel masks (up to 27 channels) on [T, D]."""
    x = x.clone()
    t, d = x.shape
    for _ in range(2):
        w = rng.randint(0, max(1, t // 10))
        s = rng.randint(0, max(0, t - w))
        x[s : s + w] = 0
        w = rng.randint(0, 27)
        s = rng.randint(0, max(0, d - w))
        x[:, s : s + w] = 0
    return x


def _batch(rows: list[dict], aug: random.Random | None) -> tuple[torch.Tensor, torch.Tensor]:
    feats = [r["feats"].float() for r in rows]
    if aug is not None:
        feats = [_spec_augment(f, aug) for f in feats]
    lengths = torch.tensor([f.shape[0] for f in feats])
    out = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lengths


def ctc_dev_wer(projector, dev_rows: list[dict], tokenizer) -> dict:
    """Greedy CTC transcripts of the dev shard: corpus WER (Whisper's English normaliser),
    overall and per voice."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    refs, hyps = [], []
    projector.eval()
    for r in dev_rows:
        refs.append(norm(r["text"]) or "-")
        hyps.append(norm(projector.heard_text(r["feats"].float().unsqueeze(0), tokenizer)))
    projector.train()
    by_voice: dict[str, list[int]] = {}
    for i, r in enumerate(dev_rows):
        by_voice.setdefault(r["voice"], []).append(i)
    voices = {v: round(jiwer.process_words([refs[i] for i in idx], [hyps[i] for i in idx]).wer, 4)
              for v, idx in sorted(by_voice.items())}
    m = jiwer.process_words(refs, hyps)
    return {"wer": m.wer, "n": len(refs), "by_voice": voices, "example": {"ref": dev_rows[0]["text"], "hyp": hyps[0]}}


def train_ctc(projector, train_files: list[Path], dev_file: Path, tokenizer, cfg: HearingTrain, out: Path,
              resume: bool = False, log=print, probes: dict[str, Path] | None = None) -> dict:
    """Train `projector` (a tied CTCProjector) with CTC; checkpoints and the curve live in `out`.
    `probes` (name -> shard) are more held-out sets whose WER the curve records as `<name>_wer`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for f in train_files for r in torch.load(f, weights_only=False)]
    dev_rows = torch.load(dev_file, weights_only=False)
    probe_rows = {k: torch.load(f, weights_only=False) for k, f in (probes or {}).items()}
    kept = [{**r, "target": t} for r in rows if (t := projector.targets(r)) is not None]
    log(f"hearing: {len(kept)} of {len(rows)} training utterances can be written in the head's units")
    params = [p for p in projector.parameters() if p.requires_grad]
    top = {id(p) for p in projector.top.parameters()} if getattr(projector, "top", None) is not None else set()
    groups = [{"params": [p for p in params if id(p) not in top]}]
    if top:
        groups.append({"params": [p for p in params if id(p) in top], "lr": cfg.top_lr or cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / cfg.max_steps))))
    state_path, curve_path = out / "state.pt", out / "curve.csv"
    step, seconds = 0, 0.0
    if resume and state_path.is_file():
        st = torch.load(state_path, weights_only=False)
        projector.load_state_dict(st["projector"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, seconds = st["step"], st["seconds"]
        log(f"hearing: resumed at step {step} ({seconds / 60:.1f} min)")
    elif curve_path.exists():
        curve_path.unlink()
    order: list[int] = []
    epoch = 0

    def next_batch() -> list[dict]:
        nonlocal order, epoch
        if len(order) < cfg.batch_size:
            epoch += 1
            order = order + _length_grouped(kept, cfg.batch_size, random.Random(cfg.seed * 1000 + epoch))
        take, order = order[: cfg.batch_size], order[cfg.batch_size :]
        return [kept[i] for i in take]

    for _ in range(step):  # replay the data order of the finished steps
        next_batch()

    def evaluate():
        m = ctc_dev_wer(projector, dev_rows, tokenizer)
        extra = {f"{k}_wer": round(ctc_dev_wer(projector, rows_k, tokenizer)["wer"], 4) for k, rows_k in probe_rows.items()}
        torch.save(projector.state_dict(), out / f"projector-{step:06d}.pt")  # for curves of downstream metrics
        new = not curve_path.exists()
        with curve_path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "minutes", "utterances", "dev_wer", *extra])
            w.writerow([step, round(seconds / 60, 2), step * cfg.batch_size, round(m["wer"], 4), *extra.values()])
        log(f"hearing: step {step} ({seconds / 60:.1f} min) dev WER {m['wer']:.3f} {extra or ''} "
            f" e.g. {m['example']['hyp']!r}")
        return m

    def save():
        tmp = state_path.with_suffix(".tmp")
        torch.save({"projector": projector.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "step": step, "seconds": seconds, "config": asdict(cfg)}, tmp)
        tmp.rename(state_path)

    last = evaluate() if step == 0 else None
    projector.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="hearing (ctc)")
    while step < cfg.max_steps and seconds < cfg.max_seconds:
        t0 = time.monotonic()
        batch = next_batch()
        aug = random.Random(cfg.seed * 1_000_003 + step) if cfg.spec_augment else None  # per step: resume-exact
        feats, lengths = _batch(batch, aug)
        loss = projector.ctc_loss(feats, lengths, [r["target"] for r in batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        seconds += time.monotonic() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.checkpoint_every == 0:
            save()
        if step % cfg.eval_every == 0:
            last = evaluate()
    bar.close()
    final = last if last is not None and step % cfg.eval_every == 0 else evaluate()  # no row twice
    save()
    return {"steps": step, "seconds": seconds, "dev_wer": final["wer"], "utterances": len(kept)}
