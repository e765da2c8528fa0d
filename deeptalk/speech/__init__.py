"""Speech parts of the reference model: Whisper weights and encoder, TTS, codec.

Submodules are imported on use; importing this package stays cheap.
"""
