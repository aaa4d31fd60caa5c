"""lmm's loss checked against a reference lmm did not write: the causal-LM loss of transformers.

`LlavaModel.token_loss` must give, for the same logits and labels, what transformers gives: per supervised token,
summed over a batch, and as the mean LlavaForConditionalGeneration(labels=) reports, with ignored positions, padding
and a text-only sample in the batch. A loss that compared logits with unshifted labels, or counted ignored
positions, fails here.
"""

from __future__ import annotations

import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lmm.model.io import from_hf_llava
from tests.test_parity import BOS, IMAGE_ID, hf_ids, pad_batch, tiny_hf_llava

# one prompt with an image, one text-only; supervised answers of different lengths, a prompt part ignored
ROWS = [([BOS, 5, 6, IMAGE_TOKEN_INDEX, 7, 8], [9, 10, 11, 2]), ([BOS, 12, 13, 14], [15, 16, 17, 18, 19, 20, 2])]


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, labels = [], []
    for prompt, answer in ROWS:
        ids.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    input_ids, mask = pad_batch(ids, "right")
    lab = torch.full_like(input_ids, IGNORE_INDEX)
    for b, row in enumerate(labels):
        lab[b, : len(row)] = torch.tensor(row)
    lab[0, -2] = IGNORE_INDEX  # an ignored position inside an answer, too
    return input_ids, mask, lab


def test_token_loss_equals_transformers_per_token_and_summed() -> None:
    hf = tiny_hf_llava()
    model, _ = from_hf_llava(hf)
    model.eval()
    input_ids, mask, labels = _batch()
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, spliced = model(input_ids, mask, images, labels)
        loss_sum, n = model.token_loss(logits, spliced.labels)
        vocab = logits.shape[-1]
        supervised = (spliced.labels[:, 1:] != IGNORE_INDEX).nonzero().tolist()
        assert int(n) == len(supervised) == 3 + 7  # answer tokens, less the ignored one
        for b, j in supervised:  # per token: one supervised position at a time
            only = torch.full_like(spliced.labels, IGNORE_INDEX)
            only[b, j + 1] = spliced.labels[b, j + 1]
            mine, count = model.token_loss(logits, only)
            ref = ForCausalLMLoss(logits, only, vocab)
            assert int(count) == 1
            torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loss_sum, ForCausalLMLoss(logits, spliced.labels, vocab, num_items_in_batch=1))

        # end to end: LlavaForConditionalGeneration's own loss over the same batch, HF's input form
        hf_rows = [hf_ids(prompt + answer) for prompt, answer in ROWS]
        hf_input, hf_mask = pad_batch(hf_rows, "right")
        assert hf_input.shape == spliced.labels.shape and (hf_input == IMAGE_ID).sum() == model.num_visual_tokens
        hf_out = hf(input_ids=hf_input, attention_mask=hf_mask, pixel_values=images[:1], labels=spliced.labels)
    torch.testing.assert_close(loss_sum / n, hf_out.loss, rtol=1e-5, atol=1e-6)
