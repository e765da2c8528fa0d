"""GLM-4-Voice (THUDM) behind the SpokenModel interface.

GLM-4-Voice is served by its own `model_server.py` on a GPU machine; this adapter is the
client side of its `web_demo.py`: it turns speech into `<|audio_N|>` tokens with the
Whisper-VQ speech tokenizer (12.5 Hz), builds the demo's prompt, posts it to
`/generate_stream`, splits the streamed ids into text tokens and speech tokens, and turns
speech tokens into 22.05 kHz audio with the flow-matching + HiFi-GAN decoder, block by
block as the demo does. See docs/baselines.md for how to run the real model.

The three local parts are pluggable (tests inject small deterministic ones):
- `text_tokenizer`: GLM-4's tokenizer (`decode`, `convert_tokens_to_ids`), from `model_path`;
- `speech_tokenizer`: callable `Audio -> list[int]`, from `tokenizer_path` (+ `repo_path`);
- `decoder`: `SpeechDecoder` (`sample_rate`, `start() -> session`, `session.decode(tokens,
  finalize) -> float32 samples`), from `flow_path` (+ `repo_path`).
"""
from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deeptalk_eval.api import (
    Audio,
    Capabilities,
    Request,
    Response,
    SpokenModel,
    StreamEvent,
    UnsupportedRequest,
    collect_stream,
)
from deeptalk_eval.errors import UsageError
from deeptalk_eval.models.glm4voice_protocol import (
    AUDIO_TOKEN_0,
    DECODER_BLOCK_SIZES,
    DECODER_SAMPLE_RATE,
    END_OF_TURN,
    ENDPOINT,
    GLM4VoiceServerError,
    build_prompt,
    build_request_body,
    demo_system_prompt,
    iter_token_ids,
    route_token,
    speech_tokens_to_text,
)

DOCS = "docs/baselines.md#glm-4-voice"
# What a task's system text does: "demo" keeps the demo's system prompt (the one the model
# was tuned with to interleave text and speech) and does not send the task's; "task"
# replaces it; "demo+task" appends the task's text to it.
SYSTEM_POLICIES = ("demo", "task", "demo+task")


class GLM4VoiceConfigError(UsageError):
    """A part GLM-4-Voice needs is not configured, or its server does not answer."""


def unreachable_message(url: str, reason: object) -> str:
    return (f"cannot reach the GLM-4-Voice model server at {url}{ENDPOINT} ({reason}); start model_server.py "
            f"or fix url= in --model-args (see {DOCS})")


class DecodeSession(Protocol):
    def decode(self, speech_tokens: list[int], finalize: bool) -> np.ndarray: ...


class SpeechDecoder(Protocol):
    sample_rate: int

    def start(self) -> DecodeSession: ...


# -- the real local parts (need the GLM-4-Voice checkout, its weights and a GPU) -------------


def _add_repo_to_path(repo_path: str | None, what: str) -> Path:
    if not repo_path:
        raise GLM4VoiceConfigError(
            f"GLM4Voice: {what} needs the code of github.com/THUDM/GLM-4-Voice: set "
            f"--model-args repo_path=/path/to/GLM-4-Voice (see {DOCS})"
        )
    repo = Path(repo_path).expanduser().resolve()
    if not (repo / "flow_inference.py").is_file():
        raise GLM4VoiceConfigError(f"GLM4Voice: repo_path={repo} is not a GLM-4-Voice checkout (no flow_inference.py)")
    # web_demo.py puts these on sys.path the same way.
    for p in (repo / "third_party" / "Matcha-TTS", repo / "cosyvoice", repo):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    return repo


