"""Time to first audio of the reference model's streaming path, with its breakdown and floor.

    python benchmarks/latency_deeptalk.py                       # -> benchmarks/results/latency_deeptalk.json
    python benchmarks/latency_deeptalk.py --variants dynamic,static --chunking 2:1,1:0 --threads 1

The model is the real SmolLM2-135M-Instruct upcycled into the DeepTalk MoE (untrained speech
heads emit noise codes: the timing is what counts), hearing through the real Whisper tiny.en
encoder (+ a random projector) and speaking through the codec (the shipped offline codec,
or `--codec random:Q:K:stack`, a random one of that shape: Griffin-Lim costs the same).

Per warm request (spoken questions synthesised by Piper; the first request is the cold one):
    encoder        end of user speech -> speech embeddings ready
    prefill        -> first step's logits
    decode_to_first_chunk  -> the frames of the first chunk exist (first_chunk_frames + Q steps)
    codec_decode   -> the first chunk's samples
    ttfa           end of user speech -> first playable samples (the sum)
The floor: the same pieces measured alone, without the streaming loop: the encoder, one
prefill forward, `first_chunk_frames + Q` bare decode forwards with a KV cache, one codec
decode of the first chunk. RTF = (generation + decoding time after prefill) / audio produced;
a stall is a chunk that arrives after its real-time playback deadline.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [
    "What is a baby kangaroo called?",
    "What is the opposite of ancient?",
    "What does the Latin word aqua mean?",
    "Who wrote the play Romeo and Juliet?",
    "How many legs does a spider have?",
    "What colour do you get by mixing blue and yellow?",
    "What is the largest planet in our solar system?",
    "Which animal is known as the king of the jungle?",
]


def pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else None


def build(args):
    from deeptalk.speech.codec_loader import load_codec
    from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig
    from deeptalk.upcycle import extend_tokenizer, upcycle
    from deeptalk_common.base_llm import load_base_llm

    if args.checkpoint:   # a trained model: its own routing, heads, projector and codec
        from deeptalk.checkpoint import load_checkpoint

        b = load_checkpoint(args.checkpoint, codec=None if args.codec == "offline" else args.codec,
                            decode=args.hearing, written=args.written)
        return b.model.eval(), b.tokenizer, b.encoder.eval(), b.codec
    if args.codec.startswith("random:"):
        from deeptalk.speech.codec_offline import OfflineCodec

        q, k, stack = (int(x) for x in args.codec.split(":")[1:])
        rng = np.random.default_rng(0)
        codec = OfflineCodec(rng.normal(size=(q, k, 80 * stack)).astype(np.float32) * 0.3, np.zeros(80),
                             np.ones(80), stack=stack)
    else:
        codec = load_codec(args.codec)
    dense, tok = load_base_llm(args.base)
    model = upcycle(dense, num_routed_experts=args.routed, num_shared_experts=args.shared, top_k=args.top_k,
                    calibrate_tokens=args.calibrate_tokens, tokenizer=tok, router_steps=args.router_steps,
                    num_codebooks=codec.num_codebooks, codebook_size=codec.codebook_size)
    extend_tokenizer(tok, model.config)
    torch.manual_seed(0)
    enc = SpeechEncoder.from_whisper(SpeechEncoderConfig(hidden_size=model.config.hidden_size, stride=args.stride,
                                                         window=args.window))
    return model.eval(), tok, enc.eval(), codec


@torch.inference_mode()
def floor_once(gen, prompt_audio, sr, cfg, first_codes=None):
    """The pieces of the first chunk, each alone: encoder, prefill, bare decode steps, codec.
    `first_codes` [Q, F]: the first chunk that sounded in this prompt's stream (a codec that speaks
    whole words needs a word's phonemes before its first audio: the floor takes as many steps and
    decodes those codes); None: `first_chunk_frames` frames."""
    model, q = gen.model, gen.cfg.num_codebooks
    t0 = time.perf_counter()
    prompt = gen.prompt(audio=prompt_audio, sample_rate=sr, speak=True)
    t1 = time.perf_counter()
    out = model(input_ids=prompt.input_ids, speech_embeds=prompt.speech_embeds, token_modality=prompt.token_modality,
                use_cache=True, logits_to_keep=1)
    t2 = time.perf_counter()
    past = out.past_key_values
    ids = torch.tensor([[gen.special["<|text_pad|>"]]])
    codes = torch.zeros(1, q, 1, dtype=torch.long)
    mod = torch.ones(1, 1, dtype=torch.long)
    threads = torch.get_num_threads()
    if cfg.decode_threads:
        torch.set_num_threads(cfg.decode_threads)
    frames = np.zeros((q, cfg.first_chunk_frames), dtype=np.int64) if first_codes is None else first_codes
    for _ in range(frames.shape[1] + q):
        out = model(input_ids=ids, audio_codes=codes, past_key_values=past, token_modality=mod, use_cache=True)
        past = out.past_key_values
    t3 = time.perf_counter()
    torch.set_num_threads(threads)
    decoder = gen.stream_decoder(cfg)
    if not len(decoder.push(frames)) and first_codes is not None:
        decoder.flush()   # the stream's first audio was its flush (an answer shorter than a first chunk)
    t4 = time.perf_counter()
    return {"encoder": t1 - t0, "prefill": t2 - t1, "decode_steps": t3 - t2, "codec_decode": t4 - t3,
            "steps": frames.shape[1] + q, "prompt_tokens": int(prompt.input_ids.shape[1])}


def stream_once(gen, audio, sr, cfg):
    t0 = time.monotonic()
    prompt = gen.prompt(audio=audio, sample_rate=sr, speak=True, t_start=t0)
    marks, chunks, end, first_frames = {}, [], None, None
    for ev in gen.stream(prompt, "speech", cfg):
        if ev.kind == "mark":
            marks.setdefault(ev.name, ev.t)
            if ev.name == "first_chunk_ready":
                first_frames = ev.info["frames"]
        elif ev.kind == "audio" and len(ev.audio):
            chunks.append((ev.t, len(ev.audio) / ev.sample_rate))
        elif ev.kind == "end":
            end = ev
    first = chunks[0][0]
    # stalls: playback starts with the first chunk; chunk k must arrive before the audio before it has played
    played, stalls = first, 0
    for t, dur in chunks:
        if t > played + 1e-9:
            stalls += 1
            played = t
        played += dur
    audio_s = sum(d for _, d in chunks)
    return {
        "encoder": marks["encoder_done"] - t0,
        "prefill": marks["prefill_done"] - marks["encoder_done"],
        "decode_to_first_chunk": marks["first_chunk_ready"] - marks["prefill_done"],
        "codec_decode": marks["first_chunk_decoded"] - marks["first_chunk_ready"],
        "ttfa": first - t0,
        "rtf": (end.t - marks["prefill_done"]) / audio_s if audio_s else None,
        "audio_seconds": audio_s, "chunks": len(chunks), "stalls": stalls, "steps": end.info["steps"],
        "prompt_tokens": int(prompt.input_ids.shape[1]), "first_chunk_positions": first_frames,
        "first_codes": end.info["codes"][:, :first_frames],
    }


def encoder_window_check(encoder, texts):
    """Whisper tiny.en transcripts with the encoder run on the exact frames (positional table
    sliced) vs Whisper's 30 s window: WER against the text, encoder time, feature similarity."""
    import jiwer
    import whisper
    from whisper.normalizers import EnglishTextNormalizer

    from deeptalk.speech.encoder import prepare_audio
    from deeptalk_common.tts import synthesize
    from deeptalk_common.whisper_ckpt import load_whisper

    model = load_whisper(encoder.config.whisper)
    norm = EnglishTextNormalizer()
    real_encoder = model.encoder

    class Fixed(torch.nn.Module):  # hands precomputed features to whisper.decode
        feats = None

        def forward(self, mel):
            return self.feats

    out = {}
    sims = []
    for window in ("exact", "pad30"):
        encoder.config.window = window
        hyps, secs = [], []
        for text in texts:
            wav, sr = synthesize(text)
            a = prepare_audio(wav, sr)
            t = time.perf_counter()
            f = encoder.whisper_features(a)
            secs.append(time.perf_counter() - t)
            if window == "pad30":  # Whisper's own decoding sees all 1500 frames
                f = real_encoder(encoder.mel(a).unsqueeze(0))[0]
            model.encoder = Fixed()
            model.encoder.feats = f.unsqueeze(0)
            mel = torch.zeros(1, 80, 3000)
            hyps.append(whisper.decode(model, mel, whisper.DecodingOptions(language="en", without_timestamps=True,
                                                                           fp16=False))[0].text)
            model.encoder = real_encoder
        refs = [norm(t) for t in texts]
        # Whisper's decoder learnt to stop at the end of a 30 s window: on the exact window it
        # tends to repeat the sentence. The first sentence shows what the features carry.
        first = [re.split(r"(?<=[.?!])\s", h.strip(), maxsplit=1)[0] for h in hyps]
        out[window] = {"wer": jiwer.process_words(refs, [norm(h) for h in hyps]).wer,
                       "wer_first_sentence": jiwer.process_words(refs, [norm(h) for h in first]).wer,
                       "encoder_seconds_p50": pct(secs, 50), "examples": [h[:200] for h in hyps[:3]]}
    encoder.config.window = "exact"
    for text in texts:
        wav, sr = synthesize(text)
        a = prepare_audio(wav, sr)
        fe = encoder.whisper_features(a)
        encoder.config.window = "pad30"
        fp = encoder.whisper_features(a)
        encoder.config.window = "exact"
        sims.append(float(torch.nn.functional.cosine_similarity(fe, fp, dim=-1).mean()))
    out["feature_cosine_mean"] = float(np.mean(sims))
    out["utterances"] = len(texts)
    return out


