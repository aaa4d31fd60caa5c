"""Packing several samples into one row, with no attention across samples and positions restarting per sample.

A packed micro-batch keeps the same samples (so the global batch still counts samples, as in the paper); only their
layout changes: first-fit-decreasing into rows of `capacity` model positions (an image counts `visual_tokens`, or,
tiled (input=hd/anyres), its own count, which the sample carries).
Each row holds `position_ids` that restart at 0 at every sample and `segment_ids` (1, 2, ... per sample, 0 for
padding). Given `position_ids`, no 2-D attention mask and no KV cache (`use_cache=False`, as in training),
transformers' causal-mask builder
(masking_utils.find_packed_sequence_indices) makes the mask block-diagonal, so a packed row computes exactly what
its samples compute alone (tests/test_data_packing.py checks logits). This module only lays the rows out;
`LlavaModel.forward(..., position_ids=)` splices the images into them (the one splice, packed or not).
"""

from __future__ import annotations

from typing import Any

import torch

from lmm.constants import IGNORE_INDEX
from lmm.data.dataset import image_fields, visual_cost


def first_fit_decreasing(costs: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total cost <= capacity (an over-long item gets a bin of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        for b, free in enumerate(room):
            if costs[i] <= free:
                bins[b].append(i)
                room[b] -= costs[i]
                break
        else:
            bins.append([i])
            room.append(capacity - costs[i])
    for b in bins:  # keep the sampler's order inside a row (deterministic, and easier to read)
        b.sort()
    return bins


def pack(samples: list[dict[str, Any]], pad_token_id: int, capacity: int, visual_tokens: int = 1) -> dict[str, Any]:
    """Pack samples (as built by SampleBuilder) into rows; per-sample fields stay in sample order."""
    costs = [visual_cost(s, visual_tokens) for s in samples]
    rows = first_fit_decreasing(costs, capacity)
    longest = max(sum(len(samples[i]["input_ids"]) for i in row) for row in rows)
    n = len(rows)
    input_ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((n, longest), dtype=torch.long)
    position_ids = torch.zeros((n, longest), dtype=torch.long)
    segment_ids = torch.zeros((n, longest), dtype=torch.long)
    order: list[int] = []
    for r, row in enumerate(rows):
        cur = 0
        for seg, i in enumerate(row, start=1):
            ids, lab = samples[i]["input_ids"], samples[i]["labels"].clone()
            lab[0] = IGNORE_INDEX  # never predict a sample's first token from the previous sample's last one
            k = len(ids)
            input_ids[r, cur:cur + k], labels[r, cur:cur + k] = ids, lab
            attention_mask[r, cur:cur + k], segment_ids[r, cur:cur + k] = 1, seg
            position_ids[r, cur:cur + k] = torch.arange(k)
            cur += k
            order.append(i)
        position_ids[r, cur:] = torch.arange(longest - cur)  # padding: a sequence of its own, without loss
    with_image = [samples[i] for i in order if samples[i]["has_image"]]
    if not with_image:  # the connector still runs (DDP/FSDP need every parameter in every step)
        with_image = [{**samples[0], "image": torch.zeros_like(samples[0]["image"])}]
    row_cost = [sum(costs[i] for i in row) for row in rows]
    return {"ids": [samples[i]["id"] for i in order], "sources": [samples[i]["source"] for i in order],
            "input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "position_ids": position_ids, "segment_ids": segment_ids, **image_fields(with_image),
            "has_image": torch.tensor([bool(samples[i]["has_image"]) for i in order]),
            "sample_tokens": torch.tensor([int((samples[i]["labels"][1:] != IGNORE_INDEX).sum()) for i in order]),
            "positions": torch.tensor([n * max(row_cost), sum(row_cost)]), "packed": True}

