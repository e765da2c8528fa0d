"""deeptalk: the reference DeepTalk model — a modality-specific MoE LLM upcycled from a dense LLM.

`from deeptalk import DeepTalkForCausalLM` (or importing `deeptalk.modeling`) registers
`DeepTalkConfig` / `DeepTalkForCausalLM` with transformers' Auto classes (model_type
"deeptalk"). The model classes load on first use, so light modules (`deeptalk_common.paths`,
`deeptalk_common.tts`, ...) import without torch and transformers. The package never
imports the evaluation harness.
"""
import importlib

__all__ = ["DeepTalkConfig", "DeepTalkForCausalLM", "DeepTalkModel", "DeepTalkOutput"]
_WHERE = {"DeepTalkConfig": ".config", "DeepTalkForCausalLM": ".modeling", "DeepTalkModel": ".modeling",
          "DeepTalkOutput": ".modeling"}


def __getattr__(name: str):
    if name in _WHERE:
        importlib.import_module(".modeling", __name__)  # registers with the Auto classes
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'deeptalk' has no attribute {name!r}")