class WhisperVQSpeechTokenizer:
    """GLM-4-Voice-Tokenizer: Whisper encoder + vector quantiser, audio -> 12.5 Hz token ids."""

    def __init__(self, tokenizer_path: str, repo_path: str | None, device: str = "cuda"):
        _add_repo_to_path(repo_path, "the speech tokenizer")
        import torch
        from speech_tokenizer.modeling_whisper import WhisperVQEncoder
        from speech_tokenizer.utils import extract_speech_token
        from transformers import WhisperFeatureExtractor

        self._torch = torch
        self._extract = extract_speech_token
        self.model = WhisperVQEncoder.from_pretrained(tokenizer_path).eval().to(device)
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(tokenizer_path)

    def __call__(self, audio: Audio) -> list[int]:
        # extract_speech_token accepts (waveform[channels, n], sample_rate) and resamples to 16 kHz.
        wav = self._torch.from_numpy(audio.samples).unsqueeze(0)
        return list(self._extract(self.model, self.feature_extractor, [(wav, audio.sample_rate)])[0])


class FlowHiFiGANDecoder:
    """GLM-4-Voice-Decoder (flow matching + HiFi-GAN) via the repository's `AudioDecoder`."""

    sample_rate = DECODER_SAMPLE_RATE

    def __init__(self, flow_path: str, repo_path: str | None, device: str = "cuda"):
        _add_repo_to_path(repo_path, "the speech decoder")
        import torch
        from flow_inference import AudioDecoder

        flow = Path(flow_path).expanduser()
        for name in ("config.yaml", "flow.pt", "hift.pt"):
            if not (flow / name).is_file():
                raise GLM4VoiceConfigError(f"GLM4Voice: flow_path={flow} has no {name} (clone THUDM/glm-4-voice-decoder there)")
        self._torch = torch
        self.device = device
        self.decoder = AudioDecoder(
            config_path=str(flow / "config.yaml"),
            flow_ckpt_path=str(flow / "flow.pt"),
            hift_ckpt_path=str(flow / "hift.pt"),
            device=device,
        )

    def start(self) -> _FlowSession:
        return _FlowSession(self)


class _FlowSession:
    """One utterance: the earlier blocks' tokens and mels prompt the next block (web_demo.py)."""

    def __init__(self, parent: FlowHiFiGANDecoder):
        import uuid

        torch = parent._torch
        self.parent = parent
        self.uuid = str(uuid.uuid4())
        self.prompt_tokens = torch.zeros(1, 0, dtype=torch.int64).to(parent.device)
        self.prompt_feat = torch.zeros(1, 0, 80).to(parent.device)
        self.mels: list[Any] = []

    def decode(self, speech_tokens: list[int], finalize: bool) -> np.ndarray:
        torch, dev = self.parent._torch, self.parent.device
        tokens = torch.tensor(speech_tokens, device=dev).unsqueeze(0)
        if self.mels:
            self.prompt_feat = torch.cat(self.mels, dim=-1).transpose(1, 2)
        with torch.no_grad():
            speech, mel = self.parent.decoder.token2wav(
                tokens, uuid=self.uuid, prompt_token=self.prompt_tokens, prompt_feat=self.prompt_feat, finalize=finalize
            )
        self.mels.append(mel)
        self.prompt_tokens = torch.cat((self.prompt_tokens, tokens), dim=-1)
        return speech.float().cpu().numpy().reshape(-1)


# -- the adapter ---------------------------------------------------------------------------


