"""Built-in model adapters: each puts one model behind the `deeptalk_eval.api.SpokenModel`
interface. They are listed by name in `deeptalk_eval.registry.BUILTIN_MODELS` and imported
only when a run asks for them."""
