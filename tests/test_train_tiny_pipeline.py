"""The tiny recipe end to end: every stage, the stage hook, resume after a kill, and the same
command in two processes under `accelerate launch --multi_gpu --num_processes 2` (CPU gloo). Slow (minutes on 2 CPU cores):
run with `pytest -m slow tests/test_train_tiny_pipeline.py`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
PY = sys.executable

pytestmark = pytest.mark.slow


def train(*args, timeout=2400):
    return subprocess.run([PY, "-m", "deeptalk.train", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def kill_once_saved(args: list[str], stage_dir: Path) -> int:
    """Start `deeptalk.train args`, SIGKILL it once the stage has saved a state; the saved step."""
    proc = subprocess.Popen([PY, "-m", "deeptalk.train", *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    progress = stage_dir / "state" / "progress.json"
    t0 = time.time()
    while not progress.is_file() and proc.poll() is None and time.time() - t0 < 1800:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(progress.read_text())["step"]


def test_all_stages_and_hook(tmp_path):
    out, marks = tmp_path / "run", tmp_path / "hook.txt"
    p = train("--recipe", "tiny", "--output", str(out), "--hook", f"echo {{stage}} {{checkpoint}} >> {marks}")
    assert p.returncode == 0, p.stderr[-3000:]
    stages = ["1", "assign", "2.1", "2.2", "3"]
    assert marks.read_text().split("\n")[:-1] == [f"{s} {out / f'stage-{s}'}" for s in stages]
    for s in stages:
        info = json.loads((out / f"stage-{s}" / "stage.json").read_text())
        assert info["done"] and info["hook"]["returncode"] == 0
        assert (out / f"stage-{s}" / "model.safetensors").is_file()
    for s in ("1", "2.1", "2.2", "3"):
        df = pd.read_csv(out / f"stage-{s}" / "loss.csv")
        assert list(df["step"]) == list(range(1, len(df) + 1)) and df["loss"].notna().all()
        assert (out / f"stage-{s}" / "loss.png").stat().st_size > 1000
    assign = json.loads((out / "stage-assign" / "assignment.json").read_text())
    assert assign["method"] == "adaptive" and all(len(l) == 2 for l in assign["speech_experts"])
    assert (out / "stage-assign" / "modality_load.png").is_file()
    # stage 2.1 trained only speech experts: text experts of the final 2.1 model equal assign's
    from safetensors.torch import load_file

    a, b = (load_file(str(out / f"stage-{s}" / "model.safetensors")) for s in ("assign", "2.1"))
    for l, speech in enumerate(assign["speech_experts"], start=1):
        for e in range(6):
            w = f"model.layers.{l}.mlp.experts.{e}.up_proj.weight"
            same = bool((a[w] == b[w]).all())
            assert same == (e not in speech), (w, speech)
    # export: the last stage as a delta over the base; exact in float32, refused over the cap
    ship = tmp_path / "ship"
    p = train("--recipe", "tiny", "--output", str(out), "--stages", "", "--export", str(ship), "--export-dtype", "float32")
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (ship / "model.safetensors").exists() and (ship / "delta.safetensors").is_file()
    assert (ship / "modality_load.png").is_file() and (ship / "assignment.json").is_file()
    assert {f"loss-stage-{s}.csv" for s in ("1", "2.1", "2.2", "3")} <= {f.name for f in ship.iterdir()}
    import torch

    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.training.build import build_base
    from deeptalk.training.recipe import load_recipe

    dense = build_base(load_recipe("tiny"))[0]
    shipped, trained = load_checkpoint(ship, base=dense), load_checkpoint(out / "stage-3")
    ids = torch.arange(5, 25).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(shipped.model(input_ids=ids).logits, trained.model(input_ids=ids).logits)
    p = train("--recipe", "tiny", "--output", str(out), "--stages", "", "--export", str(tmp_path / "big"),
              "--export-max-mb", "0.0001")
    assert p.returncode != 0 and "over the" in p.stderr and not (tmp_path / "big").exists()
    # a failing hook stops the pipeline with its exit code named
    p = train("--recipe", "tiny", "--output", str(tmp_path / "gate"), "--stages", "1", "--hook", "exit 3")
    assert p.returncode != 0 and "hook failed (exit 3)" in p.stderr


def test_resume_after_kill(tmp_path):
    recipe = yaml.safe_load((ROOT / "deeptalk" / "recipes" / "tiny.yaml").read_text())
    recipe["stages"]["1"].update(max_steps=8, checkpoint_every=2)
    path = tmp_path / "tiny_long.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    killed_at = kill_once_saved(["--recipe", str(path), "--output", str(out), "--stages", "1"], out / "stage-1")
    assert 2 <= killed_at < 8
    p = train("--recipe", str(path), "--output", str(out), "--stages", "1", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resuming at step {killed_at}" in p.stdout + p.stderr
    assert "calibration forward" not in p.stderr  # the upcycled model came from the run's cache
    df = pd.read_csv(out / "stage-1" / "loss.csv")
    steps = list(df["step"])
    assert steps[-1] == 8 and sorted(set(steps)) == list(range(1, 9))
    assert json.loads((out / "stage-1" / "stage.json").read_text())["steps"] == 8
    # resumed again with more stages: it starts from the finished stage 1, not a new upcycle
    p = train("--recipe", str(path), "--output", str(out), "--stages", "1,assign", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "calibration forward" not in p.stderr and "clustering neurons" not in p.stderr
    assert (out / "stage-assign" / "stage.json").is_file()


def test_accelerate_two_processes_cpu(tmp_path):
    # accelerate 1.15: `launch --cpu --num_processes 2` starts ONE process (multi-CPU needs
    # mpirun there); `--multi_gpu` on a machine without GPUs starts 2 gloo processes (MULTI_CPU)
    out = tmp_path / "run"
    p = subprocess.run([str(Path(PY).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                        "-m", "deeptalk.train", "--recipe", "tiny", "--output", str(out), "--stages", "1,assign,2.1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=2400)
    assert p.returncode == 0, p.stderr[-3000:]
    for s in ("1", "2.1"):
        info = json.loads((out / f"stage-{s}" / "stage.json").read_text())
        assert info["world_size"] == 2 and info["done"]


def test_ctc_projector_recipe(tmp_path):
    """tiny-ctc: stage 1 trains the CTC head (word pieces) on the hearing corpus (LLM
    untouched), the later stages read the tokens it heard on the text path; the checkpoint hears."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.generate import SpeechGenerator
    from deeptalk.sequence import TEXT_MODALITY
    from deeptalk.speech.char_ctc import spelled
    from deeptalk_common.tts import synthesize

    out = tmp_path / "run"
    p = train("--recipe", "tiny-ctc", "--output", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((out / "stage-1" / "stage.json").read_text())
    assert info["trains"] == "ctc projector" and info["steps"] == 3 and 0 <= info["dev_wer"]
    curve = pd.read_csv(out / "stage-1" / "hearing_curve.csv")
    assert list(curve["step"]) == [0, 2, 3]
    # stage 1 changed no LLM weight; the projector did not train after it
    base = out / "stage-1" / "model.safetensors"
    m1, m3 = load_file(str(base)), load_file(str(out / "stage-3" / "model.safetensors"))
    assert set(m1) < set(m3)   # stage assign added the speech copies
    p1, p3 = (load_file(str(out / f"stage-{s}" / "speech_encoder.safetensors")) for s in ("1", "3"))
    assert all(torch.equal(p1[k], p3[k]) for k in p1) and "pieces" in p1   # the head spells in word pieces
    # Whisper's last block trained with the projector and travels in its state
    whisper = load_checkpoint(out / "stage-1").encoder.whisper
    assert not torch.equal(p1["top.blocks.0.mlp.0.weight"], whisper.blocks[-1].mlp[0].weight)
    # the speech experts are copies (assign copy: true): the text path is the upcycled FFN exactly
    a1, aa = load_checkpoint(out / "stage-1"), load_checkpoint(out / "stage-assign")
    record = json.loads((out / "stage-assign" / "assignment.json").read_text())
    assert aa.model.config.num_routed_experts == a1.model.config.num_routed_experts + 2 == 8
    assert record["speech_experts"] == [[6, 7]] * 2 and len(record["copied_from"]) == 2
    assert record["copies_down_start"] == "zero"   # answer routing "both"
    stage = json.loads((out / "stage-assign" / "stage.json").read_text())
    assert stage["copies_down_start"] == "zero" and stage["measure_top_k"] == 2
    assert aa.model.config.routing_mode == "modality" and a1.model.config.speech_experts is None
    ids = a1.tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(aa.model(input_ids=ids).logits, a1.model(input_ids=ids).logits, rtol=0, atol=1e-4)
    # exported as a delta, the copies (duplicated neuron indices) rebuild from the base exactly
    from deeptalk.training.build import build_base
    from deeptalk.training.recipe import load_recipe

    p = train("--recipe", "tiny-ctc", "--output", str(out), "--stages", "", "--export", str(tmp_path / "ship"),
              "--export-dtype", "float32")
    assert p.returncode == 0, p.stderr[-3000:]
    shipped = load_checkpoint(tmp_path / "ship", base=build_base(load_recipe("tiny-ctc"))[0])
    assert list(pd.read_csv(tmp_path / "ship" / "hearing-stage-1.csv")["step"]) == [0, 2, 3]  # stage 1's story
    b = load_checkpoint(out / "stage-3")
    with torch.no_grad():
        assert torch.equal(shipped.model(input_ids=ids).logits, b.model(input_ids=ids).logits)
    assert b.encoder.reads_as_text
    # the recipe's decode: lexicon reaches every stage's config and the shipped one; training heard greedily
    for d in (out / "stage-1", out / "stage-3", tmp_path / "ship"):
        assert json.loads((d / "speech_encoder.json").read_text())["decode"] == "lexicon", d
    assert b.encoder.projector.lexicon is not None and shipped.encoder.projector.lexicon is not None
    gen = SpeechGenerator(b.model, b.tokenizer, encoder=b.encoder, codec=b.codec)
    wav, sr = synthesize("What is the capital of France?")
    prompt = gen.prompt(audio=wav, sample_rate=sr)
    n = prompt.audio_flags["speech_positions"]
    slots = prompt.input_ids[0] == b.model.config.special_token_id("<|audio_in|>")
    assert int(slots.sum()) == n and "heard" in prompt.audio_flags
    assert set(spelled(prompt.audio_flags["heard"]).split()) <= set(b.encoder.projector.lexicon.words)
    assert (prompt.token_modality[0] == TEXT_MODALITY).all()
    assert b.model.config.special_token_id("<|audio_in_end|>") not in prompt.input_ids[0].tolist()
    assert np.isfinite(gen.generate(prompt).steps)
    # a stage after 1 that lists the projector is refused (its positions are fixed by then)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extends": "tiny-ctc", "name": "bad",
                                   "stages": {"2.2": {"train": ["shared_experts", "projector"]}}}))
    import shutil

    shutil.copytree(out / "stage-1", tmp_path / "bad" / "stage-1")
    shutil.copytree(out / "stage-assign", tmp_path / "bad" / "stage-assign")
    shutil.copytree(out / "stage-2.1", tmp_path / "bad" / "stage-2.1")
    p = train("--recipe", str(bad), "--output", str(tmp_path / "bad"), "--stages", "2.2")
    assert p.returncode != 0 and "a CTC projector trains in stage 1 only" in p.stderr


