"""deeptalk: the reference DeepTalk model — a modality-specific MoE LLM upcycled from a dense LLM.

Importing the package registers `DeepTalkConfig` / `DeepTalkForCausalLM` with transformers'
Auto classes (model_type "deeptalk"). It never imports the evaluation harness.
"""
from .config import DeepTalkConfig
from .modeling import DeepTalkForCausalLM, DeepTalkModel, DeepTalkOutput

__all__ = ["DeepTalkConfig", "DeepTalkForCausalLM", "DeepTalkModel", "DeepTalkOutput"]
