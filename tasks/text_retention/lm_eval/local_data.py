"""Helpers of the bundled lm-eval tasks: offline data loading and perplexity results."""
from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_json(data_files: dict[str, str], **_metadata):
    """`custom_dataset` hook: the `json` builder of `datasets` on files named relative to
    this folder, so a task runs offline from any working directory."""
    import datasets

    files = {}
    for split, name in data_files.items():
        path = (HERE / name).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"lm-eval task data {path} not found "
                                    f"(rebuild with tasks/text_retention/build_lm_eval_data.py)")
        files[split] = str(path)
    return datasets.load_dataset("json", data_files=files)


def perplexity_results(doc: dict, results: list) -> dict:
    """Word- and byte-normalised log-likelihood of one held-out text (counted on the text as
    written), aggregated by lm-eval's weighted_perplexity / bits_per_byte."""
    (loglikelihood,) = results
    text = doc["text"]
    n_words = len(re.split(r"\s+", text.strip()))
    n_bytes = len(text.encode("utf-8"))
    return {"word_perplexity": (loglikelihood, n_words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