def test_phone_units_recipe(tmp_path):
    """tiny with phone units in the "words" layout: spoken answers' codes come from their text, word
    by word (no synthesis), stage 2.1 adds written questions, "repeat this sentence" turns, lists of
    words to say, statements about people and places and lists of their names, and the checkpoint
    speaks through Piper."""
    import numpy as np

    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.generate import SpeechGenerator, StreamConfig
    from deeptalk.speech.codec_phones import PhoneCodec

    recipe = tmp_path / "tiny-phones.yaml"
    recipe.write_text(yaml.safe_dump({"extends": "tiny", "name": "tiny-phones", "codec": "phones",
                                      "answer_routing": "both", "answer_layout": "words",
                                      "inference_routing": "modality",
                                      "data": {"repeat": 6, "word_lists": 3, "qa_written": True,
                                               "name_statements": 2, "name_lists": 2},
                                      "stages": {"2.1": {"routing": "modality"}}}))
    out = tmp_path / "run"
    p = train("--recipe", str(recipe), "--output", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "stage-3" / "codec.json").read_text()) == {"name": "phones"}
    info = json.loads((out / "stage-2.1" / "stage.json").read_text())
    # spoken + written questions, repeat turns, word lists, name statements, name lists
    assert info["examples"] == 4 * 2 + 6 + 3 + 2 + 2
    assert info["routing_mode_train"] == "modality"
    b = load_checkpoint(out / "stage-3")
    assert isinstance(b.codec, PhoneCodec) and b.model.config.num_codebooks == 1
    assert b.model.config.answer_routing == "both" and b.model.config.routing_mode == "modality"
    assert b.model.config.answer_layout == "words"
    assert b.model.config.codebook_size == b.codec.codebook_size
    gen = SpeechGenerator(b.model, b.tokenizer, encoder=b.encoder, codec=b.codec)
    res = gen.generate(gen.prompt("Say this: good morning.", speak=True), output="both", cfg=StreamConfig(max_speech_steps=12))
    assert res.codes.shape[0] == 1 and res.sample_rate == 22050 and np.isfinite(res.audio).all()


