"""Piper's VITS noise drawn per utterance from a seed, not from the ONNX session's generators.

A Piper voice draws its noise (the stochastic duration predictor's and the prior's) in
RandomNormalLike nodes whose generators onnxruntime seeds once per session, so what an
utterance sounds like depends on every utterance the process spoke before it: the same
question synthesised on two cold caches, after different work, came out differently.

`seeded_noise_graph` turns each such node into a read of a new graph input (a noise bank,
tiled if the node needs more than the bank holds, then cut to the node's shape), and
`SeededNoiseSession` feeds those inputs from a generator seeded by the utterance's phoneme ids,
its speaker and a base seed (`noise_seed`): the same text gives the same audio in any order,
in any process, on any machine.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator

import numpy as np

NOISE_INPUT = "deeptalk_noise_{}"
# bank frames when the graph does not say: 2048 prior frames are ~24 s of 22.05 kHz speech
# (hop 256), beyond which a node's noise repeats (Piper speaks one sentence per run)
BANK_LENGTH = 2048
BANK_CHANNELS = 256

_base_seed: contextvars.ContextVar[int] = contextvars.ContextVar("piper_noise_seed", default=0)


@contextlib.contextmanager
def noise_seed(seed: int) -> Iterator[None]:
    """Within the block, Piper utterances draw their noise from (seed, phoneme ids, speaker)."""
    token = _base_seed.set(int(seed))
    try:
        yield
    finally:
        _base_seed.reset(token)


def seeded_noise_graph(model) -> list[tuple[str, int, int]]:
    """Rewrite an onnx ModelProto in place: every RandomNormalLike node reads its noise from a new
    float input. Returns (input name, bank channels, bank length) per rewritten node, in graph order."""
    from onnx import TensorProto, helper, shape_inference

    graph = model.graph
    inferred = {v.name: v for v in shape_inference.infer_shapes(model).graph.value_info}
    banks: list[tuple[str, int, int]] = []
    nodes = []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("dtype", TensorProto.FLOAT) != TensorProto.FLOAT or "mean" in attrs or "scale" in attrs:
            raise ValueError(f"{node.name}: only float N(0, 1) RandomNormalLike nodes are rewritten, got {attrs}")
        k = len(banks)
        bank, like, out = NOISE_INPUT.format(k), node.input[0], node.output[0]
        dims = _known_dims(inferred.get(like))
        channels = dims[1] if len(dims) == 3 and dims[1] else BANK_CHANNELS
        length = dims[2] if len(dims) == 3 and dims[2] else BANK_LENGTH
        graph.input.append(helper.make_tensor_value_info(bank, TensorProto.FLOAT, [1, channels, length]))
        banks.append((bank, channels, length))
        p = f"/deeptalk_noise_{k}/"
        # repeats = ceil(shape(like) / shape(bank)), then tile and cut to shape(like)
        nodes += [
            helper.make_node("Shape", [like], [p + "like_shape"]),
            helper.make_node("Shape", [bank], [p + "bank_shape"]),
            helper.make_node("Constant", [], [p + "one"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
            helper.make_node("Add", [p + "like_shape", p + "bank_shape"], [p + "sum"]),
            helper.make_node("Sub", [p + "sum", p + "one"], [p + "sum_less_one"]),
            helper.make_node("Div", [p + "sum_less_one", p + "bank_shape"], [p + "repeats"]),
            helper.make_node("Tile", [bank, p + "repeats"], [p + "tiled"]),
            helper.make_node("Sub", [p + "like_shape", p + "like_shape"], [p + "starts"]),
            helper.make_node("Slice", [p + "tiled", p + "starts", p + "like_shape"], [out]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return banks


def _known_dims(value_info) -> list[int]:
    if value_info is None:
        return []
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def utterance_seed(base_seed: int, feed: dict) -> int:
    """A 64-bit seed from the base seed, the phoneme ids and the speaker: not from the scales, so
    one utterance at two noise levels draws the same noise."""
    h = hashlib.sha256(str(int(base_seed)).encode())
    for name in ("input", "sid"):
        if name in feed:
            h.update(name.encode())
            h.update(np.ascontiguousarray(feed[name], dtype=np.int64).tobytes())
    return int.from_bytes(h.digest()[:8], "little")


class SeededNoiseSession:
    """An onnxruntime session over a `seeded_noise_graph` model that fills the noise inputs itself."""

    def __init__(self, session, banks: list[tuple[str, int, int]]):
        self.session = session
        self.banks = banks
        # noise scaled by zero: zeros give the same audio without drawing (the phone codec's decoding)
        self._zeros = {name: np.zeros((1, channels, length), np.float32) for name, channels, length in banks}

    def run(self, output_names, feed: dict, *args, **kwargs):
        feed = dict(feed)
        scales = np.asarray(feed.get("scales", [1.0, 1.0, 1.0]), dtype=np.float32).reshape(-1)
        if scales.size >= 3 and scales[0] == 0 and scales[2] == 0:
            feed.update(self._zeros)
        else:
            rng = np.random.default_rng(utterance_seed(_base_seed.get(), feed))
            for name, channels, length in self.banks:
                feed[name] = rng.standard_normal((1, channels, length), dtype=np.float32)
        return self.session.run(output_names, feed, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)
