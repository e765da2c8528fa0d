"""The parts of a travelling stage that need no model: its examples on disk, its result in parts,
and the one-line refusals."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deeptalk.training.examples import Example
from deeptalk.training.portable import bundle, load_examples, save_examples, unbundle

ROOT = Path(__file__).resolve().parents[1]


def test_examples_come_back_as_they_were_saved(tmp_path):
    spoken = Example([5, 6, 7, 8], [-100, -100, 7, 8], [0, 0, 2, 2], audio=torch.tensor([[-1, -1, 3, 1023]]))
    text = Example([9, 10], [9, 10], [0, 0])
    save_examples([spoken, text, spoken], tmp_path / "ex.safetensors")
    back = load_examples(tmp_path / "ex.safetensors")
    assert [e.ids for e in back] == [spoken.ids, text.ids, spoken.ids]
    assert [e.labels for e in back] == [spoken.labels, text.labels, spoken.labels]
    assert [e.modality for e in back] == [spoken.modality, text.modality, spoken.modality]
    assert back[1].audio is None and torch.equal(back[0].audio, spoken.audio) and back[0].audio.dtype == torch.long
    assert all(e.feats is None for e in back)


def test_an_example_with_audio_input_does_not_travel(tmp_path):
    heard = Example([1, 2], [-100, 2], [1, 0], feats=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="Whisper features"):
        save_examples([heard], tmp_path / "ex.safetensors")


def test_a_result_cut_into_parts_comes_back_whole(tmp_path):
    res = tmp_path / "result"
    (res / "delta").mkdir(parents=True)
    payload = torch.randint(0, 255, (700_000,), dtype=torch.uint8).numpy().tobytes()
    (res / "delta" / "delta.safetensors").write_bytes(payload)
    (res / "stage.json").write_text("{}")
    parts = bundle(res, tmp_path / "parts", part_mb=0.25)
    assert len(parts) == 3 and all(p.stat().st_size <= 0.25 * 2**20 for p in parts)
    back = unbundle(tmp_path / "parts", tmp_path / "out")
    assert (back / "delta" / "delta.safetensors").read_bytes() == payload and (back / "stage.json").is_file()
    assert unbundle(res, tmp_path / "unused") == res   # a result folder is taken as it is
    with pytest.raises(FileNotFoundError, match="parts"):
        unbundle(tmp_path / "out" / "result" / "delta", tmp_path / "x")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "deeptalk.training.portable", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_packing_a_stage_whose_start_is_not_finished_is_one_line(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    p = run_cli("pack", "--run", str(tmp_path), "--stage", "2.1", "--out", str(tmp_path / "pack"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"portable pack: {tmp_path / 'stage-assign'}: not a finished stage; stage 2.1 starts from it"


def test_a_stage_with_audio_inputs_cannot_be_packed(tmp_path):
    p = run_cli("pack", "--run", str(tmp_path), "--stage", "3", "--out", str(tmp_path / "pack"))
    assert p.returncode == 2 and "invalid choice: '3'" in p.stderr
