"""How much pretraining does a world LM need before it looks things up in its context? (tenth measurement)

LLaVA's LLM answers "Is there a kite?" by finding the kite among the visual tokens before the question: a lookup in
its context, a skill real LLMs bring from web-scale pretraining and the world's LMs lack (`lm_in_context.py`). This
script trains a Llama of the world's architecture from scratch on *reading* documents (a fresh scene's detailed
description followed by `questions` existence questions about that scene, asked both ways, each answered as the
world's conversations answer) mixed with the world's own pretraining text, and every `every` steps reports how well
the logit of "Yes" minus "No" after a held-out description + "Is there a {kind} in the image?" separates present
from absent kinds (AUC; 0.5 = the context unused) and how often its sign is right.

    python experiments/lm_reading.py .cache/lmm/worlds/tiny-<hash>/llama-tiny --steps 2000 [--reading 0.5]
        [--loss answers] [--save DIR]

(the world's LM folder gives the tokenizer; its weights are not used: the LM is trained from scratch, or from
`--init DIR`, an LM this script saved.)

`--loss all` (the default) is next-token loss on every token, as pretraining is; `--loss answers` supervises only
the answers, as LLaVA's instruct stage does. One thread; the same arguments give the same figures on one machine.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator

import torch
from torchmetrics.functional.classification import binary_auroc
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from lmm.world.lm_text import pretraining_text, reading_turns
from lmm.world.pretrain import llama_config
from lmm.world.questions import article, detailed_description
from lmm.world.scenes import sample_scene

IGNORE = -100


def reading_document(tok: PreTrainedTokenizerBase, rng: random.Random, questions: int,
                     loss: str) -> tuple[list[int], list[int]]:
    """BOS + a scene's description + `questions` existence turns about it (lmm.world.lm_text.reading_turns): (ids,
    labels); with loss="answers" only the answers' tokens are labelled."""
    description, turns = reading_turns(sample_scene(rng), rng, questions)
    ids = [tok.bos_token_id, *tok(description, add_special_tokens=False).input_ids]
    labels = list(ids) if loss == "all" else [IGNORE] * len(ids)
    for q, a in turns:
        q_ids = tok(" " + q, add_special_tokens=False).input_ids
        a_ids = tok(" " + a, add_special_tokens=False).input_ids
        ids += q_ids + a_ids
        labels += (q_ids if loss == "all" else [IGNORE] * len(q_ids)) + a_ids
    return ids, labels


def batches(tok: PreTrainedTokenizerBase, *, reading: float, questions: int, loss: str, batch_size: int,
            seq_len: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of fresh documents, one per row (cut at `seq_len`, padded): a reading document with
    probability `reading`, else one of the world's pretraining documents (all its tokens labelled)."""
    rng = random.Random(seed)
    while True:
        ids = torch.full((batch_size, seq_len), tok.pad_token_id)
        labels = torch.full((batch_size, seq_len), IGNORE)
        for row in range(batch_size):
            if reading < 1 and rng.random() > reading:
                doc = [tok.bos_token_id, *tok(pretraining_text(rng, 1)[0], add_special_tokens=False).input_ids,
                       tok.eos_token_id]
                x, y = doc, list(doc)
            else:
                x, y = reading_document(tok, rng, questions, loss)
            x, y = x[:seq_len], y[:seq_len]
            ids[row, :len(x)], labels[row, :len(y)] = torch.tensor(x), torch.tensor(y)
        yield ids, labels


def existence_probes(tok: PreTrainedTokenizerBase, scenes: int, seed: int = 11) -> list[tuple[list[int], int]]:
    """(ids, present?) for held-out scenes with a kind present and one absent: one question about each."""
    rng = random.Random(seed)
    out: list[tuple[list[int], int]] = []
    while len(out) < 2 * scenes:
        scene = sample_scene(rng)
        present, absent = scene.kinds()
        if not present or not absent:
            continue
        for kind, there in ((rng.choice(present), 1), (rng.choice(absent), 0)):
            prompt = f"{detailed_description(scene)} Is there {article(kind)} in the image?"
            out.append((tok(prompt).input_ids, there))
    return out


@torch.no_grad()
def existence_figures(model: LlamaForCausalLM, tok: PreTrainedTokenizerBase,
                      probes: list[tuple[list[int], int]]) -> dict[str, float]:
    """AUC of the Yes-minus-No logit margin (present vs absent) and the accuracy of its sign."""
    yes, no = tok.convert_tokens_to_ids("▁Yes"), tok.convert_tokens_to_ids("▁No")
    was_training = model.training
    model.eval()
    last = [model(torch.tensor([ids])).logits[0, -1] for ids, _ in probes]
    model.train(was_training)
    margins = torch.stack([logits[yes] - logits[no] for logits in last])
    truth = torch.tensor([t for _, t in probes])
    right = ((margins > 0).long() == truth).float().mean()
    return {"auc": binary_auroc(margins, truth).item(), "accuracy": right.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tokenizer", help="a world LM folder, for its tokenizer (llama-tiny)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--reading", type=float, default=1.0, help="share of reading documents (the rest: world text)")
    ap.add_argument("--questions", type=int, default=6, help="existence questions per reading document")
    ap.add_argument("--loss", choices=("all", "answers"), default="all")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--probes", type=int, default=200, help="held-out scenes (two questions each)")
    ap.add_argument("--init", default=None, help="continue this saved LM instead of training one from scratch")
    ap.add_argument("--save", default=None, help="save the LM and tokenizer here (a world LM folder's layout)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(0)
    model = (LlamaForCausalLM.from_pretrained(args.init) if args.init
             else LlamaForCausalLM(llama_config(tok, args.hidden, args.layers)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))  # warmup, then constant
    data = batches(tok, reading=args.reading, questions=args.questions, loss=args.loss, batch_size=args.batch_size,
                   seq_len=args.seq_len)
    probes = existence_probes(tok, args.probes)
    started = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        ids, labels = next(data)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % args.every == 0 or step == args.steps:
            f = existence_figures(model, tok, probes)
            print(f"step {step}: loss {loss.item():.3f}, existence AUC {f['auc']:.3f}, accuracy {f['accuracy']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)


if __name__ == "__main__":
    main()
