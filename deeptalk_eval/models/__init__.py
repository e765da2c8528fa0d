"""The model adapters: each puts one model behind the `deeptalk_eval.api.SpokenModel`
interface — the reference DeepTalk (`deeptalk`) and the models it is compared with (the base
text LLM, a modular cascade, GLM-4-Voice, Qwen-Omni, Moshi). They are listed by name in
`deeptalk_eval.registry.BUILTIN_MODELS` and imported only when a run asks for them.

Each declares its model args once, in its annotated `__init__` signature; the harness reads
`--model-args` text by those types (`deeptalk_eval.model_args`).
"""
