"""A codec by name: the shipped offline codec, SNAC, or a fitted codec file.

Kept apart from the interface (codec.py) so the implementations import the interface and
nothing imports back.
"""
from __future__ import annotations

from pathlib import Path

from deeptalk.speech.codec import CodecError, SpeechCodec


def load_codec(name: str | Path = "offline", **kwargs) -> SpeechCodec:
    """'offline' (the shipped codec), 'snac' (SNAC 24 kHz), 'phones' (phone units spoken by Piper joe;
    'phones:<voice.onnx>' for another Piper voice), or a path to a codec file (offline or units)."""
    if str(name) == "offline":
        from deeptalk.speech.codec_offline import OfflineCodec

        return OfflineCodec.load(**kwargs)
    if str(name) == "snac" or str(name).startswith("snac:"):
        from deeptalk.speech.codec_snac import SNACCodec

        src = str(name).split(":", 1)[1] if ":" in str(name) else kwargs.pop("source", None)
        return SNACCodec.load(src, **kwargs)
    if str(name) == "phones" or str(name).startswith("phones:"):
        from deeptalk.speech.codec_phones import PhoneCodec

        return PhoneCodec.load(str(name).split(":", 1)[1] if ":" in str(name) else "joe", **kwargs)
    path = Path(name)
    if path.suffix == ".safetensors" and path.is_file():
        from deeptalk.speech.codec_units import UnitCodec, is_units_file

        if is_units_file(path):
            return UnitCodec.load(path, **kwargs)
    if path.suffix == ".safetensors" or path.is_dir():
        from deeptalk.speech.codec_offline import OfflineCodec

        return OfflineCodec.load(path, **kwargs)
    raise CodecError(f"unknown codec {name!r}: use 'offline', 'snac', 'snac:<dir or hub id>', "
                     f"'phones', 'phones:<piper voice.onnx>' or a path to a codec .safetensors (offline or units)")