def run_variant(gen, audios, cfg, n_floor):
    runs = [stream_once(gen, a, sr, cfg) for a, sr in audios]
    cold, warm = runs[0], runs[1:]
    floors = [floor_once(gen, a, sr, cfg, r.pop("first_codes")) for (a, sr), r in zip(audios[1 : 1 + n_floor], warm)]
    for r in runs:
        r.pop("first_codes", None)
    keys = ("encoder", "prefill", "decode_to_first_chunk", "codec_decode", "ttfa")
    summary = {k: {"p50": pct([r[k] for r in warm], 50), "p90": pct([r[k] for r in warm], 90)} for k in keys}
    floor = {k: pct([f[k] for f in floors], 50) for k in ("encoder", "prefill", "decode_steps", "codec_decode")}
    floor_total = sum(floor.values())
    return {
        "config": cfg.to_dict(),
        "warm_requests": len(warm),
        "cold_ttfa": cold["ttfa"],
        "breakdown_p50": {k: v["p50"] for k, v in summary.items()},
        "ttfa_p50": summary["ttfa"]["p50"], "ttfa_p90": summary["ttfa"]["p90"],
        "floor_p50": floor, "floor_total": floor_total,
        "ttfa_over_floor": summary["ttfa"]["p50"] / floor_total,
        "rtf_p50": pct([r["rtf"] for r in warm if r["rtf"]], 50),
        "stalls_total": sum(r["stalls"] for r in warm),
        "prompt_tokens_p50": pct([r["prompt_tokens"] for r in warm], 50),
        "decode_step_ms_floor": 1000 * floor["decode_steps"] / floors[0]["steps"],
        "runs": runs,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--codec", default="offline", help="offline | PATH | random:Q:K:stack (timing only)")
    ap.add_argument("--checkpoint", default=None,
                    help="time a trained DeepTalk checkpoint (e.g. checkpoints/reference) instead of a fresh upcycle")
    ap.add_argument("--hearing", choices=("greedy", "lexicon"), default=None,
                    help="--checkpoint: how a piece head's transcript is read (default: the checkpoint's)")
    from deeptalk.speech.written_form import FORMS

    ap.add_argument("--written", choices=FORMS, default=None,
                    help="--checkpoint with a lexicon: how heard words are written (default: the checkpoint's)")
    ap.add_argument("--routed", type=int, default=30)
    ap.add_argument("--shared", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--calibrate-tokens", type=int, default=0,
                    help="0: neurons in order, routers from gate rows (same cost per token; faster to build)")
    ap.add_argument("--router-steps", type=int, default=50)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--window", default="exact")
    ap.add_argument("--requests", type=int, default=6, help="1 cold + N-1 warm")
    ap.add_argument("--floor-requests", type=int, default=3)
    ap.add_argument("--variants", default="dynamic,static", help="KV cache variants to compare")
    ap.add_argument("--chunking", default="2:1,1:0",
                    help="comma list of first_chunk_frames:decoder_lookahead (a 1-frame first chunk needs lookahead 0)")
    ap.add_argument("--chunk-frames", type=int, default=10)
    ap.add_argument("--decoder-min-first", type=int, default=None,
                    help="phone units: phonemes that wait before the first chunk (default: the codec's)")
    ap.add_argument("--decoder-min-chunk", type=int, default=None,
                    help="phone units: phonemes that wait before each later chunk (default: the codec's)")
    ap.add_argument("--speech-steps", type=int, default=60, help="steps per request (RTF is measured over them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-threads", default="0", help="comma list; 0 = the same as --threads")
    ap.add_argument("--window-check", action="store_true", help="also compare the exact and 30 s encoder windows")
    ap.add_argument("--window-check-only", default=None, metavar="JSON",
                    help="only run the encoder window comparison and write it to JSON")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "latency_deeptalk.json"))
    args = ap.parse_args(argv)

    from deeptalk.generate import SpeechGenerator, StreamConfig
    from deeptalk_common.tts import synthesize

    torch.set_num_threads(args.threads)
    if args.window_check_only:
        from deeptalk.speech.encoder import SpeechEncoder, SpeechEncoderConfig

        enc = SpeechEncoder.from_whisper(SpeechEncoderConfig(stride=args.stride))
        res = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "whisper": enc.config.whisper,
               "torch_threads": args.threads, "load_average": os.getloadavg(), **encoder_window_check(enc, QUESTIONS)}
        Path(args.window_check_only).write_text(json.dumps(res, indent=1, default=float))
        print(json.dumps(res, indent=1, default=float))
        return
    t0 = time.monotonic()
    model, tok, enc, codec = build(args)
    build_s = time.monotonic() - t0
    gen = SpeechGenerator(model, tok, encoder=enc, codec=codec)
    audios = [synthesize(q) for q in QUESTIONS[: args.requests]]
    window = encoder_window_check(enc, QUESTIONS) if args.window_check else None
    if window:
        print("encoder window:", json.dumps({k: v for k, v in window.items() if k != "examples"}, default=str), flush=True)
    results = []
    pairs = [tuple(int(v) for v in p.split(":")) for p in args.chunking.split(",")]
    grid = [(cache, fcf, la, dt) for cache in args.variants.split(",") for fcf, la in pairs
            for dt in (int(x) for x in args.decode_threads.split(","))]
    for cache, fcf, la, dt in grid:
        cfg = StreamConfig(max_speech_steps=args.speech_steps, first_chunk_frames=fcf, chunk_frames=args.chunk_frames,
                           decoder_lookahead=la, cache=cache, decode_threads=dt or None,
                           decoder_min_first=args.decoder_min_first, decoder_min_chunk=args.decoder_min_chunk)
        r = run_variant(gen, audios, cfg, args.floor_requests)
        print(f"cache={cache} first_chunk_frames={fcf} lookahead={la} decode_threads={dt or 'all'}: "
              f"ttfa p50 {r['ttfa_p50']:.3f}s "
              f"(floor {r['floor_total']:.3f}s, x{r['ttfa_over_floor']:.2f}) breakdown "
              + " ".join(f"{k}={v:.3f}" for k, v in r["breakdown_p50"].items())
              + f" rtf {r['rtf_p50']:.2f} stalls {r['stalls_total']}", flush=True)
        results.append(r)
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        git = None
    out = {
        "benchmark": "latency_deeptalk",
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "model": ({"checkpoint": args.checkpoint, "hearing": args.hearing, "written": args.written, "top_k": model.config.num_experts_per_tok,
                   "routing_mode": model.config.routing_mode} if args.checkpoint else
                  {"base": args.base, "upcycle": {"routed": args.routed, "shared": args.shared, "top_k": args.top_k,
                                                  "calibrate_tokens": args.calibrate_tokens},
                   "speech_heads": "untrained (timing only)"})
                 | {"parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32"},
        "encoder": enc.config.to_dict(), "codec": codec.describe(),
        "hardware": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "git": git, "build_seconds": build_s, "encoder_window": window, "variants": results,
        "clock": "time.monotonic, from the moment the full user audio is handed over",
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
