"""Packing several samples into one row, with no attention across samples and positions restarting per sample.

A packed micro-batch keeps the same samples (so the global batch still counts samples, as in the paper); only their
layout changes: first-fit-decreasing into rows of `capacity` model positions (an image counts `visual_tokens`).
Each row holds `position_ids` that restart at 0 at every sample and `segment_ids` (1, 2, ... per sample, 0 for
padding). Given `position_ids`, no 2-D attention mask and no KV cache (`use_cache=False`, as in training),
transformers' causal-mask builder
(masking_utils.find_packed_sequence_indices) makes the mask block-diagonal, so a packed row computes exactly what
its samples compute alone (tests/test_data_packing.py checks logits). The model's splice must expand each image
placeholder to its visual tokens with positions continuing inside the sample (see experiments/data_pipeline.md).
"""

from __future__ import annotations

from typing import Any

import torch

from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


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
    costs = [len(s["input_ids"]) + (visual_tokens - 1) * bool(s["has_image"]) for s in samples]
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
    images = [samples[i]["image"] for i in order if samples[i]["has_image"]]
    if not images:  # the connector still runs (DDP/FSDP need every parameter in every step)
        images = [torch.zeros_like(samples[0]["image"])]
    row_cost = [sum(costs[i] for i in row) for row in rows]
    return {"ids": [samples[i]["id"] for i in order], "sources": [samples[i]["source"] for i in order],
            "input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "position_ids": position_ids, "segment_ids": segment_ids, "images": torch.stack(images),
            "has_image": torch.tensor([bool(samples[i]["has_image"]) for i in order]),
            "sample_tokens": torch.tensor([int((samples[i]["labels"][1:] != IGNORE_INDEX).sum()) for i in order]),
            "positions": torch.tensor([n * max(row_cost), sum(row_cost)]), "packed": True}


def packed_forward(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a packed micro-batch through a LlavaModel (its encoder, connector and LLM).

    Each image placeholder, in row-major order, takes the next image's visual tokens; positions restart at every
    sample and continue through its visual tokens; the LLM gets no 2-D mask and no cache, so transformers builds the
    block-diagonal causal mask from the positions. The labels align with the logits as in LlavaModel.forward, so
    `LlavaModel.token_loss(logits, labels)` applies unchanged.
    """
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    starts = batch["position_ids"]
    embed = model.llm.get_input_embeddings()
    text = embed(input_ids.clamp(min=0))
    visual = model.encode_images(batch["images"])
    n_visual = visual.shape[1]
    rows, row_labels, row_positions = [], [], []
    k = 0
    for r in range(input_ids.shape[0]):
        n = int(mask[r].sum())
        bounds = (starts[r, :n] == 0).nonzero().flatten().tolist() + [n]
        pieces, labs, pos = [], [], []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # one sample: tokens [a, b) of the row
            prev = a
            for p in (input_ids[r, a:b] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                pieces += [text[r, prev:a + p], visual[k]]
                labs += [labels[r, prev:a + p], labels.new_full((n_visual,), IGNORE_INDEX)]
                prev, k = a + p + 1, k + 1
            pieces.append(text[r, prev:b])
            labs.append(labels[r, prev:b])
            pos.append(torch.arange(sum(len(x) for x in labs) - sum(len(x) for x in pos)))
        rows.append(torch.cat(pieces))
        row_labels.append(torch.cat(labs))
        row_positions.append(torch.cat(pos))
    if k != visual.shape[0] and not (k == 0 and visual.shape[0] == 1):
        raise ValueError(f"the packed batch has {k} image placeholders but {visual.shape[0]} images")
    longest = max(len(x) for x in rows)
    embeds = text.new_zeros(len(rows), longest, text.shape[-1])
    out_labels = labels.new_full((len(rows), longest), IGNORE_INDEX)
    positions = torch.zeros(len(rows), longest, dtype=torch.long, device=input_ids.device)
    for r, (e, lab, pos) in enumerate(zip(rows, row_labels, row_positions, strict=True)):
        n = len(e)
        embeds[r, :n], out_labels[r, :n] = e, lab
        positions[r, :n] = pos.to(positions.device)
        positions[r, n:] = torch.arange(longest - n, device=positions.device)  # padding: a sequence of its own
    if k == 0:  # keep the connector in the graph (DDP/FSDP), with no effect on the values
        embeds = embeds + 0 * visual.sum()
    logits = model.llm(inputs_embeds=embeds, position_ids=positions, use_cache=False).logits
    return logits, out_labels
