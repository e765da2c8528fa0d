"""Rows and columns of a KV cache (static or dynamic), edited in place while a batch decodes.

A batch decodes in lockstep: every row writes its step's keys to the same cache column.
When a row's answer ends, the row leaves (`keep_rows`) or, while requests wait, the next
request's prompt is written into it (`write_rows`): its prefilled keys fill the columns just
before the current one, its attention mask hides the rest of the row. Columns that no live
row can see any more are dropped from the front (`drop_columns`): attention runs over every
column up to the current one, masked or not.

Keys are stored after their rotary embedding, so moving a row's keys to other columns
changes nothing it attends to (its positions travel in `position_ids`, not in columns).
"""
from __future__ import annotations

import torch


def _layers(past):
    return [layer for layer in past.layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]


def keep_rows(past, rows: torch.Tensor) -> None:
    """Keep only `rows` of the cache, in that order."""
    for layer in _layers(past):
        layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
    for layer in past.layers:
        if hasattr(layer, "max_batch_size"):
            layer.max_batch_size = len(rows)


def write_rows(past, rows: torch.Tensor, prefilled, end: int) -> None:
    """Put the prefilled cache `prefilled` (one row per entry of `rows`, W columns) into
    `rows` of `past`, in the W columns before column `end`."""
    for layer, new in zip(_layers(past), _layers(prefilled)):
        width = new.keys.shape[2]
        if width > end:
            raise ValueError(f"a prompt of {width} positions does not fit before cache column {end}")
        layer.keys[rows, :, end - width:end] = new.keys.to(layer.keys.dtype)
        layer.values[rows, :, end - width:end] = new.values.to(layer.values.dtype)


def drop_columns(past, first: int, end: int) -> None:
    """Drop columns [0, first) of every row; columns [first, end) move to [0, end - first).
    A static cache keeps its length (the vacated columns are zeroed, as unwritten ones are);
    a dynamic one gets shorter."""
    for layer in _layers(past):
        if hasattr(layer, "max_cache_len"):   # static: fixed tensors, moved in place
            for t in (layer.keys, layer.values):
                t[:, :, : end - first] = t[:, :, first:end].clone()
                t[:, :, end - first:end].zero_()
        else:
            layer.keys, layer.values = layer.keys[:, :, first:end], layer.values[:, :, first:end]