def test_a_stage_travels_and_the_run_goes_on(tmp_path):
    """Stage 2.1 of tiny-phones packed, trained by `portable train` as on a borrowed GPU (here on
    the CPU, base from a GGUF-free model folder), cut into parts, unpacked into a copy of the run:
    `--resume` takes it as finished and trains 2.2 and 3 from it."""
    import shutil

    from safetensors.torch import load_file

    from deeptalk.training.build import build_base

    recipe = tmp_path / "tiny-phones.yaml"
    spec = {"extends": "tiny", "name": "tiny-phones", "codec": "phones", "answer_routing": "both",
            "answer_layout": "words", "inference_routing": "modality",
                                      "data": {"repeat": 6, "word_lists": 3, "qa_written": True},
            "stages": {"2.1": {"routing": "modality"}}}
    recipe.write_text(yaml.safe_dump(spec))
    run, pack, result = tmp_path / "run", tmp_path / "pack", tmp_path / "result"
    p = train("--recipe", str(recipe), "--output", str(run), "--stages", "1,assign")
    assert p.returncode == 0, p.stderr[-3000:]

    def portable(*args):
        return subprocess.run([PY, "-m", "deeptalk.training.portable", *args], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=900)

    p = portable("pack", "--run", str(run), "--stage", "2.1", "--out", str(pack), "--repeat", "10")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((pack / "pack.json").read_text())["examples"] == 4 + 10   # written questions + repeats
    base = tmp_path / "base"
    dense, tokenizer, _ = build_base(yaml.safe_load((run / "recipe.yaml").read_text()))
    dense.save_pretrained(base)
    tokenizer.save_pretrained(base)
    p = portable("train", "--pack", str(pack), "--out", str(result), "--base", str(base), "--max-steps", "3",
                 "--batch-size", "4", "--bundle-to", str(tmp_path / "parts"), "--part-mb", "0.3")
    assert p.returncode == 0, p.stderr[-3000:]
    parts = sorted((tmp_path / "parts").iterdir())
    assert len(parts) > 1 and all(f.stat().st_size <= 0.3 * 2**20 for f in parts)
    gpu_run = tmp_path / "run-gpu"
    shutil.copytree(run, gpu_run)
    p = portable("unpack", "--pack", str(pack), "--result", str(tmp_path / "parts"), "--run", str(gpu_run))
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((gpu_run / "stage-2.1" / "stage.json").read_text())
    assert info["done"] and info["steps"] == 3 and info["portable"]["pack_examples"] == 14
    # what trained is what the stage trains: speech experts moved, text experts are assign's
    assign = json.loads((run / "stage-assign" / "assignment.json").read_text())["speech_experts"]
    a, b = (load_file(str(gpu_run / f"stage-{s}" / "model.safetensors")) for s in ("assign", "2.1"))
    for l, speech in enumerate(assign, start=1):
        for e in range(6):
            w = f"model.layers.{l}.mlp.experts.{e}.up_proj.weight"
            assert bool((a[w] == b[w]).all()) == (e not in speech), (w, speech)
    p = train("--recipe", str(recipe), "--output", str(gpu_run), "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage 2.1: done already" in p.stdout + p.stderr
    assert json.loads((gpu_run / "stage-3" / "stage.json").read_text())["done"]


def test_a_snapshot_of_a_running_stage_is_the_model_its_state_holds(tmp_path):
    """A stage killed mid-way: its saved state as a checkpoint (deeptalk.training.snapshot) equals,
    tensor for tensor, the stage the pipeline finishes from that same state."""
    from safetensors.torch import load_file

    from deeptalk.checkpoint import load_checkpoint

    recipe = yaml.safe_load((ROOT / "deeptalk" / "recipes" / "tiny.yaml").read_text())
    recipe["stages"]["2.1"].update(max_steps=40, checkpoint_every=2)
    path = tmp_path / "tiny_long.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    step = kill_once_saved(["--recipe", str(path), "--output", str(out), "--stages", "1,assign,2.1"], out / "stage-2.1")
    snap = tmp_path / "snap"
    p = subprocess.run([PY, "-m", "deeptalk.training.snapshot", "--run", str(out), "--stage", "2.1", "--out", str(snap)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((snap / "stage.json").read_text())["step"] == step
    recipe["stages"]["2.1"]["max_steps"] = step   # resumed at `step`, the stage ends at once
    path.write_text(yaml.safe_dump(recipe))
    p = train("--recipe", str(path), "--output", str(out), "--stages", "1,assign,2.1", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = (load_file(str(d / "model.safetensors")) for d in (snap, out / "stage-2.1"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(snap).model.config.routing_mode == load_checkpoint(out / "stage-2.1").model.config.routing_mode


def test_transcription_turns_and_the_stage_3_mix(tmp_path):
    """data.asr_corpus adds hearing-corpus sentences to the ASR set, data.asr_instructions words
    its turns several ways, and stage 3 takes the turns `mix` asks for, here with the shared
    experts (the text side's always-on part) training beside the speech side under distillation."""
    from deeptalk.training.recipe import load_recipe

    recipe = tmp_path / "mix.yaml"
    wordings = ["Transcribe what was said.", "Type out what you hear."]
    recipe.write_text(yaml.safe_dump({
        "extends": "tiny-ctc", "name": "tiny-mix",
        "data": {"asr_corpus": 3, "asr_instructions": wordings},
        "stages": {"3": {"train": ["speech_experts", "audio", "shared_experts"], "max_steps": 2,
                         "mix": {"speaking": 2, "text": 1, "asr": 5},
                         "distill": {"weight": 1.0, "temperature": 1.0}}}}))
    out = tmp_path / "run"
    p = train("--recipe", str(recipe), "--output", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((out / "stage-3" / "stage.json").read_text())
    assert info["examples"] == 2 + 1 + 5 and info["steps"] == 2
    assert info["distill"]["weight"] == 1.0 and info["distill_examples"] >= 1
    ours = json.loads((out / "summary.json").read_text())["data"]["asr"]
    assert len(ours["spec"]["sentences"]) == load_recipe("tiny-ctc")["data"]["asr"] + 3  # three corpus sentences more
    # every turn asks with one of the wordings, and each wording is asked
    from deeptalk.checkpoint import load_checkpoint
    from deeptalk.training.examples import asr_examples
    from deeptalk.training.recipe_data import build_data

    b = load_checkpoint(out / "stage-3", decode="greedy")
    data = build_data(load_recipe(str(recipe)))
    asked = [b.tokenizer.decode(e.ids) for e in asr_examples(data["asr"], b.encoder, b.tokenizer, b.model.config,
                                                              wordings, 0)]
    assert all(sum(w in t for w in wordings) == 1 for t in asked)
    assert all(any(w in t for t in asked) for w in wordings)
