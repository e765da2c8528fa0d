"""Fast checks of the trainer's pieces: recipes, the training sequence layout (it must match
what the generator decodes), batching, and the data split against the evaluation set."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

from deeptalk.config import SPECIAL_TOKENS, DeepTalkConfig
from deeptalk.delay import undo_delay_pattern
from deeptalk.sequence import answer_steps
from deeptalk.training.examples import Example, collate
from deeptalk.training.recipe import STAGES, load_recipe


def cfg(q=3, k=16):
    return DeepTalkConfig(vocab_size=100 + len(SPECIAL_TOKENS), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_routed_experts=4, num_shared_experts=0,
                          num_codebooks=q, codebook_size=k, base_vocab_size=100, special_tokens=list(SPECIAL_TOKENS))


@pytest.mark.parametrize("name", ["tiny", "reference", "reference-mlp-rvq", "ablation-random", "ablation-pure", "ablation-dense",
                                  "reference-distill", "reference-lowrank", "reference-phones", "reference-ctc",
                                  "reference-ctc-long"])
def test_shipped_recipes_load(name):
    r = load_recipe(name)
    assert r["name"] == name and set(r["stages"]) <= set(STAGES)


def test_ablations_change_one_thing_and_share_data_and_budget():
    ref = load_recipe("reference-mlp-rvq")
    for name, changed in (("ablation-random", {"stages"}), ("ablation-pure", {"stages", "inference_routing"}),
                          ("ablation-dense", {"stages", "inference_routing", "upcycle"})):
        r = load_recipe(name)
        differ = {k for k in set(ref) | set(r) if k not in ("name", "_path", "extends") and r.get(k) != ref.get(k)}
        assert differ == changed, name
        for stage in ("1", "2.1", "2.2", "3"):  # the same steps, rates and time caps
            same = {k: v for k, v in r["stages"][stage].items() if k != "train"}
            assert same == {k: v for k, v in ref["stages"][stage].items() if k != "train"}, (name, stage)


def test_recipe_extends_merges_and_refuses_loops(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "tiny", "name": "child", "stages": {"2.1": {"max_steps": 9}}}))
    r = load_recipe(str(child))
    assert r["stages"]["2.1"]["max_steps"] == 9 and r["stages"]["2.1"]["lr"] == load_recipe("tiny")["stages"]["2.1"]["lr"]
    assert r["extends"] == "tiny" and r["name"] == "child"
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump({"extends": str(loop), "name": "loop"}))
    with pytest.raises(ValueError, match="loops"):
        load_recipe(str(loop))


def test_recipe_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe 'nope' not found"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "seed": 0, "base": {}, "speech_encoder": {}, "codec": "offline",
                                   "data": {}}))
    with pytest.raises(ValueError, match="missing field 'stages'"):
        load_recipe(str(bad))
    bad.write_text(yaml.safe_dump({"name": "x", "seed": 0, "base": {}, "speech_encoder": {}, "codec": "offline",
                                   "data": {}, "stages": {"4": {}}}))
    with pytest.raises(ValueError, match="unknown stage"):
        load_recipe(str(bad))


def test_a_recipe_runs_the_stages_it_sets(tmp_path, capsys):
    from deeptalk.train import main
    from deeptalk.training.recipe import recipe_stages

    # "2.2": null leaves an inherited stage out of the default run
    assert recipe_stages(load_recipe("reference-ctc")) == ["1", "assign", "2.1", "3"]
    assert recipe_stages(load_recipe("tiny")) == list(STAGES)
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "tiny", "name": "child", "stages": {"2.2": None, "3": None}}))
    assert recipe_stages(load_recipe(str(child))) == ["1", "assign", "2.1"]
    with pytest.raises(SystemExit) as e:  # asking for a stage it leaves out: a usage error before any work
        main(["--recipe", str(child), "--stages", "2.1,3", "--output", str(tmp_path / "out")])
    assert e.value.code == 2 and "recipe 'child' sets no stage 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resume_goes_on_only_with_the_recipe_that_trained_the_run(tmp_path, capsys):
    import json

    from deeptalk.train import main
    from deeptalk.training.pipeline import check_resumable

    out = tmp_path / "out"
    (out / "stage-1").mkdir(parents=True)
    (out / "stage-1" / "stage.json").write_text(json.dumps({"done": True, "recipe": "reference"}))
    ref = load_recipe("reference-mlp-rvq")
    (out / "recipe.yaml").write_text(yaml.safe_dump({**{k: v for k, v in ref.items() if k != "_path"},
                                                     "name": "reference"}))
    with pytest.raises(SystemExit) as e:  # the old design's folder under its old name
        main(["--recipe", "reference", "--stages", "1,assign", "--output", str(out), "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "trained by recipe 'reference', which differs from 'reference' in" in err
    assert "speech_encoder" in err and "codec" in err
    assert yaml.safe_load((out / "recipe.yaml").read_text())["codec"] == "offline"  # nothing written
    longer = {**ref, "stages": {**ref["stages"], "2.1": {**ref["stages"]["2.1"], "max_steps": 999}}}
    check_resumable(longer, out, ["1", "assign", "2.1"], True)  # a stage not finished may change
    check_resumable(load_recipe("reference"), out, ["1"], False)  # not resuming: nothing to check


@pytest.mark.parametrize("n_text,t", [(3, 10), (15, 4), (1, 1)])
def test_answer_steps_layout(n_text, t):
    c = cfg()
    codes = torch.randint(0, 16, (3, t))
    text, grid = answer_steps(list(range(10, 10 + n_text)), codes, c)
    assert len(text) == grid.shape[1] == max(n_text + 1, t + 3 + 1)
    assert text[n_text] == c.special_token_id("<|text_end|>")
    assert all(x == c.special_token_id("<|text_pad|>") for x in text[n_text + 1:])
    assert torch.equal(undo_delay_pattern(grid, t), codes)
    # the generator's stop rule: the last codebook's EOS is at step T + Q
    assert grid[2, t + 3] == c.audio_eos_id and grid[0, t + 1] == c.audio_eos_id
    assert (grid[:, t + 3 + 1:] == c.audio_pad_id).all()


def test_answer_steps_rejects_wrong_codebooks():
    with pytest.raises(ValueError, match=r"\[Q=3, T\]"):
        answer_steps([1], torch.zeros(2, 5, dtype=torch.long), cfg())


def test_collate_pads_and_masks():
    a = Example([1, 2, 3], [-100, 2, 3], [0, 0, 0])
    b = Example([4, 5], [-100, 5], [1, 1], audio=torch.tensor([[-1, 7], [-1, 8]]))
    batch = collate([a, b], pad_id=0, num_codebooks=2)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"][1].tolist() == [-100, 5, -100]
    assert batch["audio_codes"][1].tolist() == [[-1, 7, -1], [-1, 8, -1]]
    assert batch["audio_labels"][1].tolist() == [[-100, 7, -100], [-100, 8, -100]]
    assert (batch["audio_codes"][0] == -1).all()
    with pytest.raises(ValueError, match="more than max_len=2"):
        collate([a], 0, 2, max_len=2)


def test_training_questions_are_disjoint_from_the_evaluation_set():
    from deeptalk.data import EVAL_FACTOID, evaluation_exclusions, quiz_questions

    if not EVAL_FACTOID.is_file():
        pytest.fail(f"{EVAL_FACTOID} is missing: the split cannot be checked")
    ex_files, ex_questions = evaluation_exclusions()
    assert ex_files and ex_questions
    qs = quiz_questions()
    assert len(qs) > 100
    assert not {q["question"].lower() for q in qs} & ex_questions
    assert not {q["source"].split("/")[1] for q in qs} & ex_files


def test_first_sentences_keeps_whole_sentences():
    from deeptalk.data import first_sentences

    assert first_sentences("A cub. It is small and cute. More here.", 7) == "A cub. It is small and cute."
    assert first_sentences("A cub. It is small and cute. More here.", 6) == "A cub."
    assert first_sentences("one two three four five", 3) == "one two three"


def test_the_distill_probe_changes_only_stage_2_2():
    ref, probe = load_recipe("reference-mlp-rvq"), load_recipe("reference-distill")
    assert probe["stages"]["2.2"]["distill"] == {"weight": 1.0, "temperature": 1.0}
    assert {k: v for k, v in probe["stages"]["2.2"].items() if k not in ("distill", "lr")} == \
        {k: v for k, v in ref["stages"]["2.2"].items() if k != "lr"}
    assert {s: c for s, c in probe["stages"].items() if s != "2.2"} == {s: c for s, c in ref["stages"].items() if s != "2.2"}


def test_corpus_rows_are_calibration_prose_for_language_modelling():
    from pathlib import Path

    from transformers import AutoTokenizer

    from deeptalk.sequence import TEXT_MODALITY
    from deeptalk.training.examples import corpus_examples
    from deeptalk.upcycle import calibration_texts

    tok = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "checkpoints" / "reference")
    rows = corpus_examples(tok, 1000, block=128)
    assert len(rows) == 7 and all(len(r.ids) == 128 and r.labels == r.ids for r in rows)
    assert all(set(r.modality) == {TEXT_MODALITY} and r.feats is None and r.audio is None for r in rows)
    first = tok.decode(rows[0].ids).split(tok.eos_token)[0][:200]
    assert first and first in calibration_texts("calib")[0]
    assert not any(first in t for t in calibration_texts("heldout"))  # never the held-out perplexity text


def test_the_phones_recipe_changes_the_speaking_side_only():
    ref, r = load_recipe("reference-mlp-rvq"), load_recipe("reference-phones")
    assert r["codec"] == "phones" and r["answer_routing"] == "both" and r["answer_layout"] == "words"
    assert r["stages"]["1"] == ref["stages"]["1"] and r["stages"]["2.2"] == ref["stages"]["2.2"]
    # 2.1 trains what the reference's 2.1 trains, at the rate the probe chose (docs/training.md)
    assert r["stages"]["2.1"]["routing"] == "modality" and r["stages"]["2.1"]["lr"] == 1.0e-3
    assert r["stages"]["2.1"]["lr_decay_steps"] == 300
    assert r["stages"]["2.1"].get("train") == ref["stages"]["2.1"].get("train")
    assert r["stages"]["2.1"]["batch_size"] == ref["stages"]["2.1"]["batch_size"]
    assert {k: v for k, v in r["data"].items() if k not in ("qa_written", "repeat")} == ref["data"]


def test_the_lowrank_recipe_shares_stages_1_to_2_1_and_keeps_shared_experts_frozen():
    ref, r = load_recipe("reference-mlp-rvq"), load_recipe("reference-lowrank")
    assert all(r["stages"][s] == ref["stages"][s] for s in ("1", "assign", "2.1"))
    assert r["stages"]["2.2"]["train"] == ["text_experts_lowrank"] and r["data"]["text_corpus_tokens"] > 0
    # the shared experts stay the base's in every stage: their bytes pay for the factors
    assert not any("shared_experts" in r["stages"][s].get("train", []) for s in ("2.1", "2.2", "3"))


def test_stage_3_mix_draws_each_kind_as_asked():
    from deeptalk.training.pipeline import joint_examples

    pools = {"speaking": [f"s{i}" for i in range(10)], "text": ["t0", "t1", "t2"], "asr": ["a0", "a1", "a2", "a3"]}
    # no mix: every speaking and text turn, as many ASR turns as speaking ones (here all 4)
    assert joint_examples(pools, None, 0) == pools["speaking"] + pools["text"] + pools["asr"]
    got = joint_examples(pools, {"speaking": 4, "text": 7, "asr": 2}, 0)
    assert len(got) == 13
    speak, text, asr = got[:4], got[4:11], got[11:]
    assert len(set(speak)) == 4 and set(speak) <= set(pools["speaking"])   # drawn, no repeats
    assert sorted(text[:6]) == sorted(pools["text"] * 2) and text[6] in pools["text"]  # two passes, then a draw
    assert len(set(asr)) == 2 and set(asr) <= set(pools["asr"])
    assert got == joint_examples(pools, {"speaking": 4, "text": 7, "asr": 2}, 0)  # seeded
    assert joint_examples(pools, {"asr": 3}, 0)[0].startswith("a")  # a kind left out gives none
    with pytest.raises(ValueError, match="unknown kind"):
        joint_examples(pools, {"audio": 3}, 0)
    with pytest.raises(ValueError, match="text: 2 turns asked, 0 built"):
        joint_examples({**pools, "text": []}, {"text": 2}, 0)


def test_word_lists_say_each_rarer_word_once_before_any_repeats():
    import wordfreq

    from deeptalk.hearing_corpus import word_lists

    sents = ["The Zambezi flows past Livingstone into the Indian Ocean.", "A carburetor mixes air and fuel.",
             "He said it was the same as the one before."]
    lists = word_lists(sents, 3, 4, seed=0)
    assert lists == word_lists(sents, 3, 4, seed=0) and len(lists) == 3
    words = [w for lst in lists for w in lst.rstrip(".").split(", ")]
    assert len(words) == 12
    first = words[:10]   # ten kept types: every one once, then the draw starts over
    assert len(set(w.lower() for w in first)) == 10 and "Zambezi" in first and "Livingstone" in first
    assert all(wordfreq.zipf_frequency(w.lower(), "en") < 5.5 and len(w) >= 3 for w in words)
    assert not {"the", "was", "said", "same"} & {w.lower() for w in words}


def test_proper_names_are_wordnet_people_and_places_no_evaluation_holds():
    from deeptalk.hearing_corpus import _norm, evaluation_texts, proper_names

    names = proper_names()
    assert len(names) > 5000 and names == sorted(names)
    held = {name: statement for name, statement, _ in names}
    synset = {name: offset for name, _, offset in names}
    assert held["Aleppo"] == "Aleppo is a city in northwestern Syria."
    assert held["Georges Simenon"].startswith("Georges Simenon was French writer")
    assert synset["Graham Greene"] == synset["Henry Graham Greene"] != synset["Georges Simenon"]
    # a capital the bundled quiz asks for, and a country its questions name, are never practised
    evaluation = evaluation_texts(answers=True)
    assert "algiers" in evaluation and "Algiers" not in held and "Algeria" not in held
    assert not any(f" {_norm(n)} " in f" {e} " for n in list(held)[::50] for e in evaluation)
    assert not any(n.isupper() for n in held)   # acronyms ("HAART") left out


def test_name_lists_say_each_name_once_before_any_repeats():
    from deeptalk.hearing_corpus import CorpusError, name_lists

    names = ["Aleppo", "Mason City", "John Philip Sousa", "Rhodes", "Salonika"]
    lists = name_lists(names, 3, 2, seed=0)
    assert lists == name_lists(names, 3, 2, seed=0) and len(lists) == 3
    said = [n for lst in lists for n in lst.rstrip(".").split(", ")]
    assert sorted(said[:5]) == sorted(names) and len(said) == 6
    with pytest.raises(CorpusError, match="no names"):
        name_lists([], 1, 2, seed=0)


def test_a_recipe_names_turns_are_seeded_wordnet_statements_and_lists():
    """`data.name_statements` / `data.name_lists`: the same turns for the same seed, other ones for
    another, statements that say a WordNet person or place, lists of `names_per_list` names."""
    from deeptalk.hearing_corpus import proper_names
    from deeptalk.training.recipe_data import name_texts

    recipe = {"seed": 0, "data": {"name_statements": 5, "name_lists": 3, "names_per_list": 4}}
    statements, lists = name_texts(recipe)
    assert (statements, lists) == name_texts(recipe) and len(statements) == 5 and len(lists) == 3
    assert name_texts({**recipe, "seed": 1})[0] != statements
    known = {st for _, st, _ in proper_names()}
    assert set(statements) <= known
    assert all(len(lst.rstrip(".").split(", ")) == 4 for lst in lists)
    assert name_texts({"seed": 0, "data": {}}) == ([], [])


def test_word_lists_from_sentences_without_a_word_to_list_say_so():
    from deeptalk.hearing_corpus import CorpusError, word_lists

    with pytest.raises(CorpusError, match="no word of the 1 sentences qualifies"):
        word_lists(["It is as it was."], 2, 4, seed=0)
    assert word_lists(["It is as it was."], 0, 4, seed=0) == []
