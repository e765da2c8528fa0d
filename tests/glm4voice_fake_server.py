"""A local stand-in for GLM-4-Voice's `model_server.py`, for tests (loopback only).

Same endpoint (`POST /generate_stream`), same JSON body, same response: a chunked stream
of `{"token_id": N, "error_code": 0}` lines, or `{"text": "Server Error", "error_code": 1}`
on failure. The tokens come from a deterministic source instead of the 9B model: a fixed
answer per question, tokenised word by word, with speech tokens derived from the words,
interleaved 13 text / 26 audio as GLM-4-Voice emits them, ended by `<|user|>`.

Also here: a word-level tokenizer with GLM-4-Voice's special tokens, a speech tokenizer and a
decoder small enough for tests (they stand in for parts that need GLM weights).
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from deeptalk_eval.models.glm4voice import GLM4Voice
from deeptalk_eval.models.glm4voice_protocol import (
    ASSISTANT_PREFIX,
    AUDIO_TOKEN_0,
    DECODER_SAMPLE_RATE,
    END_OF_TURN,
    ENDPOINT,
    SPEECH_TOKEN_RATE_HZ,
    interleave,
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                  "<|begin_of_audio|>", "<|end_of_audio|>"]
AUDIO_OFFSET = 5000  # small stand-in for the id of <|audio_0|>
NUM_SPEECH_TOKENS = 16384


class WordTokenizer:
    """Word-level tokenizer: ids below AUDIO_OFFSET are text, `<|audio_N|>` is AUDIO_OFFSET + N."""

    def __init__(self):
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        self.inv: dict[int, str] = {i: t for t, i in self.vocab.items()}

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            i = len(self.vocab)
            if i >= AUDIO_OFFSET:
                raise ValueError("WordTokenizer vocabulary is full")
            self.vocab[piece] = i
            self.inv[i] = piece
        return self.vocab[piece]

    def encode(self, text: str) -> list[int]:
        # Pieces keep their leading space, like byte-level BPE tokens do.
        return [self._id(p) for p in re.findall(r" ?[^ ]+", text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.inv[i] for i in ids)

    def convert_tokens_to_ids(self, token: str) -> int:
        if token == AUDIO_TOKEN_0:
            return AUDIO_OFFSET
        m = re.fullmatch(r"<\|audio_(\d+)\|>", token)
        if m:
            return AUDIO_OFFSET + int(m.group(1))
        return self.vocab[token]


def speech_tokens_for(text: str) -> list[int]:
    """Deterministic speech tokens for a text: 4 per word (~0.3 s of 12.5 Hz tokens per word)."""
    out = []
    for w in text.split():
        base = sum(ord(c) for c in w)
        out += [(base * (k + 1) + 7 * k) % NUM_SPEECH_TOKENS for k in range(4)]
    return out


class FakeGLM4VoiceServer:
    """`model_server.py`'s HTTP protocol on 127.0.0.1 with a deterministic token source.

    answers: user input (the text, or the whole `<|begin_of_audio|>...` string) -> answer text;
    `default_answer` for anything else. `token_delay_s` spaces the streamed tokens so that
    first-token timings are measurable. `fail_after=N` streams N tokens then the server's
    error line. `echo=True` answers a text question with the question itself. Received bodies are kept in `received`.
    """

    def __init__(self, tokenizer: WordTokenizer, answers: dict[str, str] | None = None,
                 default_answer: str = "I do not know.", token_delay_s: float = 0.0,
                 fail_after: int | None = None, tokens_after_end: int = 0, echo: bool = False):
        self.tokenizer = tokenizer
        self.answers = dict(answers or {})
        self.default_answer = default_answer
        self.token_delay_s = token_delay_s
        self.fail_after = fail_after
        self.tokens_after_end = tokens_after_end
        self.echo = echo
        self.received: list[dict] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # The token source: what the 9B model would have generated.
    def tokens_for_prompt(self, prompt: str) -> list[int]:
        last_user = prompt.rsplit("<|user|>\n", 1)[-1]
        if "<|user|>\n" not in prompt or not last_user.endswith(ASSISTANT_PREFIX):
            raise ValueError(f"prompt does not end with a user turn and the assistant tag: {prompt[-120:]!r}")
        user = last_user[: -len(ASSISTANT_PREFIX)]
        answer = self.answers.get(user)
        if answer is None:
            answer = user if self.echo and not user.startswith("<|begin_of_audio|>") else self.default_answer
        ids = interleave(self.tokenizer.encode(answer), speech_tokens_for(answer), AUDIO_OFFSET)
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        # A real model may run on after its end tag until the server's generate() stops.
        return ids + [end] + ids[: self.tokens_after_end]

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGLM4VoiceServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked streaming, as uvicorn sends it

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                if self.path != ENDPOINT:
                    self.send_error(404, f"no route {self.path}")
                    return
                try:
                    params = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    prompt = params["prompt"]
                    max_new = int(params.get("max_new_tokens", 256))
                    float(params.get("temperature", 1.0)), float(params.get("top_p", 1.0))
                    tokens = server.tokens_for_prompt(prompt)[:max_new]
                except (ValueError, KeyError, TypeError) as e:
                    self.send_error(422, f"bad request: {e}")
                    return
                server.received.append(params)
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i, tok in enumerate(tokens):
                        if server.fail_after is not None and i == server.fail_after:
                            self._chunk({"text": "Server Error", "error_code": 1})
                            break
                        if server.token_delay_s:
                            time.sleep(server.token_delay_s)
                        self._chunk({"token_id": tok, "error_code": 0})
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (it raised on a line): like uvicorn, just stop

            def _chunk(self, obj: dict) -> None:
                data = (json.dumps(obj) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class ToneDecoder:
    """Stands in for the flow + HiFi-GAN decoder: each speech token -> 80 ms of a tone.

    Keeps every block it was asked to decode, so tests can check the block schedule.
    """

    sample_rate = DECODER_SAMPLE_RATE
    samples_per_token = int(DECODER_SAMPLE_RATE / SPEECH_TOKEN_RATE_HZ)

    def __init__(self):
        self.blocks: list[tuple[list[int], bool]] = []

    def start(self):
        return self

    def decode(self, speech_tokens: list[int], finalize: bool) -> np.ndarray:
        self.blocks.append((list(speech_tokens), finalize))
        t = np.arange(self.samples_per_token) / self.sample_rate
        return np.concatenate(
            [0.1 * np.sin(2 * np.pi * (100 + tok % 1000) * t) for tok in speech_tokens]
        ).astype(np.float32)


class FrameSpeechTokenizer:
    """Stands in for Whisper-VQ: one token per 80 ms frame (12.5 Hz) from the frame's energy."""

    def __call__(self, audio) -> list[int]:
        hop = int(audio.sample_rate / SPEECH_TOKEN_RATE_HZ)
        n = len(audio.samples) // hop
        frames = audio.samples[: n * hop].reshape(n, hop)
        return [int(np.sqrt(np.mean(f.astype(np.float64) ** 2)) * 1e4) % NUM_SPEECH_TOKENS for f in frames]



class GLM4VoiceOnFakeServer(GLM4Voice):
    """`--model-path` target for CLI tests: GLM4Voice wired to a fake server it starts itself."""

    def __init__(self, token_delay_s: float = 0.002, **model_args):
        tok = WordTokenizer()
        self.server = FakeGLM4VoiceServer(tok, echo=True, token_delay_s=float(token_delay_s)).start()
        super().__init__(url=self.server.url, text_tokenizer=tok, speech_tokenizer=FrameSpeechTokenizer(),
                         decoder=ToneDecoder(), **model_args)

    def close(self) -> None:
        self.server.stop()
