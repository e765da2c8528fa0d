"""The floor below both the harness (deeptalk_eval) and the reference model (deeptalk).

What both need lives here and imports neither: TTS engines (`tts`), Whisper checkpoints
found or converted offline (`whisper_ckpt`), where caches live (`paths`), and the one
table of torch dtype names (`dtypes`). Submodules are imported on use.
"""