class GLM4Voice(SpokenModel):
    """Client of a running GLM-4-Voice model server (speech/text in, text + speech out).

    model_args (strings from `--model-args`, or Python values):
      url               model server, e.g. http://gpu-host:10000 (required)
      model_path        GLM-4-Voice-9B dir or hub id, for its text tokenizer (required)
      tokenizer_path    GLM-4-Voice-Tokenizer (speech in), with repo_path
      flow_path         GLM-4-Voice-Decoder dir (speech out), with repo_path
      repo_path         a checkout of github.com/THUDM/GLM-4-Voice (its code, not weights)
      trust_remote_code true to allow GLM-4's custom tokenizer code (default false)
      device            for the speech tokenizer and decoder (default cuda)
      system            demo | task | demo+task: what a task's system text does (default demo)
      temperature, top_p  override the request's sampling (the demo uses 0.2 / 0.8)
      timeout           seconds for the HTTP stream (default 600)
    """

    name = "glm4voice"
    capabilities = Capabilities(
        text_in=True, audio_in=True, text_out=True, audio_out=True, streaming=True, loglikelihood=False
    )

    def __init__(
        self,
        url: str | None = None,
        model_path: str | None = None,
        tokenizer_path: str | None = None,
        flow_path: str | None = None,
        repo_path: str | None = None,
        trust_remote_code: bool = False,
        device: str = "cuda",
        system: str = "demo",
        temperature: float | None = None,
        top_p: float | None = None,
        timeout: float = 600.0,
        text_tokenizer: object = None,
        speech_tokenizer: Callable[[Audio], list[int]] | None = None,
        decoder: SpeechDecoder | None = None,
    ):
        super().__init__(
            url=url, model_path=model_path, tokenizer_path=tokenizer_path, flow_path=flow_path,
            repo_path=repo_path, trust_remote_code=trust_remote_code, device=device, system=system,
            temperature=temperature, top_p=top_p, timeout=timeout,
        )
        if not url:
            raise GLM4VoiceConfigError(
                "GLM4Voice: no model server URL. Start GLM-4-Voice's model_server.py on a GPU machine and "
                f"set --model-args url=http://HOST:10000 (see {DOCS})"
            )
        self.url = str(url).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise GLM4VoiceConfigError(f"GLM4Voice: url={url!r} must start with http:// or https://")
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path
        self.flow_path = flow_path
        self.repo_path = repo_path
        self.trust_remote_code = trust_remote_code
        self.device = device
        if system not in SYSTEM_POLICIES:
            raise UsageError(f"model arg system={system!r}: use one of {list(SYSTEM_POLICIES)}")
        self.system_policy = system
        self.temperature = temperature
        self.top_p = top_p
        self.timeout = timeout
        self._text_tokenizer = text_tokenizer
        self._speech_tokenizer = speech_tokenizer
        self._decoder = decoder
        self._injected = {
            k: type(v).__qualname__
            for k, v in (("text_tokenizer", text_tokenizer), ("speech_tokenizer", speech_tokenizer), ("decoder", decoder))
            if v is not None
        }

    # -- parts, loaded on first use so that a text-only run needs no decoder ----------------
    @property
    def text_tokenizer(self):
        if self._text_tokenizer is None:
            if not self.model_path:
                raise GLM4VoiceConfigError(
                    "GLM4Voice: no text tokenizer to read the server's token ids: set "
                    f"--model-args model_path=THUDM/glm-4-voice-9b (or a local copy) (see {DOCS})"
                )
            if not self.trust_remote_code:
                raise GLM4VoiceConfigError(
                    "GLM4Voice: GLM-4's tokenizer is custom code shipped with the checkpoint; review it and "
                    "set --model-args trust_remote_code=true to allow it"
                )
            from transformers import AutoTokenizer

            self._text_tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=True)
        return self._text_tokenizer

    @property
    def speech_tokenizer(self):
        if self._speech_tokenizer is None:
            if not self.tokenizer_path:
                raise GLM4VoiceConfigError(
                    "GLM4Voice: speech input needs the speech tokenizer: set --model-args "
                    f"tokenizer_path=THUDM/glm-4-voice-tokenizer,repo_path=/path/to/GLM-4-Voice (see {DOCS})"
                )
            self._speech_tokenizer = WhisperVQSpeechTokenizer(self.tokenizer_path, self.repo_path, self.device)
        return self._speech_tokenizer

    @property
    def decoder(self) -> SpeechDecoder:
        if self._decoder is None:
            if not self.flow_path:
                raise GLM4VoiceConfigError(
                    "GLM4Voice: speech output needs the speech decoder: set --model-args "
                    f"flow_path=/path/to/glm-4-voice-decoder,repo_path=/path/to/GLM-4-Voice (see {DOCS}), "
                    "or ask for output=text"
                )
            self._decoder = FlowHiFiGANDecoder(self.flow_path, self.repo_path, self.device)
        return self._decoder

    # -- identity ---------------------------------------------------------------------------
    def fingerprint(self) -> str:
        ident = {k: v for k, v in sorted(self.args.items())}
        ident["injected"] = self._injected
        blob = json.dumps(ident, sort_keys=True, default=str)
        return f"glm4voice:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def describe(self) -> dict[str, Any]:
        return {
            "server": self.url + ENDPOINT,
            "model_path": self.model_path,
            "speech_tokenizer": self.tokenizer_path or self._injected.get("speech_tokenizer"),
            "decoder": self.flow_path or self._injected.get("decoder"),
            "decoder_block_sizes": list(DECODER_BLOCK_SIZES),
            "sampling_override": {"temperature": self.temperature, "top_p": self.top_p},
            "system_policy": self.system_policy,
            "injected_parts": self._injected,
        }

    def check_setup(self) -> None:
        """A server that does not answer stops the run before its first sample (exit 2)."""
        where = urllib.parse.urlsplit(self.url)
        try:
            port = where.port or (443 if where.scheme == "https" else 80)
        except ValueError as e:  # a port that is not a number
            raise GLM4VoiceConfigError(f"GLM4Voice: url={self.url!r}: {e}") from None
        if not where.hostname:
            raise GLM4VoiceConfigError(f"GLM4Voice: url={self.url!r} names no host")
        try:
            socket.create_connection((where.hostname, port), timeout=min(self.timeout or 10.0, 10.0)).close()
        except OSError as e:
            raise GLM4VoiceConfigError("GLM4Voice: " + unreachable_message(self.url, e.strerror or e)) from None

    # -- prompt -----------------------------------------------------------------------------
    def _user_input(self, text: str | None, audio: Audio | None, where: str) -> tuple[str, bool]:
        if audio is not None:
            tokens = self.speech_tokenizer(audio)
            if not tokens:
                raise UnsupportedRequest(f"{where}: the speech tokenizer produced no tokens ({audio.duration:.2f} s of audio)")
            return speech_tokens_to_text(tokens), True
        if text is None or not text.strip():
            raise UnsupportedRequest(f"{where}: neither text nor audio")
        return text, False

    def _system_prompt(self, request: Request, speech_input: bool) -> str:
        demo = demo_system_prompt(speech_input)
        if not request.system or self.system_policy == "demo":
            return demo
        if self.system_policy == "task":
            return request.system
        return demo.rstrip() + " " + request.system

    def build_prompt(self, request: Request) -> str:
        """The demo's prompt for this request; earlier turns are replayed as text.

        The system turn follows the first user turn's modality, as in the demo."""
        previous = ""
        for i, turn in enumerate(request.history):
            where = f"request {request.id} history[{i}]"
            if turn.role == "system":
                raise UnsupportedRequest(f"{where}: put the system text in Request.system")
            if turn.role == "user":
                user, speech = self._user_input(turn.text, turn.audio, where)
                previous = build_prompt(user, speech, previous, self._system_prompt(request, speech))
            else:
                if turn.text is None:
                    raise UnsupportedRequest(f"{where}: assistant turns are replayed as text; this one has none")
                previous += turn.text
        if request.audio is not None and request.text:
            raise UnsupportedRequest(
                f"request {request.id}: GLM-4-Voice's demo takes text or speech in one turn, not both")
        user, speech = self._user_input(request.text, request.audio, f"request {request.id}")
        return build_prompt(user, speech, previous, self._system_prompt(request, speech))

    # -- streaming --------------------------------------------------------------------------
    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Marks speech_tokens_done (speech in), first_text_token, first_audio_token,
        end_of_turn; text deltas; audio per decoded block. The end's info: the prompt, token
        counts (text, audio), what was sent, the decoded blocks, how the answer ended."""
        extra: dict[str, Any] = {}  # the end's info beyond prompt and tokens
        opts = request.options
        if opts.stop:
            raise UnsupportedRequest(f"request {request.id}: GLM-4-Voice's server has no stop strings (stop={list(opts.stop)})")
        want_audio = request.output_modality in ("speech", "both")
        tok = self.text_tokenizer
        audio_offset = int(tok.convert_tokens_to_ids(AUDIO_TOKEN_0))
        end_id = int(tok.convert_tokens_to_ids(END_OF_TURN))
        decoder = self.decoder if want_audio else None

        prompt = self.build_prompt(request)
        if request.audio is not None:
            yield StreamEvent("mark", time.monotonic(), name="speech_tokens_done")
        if request.system and self.system_policy == "demo":
            extra["system_not_sent"] = request.system  # recorded: the demo's system prompt was used
        temperature = opts.temperature if self.temperature is None else self.temperature
        top_p = opts.top_p if self.top_p is None else self.top_p
        extra["sent"] = {"temperature": temperature, "top_p": top_p, "max_new_tokens": opts.max_new_tokens}
        if opts.seed is not None and temperature > 0:
            extra["seed_ignored"] = True  # the server has no seed; sampled outputs are not repeatable

        body = build_request_body(prompt, temperature, top_p, opts.max_new_tokens)
        http_req = urllib.request.Request(
            self.url + ENDPOINT, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            resp = urllib.request.urlopen(http_req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise GLM4VoiceServerError(f"{self.url}{ENDPOINT} answered HTTP {e.code}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            # mid-run (the server went away): this sample fails, the run goes on
            raise GLM4VoiceServerError(unreachable_message(self.url, e)) from None

        text_ids: list[int] = []
        text_so_far = ""
        pending: list[int] = []  # speech tokens not decoded yet
        n_audio = 0
        block = 0
        session = decoder.start() if decoder else None
        ended = False

        def flush(finalize: bool) -> StreamEvent:
            nonlocal pending, block
            samples = session.decode(pending, finalize)
            extra.setdefault("decoded_blocks", []).append(len(pending))
            pending = []
            block = min(block + 1, len(DECODER_BLOCK_SIZES) - 1)
            return StreamEvent("audio", time.monotonic(), audio=Audio(samples, decoder.sample_rate))

        with resp:
            for token_id in iter_token_ids(resp):
                routed = route_token(token_id, audio_offset, end_id)
                now = time.monotonic()
                if routed.kind == "end":
                    ended = True
                    yield StreamEvent("mark", now, name="end_of_turn")
                    break  # the demo ignores what follows the end tag
                if routed.kind == "text":
                    if not text_ids:
                        yield StreamEvent("mark", now, name="first_text_token")
                    text_ids.append(routed.value)
                    decoded = tok.decode(text_ids)
                    # Hold back an incomplete multi-byte character until its next token arrives.
                    if (not decoded.endswith("\ufffd") and len(decoded) > len(text_so_far)
                            and decoded.startswith(text_so_far)):
                        yield StreamEvent("text", now, text=decoded[len(text_so_far):])
                        text_so_far = decoded
                else:
                    if n_audio == 0:
                        yield StreamEvent("mark", now, name="first_audio_token")
                    n_audio += 1
                    if session is not None:
                        pending.append(routed.value)
                        # Same block boundaries as web_demo.py, decoded as soon as a block is full
                        # (the demo waits for the next token to arrive).
                        if len(pending) >= DECODER_BLOCK_SIZES[block]:
                            yield flush(finalize=False)
        if session is not None and pending:
            # The demo drops a last partial block when the stream stops without <|user|>; we decode it.
            yield flush(finalize=True)
        final = tok.decode(text_ids) if text_ids else ""
        if len(final) > len(text_so_far):
            yield StreamEvent("text", time.monotonic(), text=final[len(text_so_far):])
        extra["ended"] = ended
        # the server does not say whether its token budget or the stream ended the answer
        extra["stop_reason"] = "eos" if ended else "server_stream_end"
        yield StreamEvent("end", time.monotonic(), info={
            "prompt": prompt, "tokens": {"text": len(text_ids), "audio": n_audio}, **extra})

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        out = []
        for r in requests:
            resp = collect_stream(self.stream(r))
            if resp.text is not None:
                resp.text = resp.text.strip()
            out.append(resp)
        return out
