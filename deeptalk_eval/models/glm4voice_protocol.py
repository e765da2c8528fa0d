"""The wire protocol of THUDM/GLM-4-Voice, shared by the adapter and the test server.

Everything here follows the public repository github.com/THUDM/GLM-4-Voice (commit eb00ce9):

- `web_demo.py` builds the prompt: a system turn (one text for speech input, one for text
  input), the user turn (text, or the speech tokens `<|audio_N|>` between
  `<|begin_of_audio|>` / `<|end_of_audio|>`), then `<|assistant|>streaming_transcription\\n`.
- `model_server.py` serves `POST /generate_stream` with a JSON body
  `{"prompt", "temperature", "top_p", "max_new_tokens"}` and streams one JSON object per
  line: `{"token_id": int, "error_code": 0}`, or `{"text": "Server Error", "error_code": 1}`
  when generation fails.
- The model answers in interleaved blocks, 13 text tokens then 26 audio tokens; a token id
  at or above the id of `<|audio_0|>` is speech token `id - audio_offset`. The turn ends
  with `<|user|>`; the demo ignores whatever follows it.
- Speech tokens run at 12.5 Hz; the flow-matching + HiFi-GAN decoder turns them into
  22.05 kHz audio, in blocks of 25, 50, 100, 150, then 200 tokens.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

# Verbatim from web_demo.py (the speech-input text really ends with a space).
SYSTEM_PROMPT_SPEECH_INPUT = (
    "User will provide you with a speech instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens. "
)
SYSTEM_PROMPT_TEXT_INPUT = (
    "User will provide you with a text instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens."
)

BEGIN_OF_AUDIO = "<|begin_of_audio|>"
END_OF_AUDIO = "<|end_of_audio|>"
AUDIO_TOKEN_0 = "<|audio_0|>"  # its id is the audio offset
END_OF_TURN = "<|user|>"  # the demo stops at the next user tag
ASSISTANT_PREFIX = "<|assistant|>streaming_transcription\n"

ENDPOINT = "/generate_stream"
DEFAULT_PORT = 10000
TEXT_TOKENS_PER_BLOCK = 13
AUDIO_TOKENS_PER_BLOCK = 26
SPEECH_TOKEN_RATE_HZ = 12.5
DECODER_SAMPLE_RATE = 22050
DECODER_BLOCK_SIZES = (25, 50, 100, 150, 200)

# web_demo.py's defaults for the sampling controls.
DEMO_TEMPERATURE = 0.2
DEMO_TOP_P = 0.8
DEMO_MAX_NEW_TOKENS = 2000


class GLM4VoiceServerError(RuntimeError):
    """The model server reported an error or sent something outside the protocol."""


def speech_tokens_to_text(tokens: Iterable[int]) -> str:
    """Speech token ids -> the user-turn string web_demo.py builds from them."""
    tokens = [int(t) for t in tokens]
    if not tokens:
        raise ValueError("no speech tokens: the speech tokenizer returned nothing for this audio")
    return BEGIN_OF_AUDIO + "".join(f"<|audio_{t}|>" for t in tokens) + END_OF_AUDIO


def demo_system_prompt(speech_input: bool) -> str:
    return SYSTEM_PROMPT_SPEECH_INPUT if speech_input else SYSTEM_PROMPT_TEXT_INPUT


def build_prompt(user_input: str, speech_input: bool, previous: str = "", system_prompt: str | None = None) -> str:
    """The exact prompt string of web_demo.py's `inference_fn`.

    `user_input` is the text, or `speech_tokens_to_text(...)` for speech input. `previous`
    is the earlier prompt plus completion of the same conversation ("" for a new one); the
    system turn (the demo's, unless `system_prompt` is given) is added only when it is not
    there yet, as in the demo.
    """
    if system_prompt is None:
        system_prompt = demo_system_prompt(speech_input)
    inputs = previous.strip()
    if "<|system|>" not in inputs:
        inputs += f"<|system|>\n{system_prompt}"
    inputs += f"<|user|>\n{user_input}{ASSISTANT_PREFIX}"
    return inputs


def build_request_body(prompt: str, temperature: float, top_p: float, max_new_tokens: int) -> bytes:
    """The JSON body web_demo.py posts to the model server."""
    return json.dumps(
        {
            "prompt": prompt,
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_new_tokens": int(max_new_tokens),
        }
    ).encode()


def parse_stream_line(line: bytes | str, line_no: int = 0) -> int | None:
    """One streamed line -> its token id (None for a blank keep-alive line).

    Raises GLM4VoiceServerError on `error_code != 0` or on a line outside the protocol.
    """
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise GLM4VoiceServerError(f"stream line {line_no} is not JSON ({e}): {line[:200]!r}") from None
    if not isinstance(obj, dict):
        raise GLM4VoiceServerError(f"stream line {line_no} is not a JSON object: {line[:200]!r}")
    if obj.get("error_code", 0) != 0:
        raise GLM4VoiceServerError(
            f"model server error at stream line {line_no}: error_code={obj.get('error_code')} "
            f"text={obj.get('text')!r}"
        )
    tok = obj.get("token_id")
    if not isinstance(tok, int) or isinstance(tok, bool) or tok < 0:
        raise GLM4VoiceServerError(f"stream line {line_no} has no valid token_id: {line[:200]!r}")
    return tok


def iter_token_ids(lines: Iterable[bytes | str]) -> Iterator[int]:
    for i, line in enumerate(lines, 1):
        tok = parse_stream_line(line, i)
        if tok is not None:
            yield tok


@dataclass(frozen=True)
class RoutedToken:
    kind: Literal["text", "audio", "end"]
    value: int  # text token id, speech token (id - audio_offset), or the end-of-turn id


def route_token(token_id: int, audio_offset: int, end_token_id: int) -> RoutedToken:
    """Split the interleaved stream as web_demo.py does: end tag, speech token or text token."""
    if token_id == end_token_id:
        return RoutedToken("end", token_id)
    if token_id >= audio_offset:
        return RoutedToken("audio", token_id - audio_offset)
    return RoutedToken("text", token_id)


def interleave(text_ids: list[int], speech_tokens: list[int], audio_offset: int) -> list[int]:
    """The token order GLM-4-Voice emits: blocks of 13 text then 26 audio ids.

    When one stream runs out the other continues alone (text usually ends first).
    Used by the test server as its deterministic token source.
    """
    out: list[int] = []
    ti = ai = 0
    while ti < len(text_ids) or ai < len(speech_tokens):
        out += text_ids[ti : ti + TEXT_TOKENS_PER_BLOCK]
        ti += TEXT_TOKENS_PER_BLOCK
        out += [audio_offset + s for s in speech_tokens[ai : ai + AUDIO_TOKENS_PER_BLOCK]]
        ai += AUDIO_TOKENS_PER_BLOCK
    return out
