"""Deterministic judges for tests only (`--judge tests/scripted_judge.py:ScriptedJudge`).

ScriptedJudge rates an answer 5 when it contains "good", 2 otherwise, and answers
"three or four?" (unparseable) when it contains "???"; it logs every prompt it was asked.
OtherJudge is the same with another model name: a different judge identity.
"""
from __future__ import annotations

import re

from deeptalk_eval.scoring.judge import Judge


class ScriptedJudge(Judge):
    backend = "scripted"
    model = "scripted-judge-1"
    decoding = {"temperature": 0.0}
    prompts: list[str] = []

    def complete(self, prompt: str) -> str:
        type(self).prompts.append(prompt)
        answer = re.search(r"Answer: (.*)\n\nRate", prompt, re.S).group(1)
        if "???" in answer:
            return "three or four?"
        return "Score: 5" if "good" in answer else "2"


class OtherJudge(ScriptedJudge):
    model = "scripted-judge-2"
