"""Pretraining on the CPU for the tiny world's zoo: one deterministic training loop (AdamW, linear warmup then cosine
decay, gradient clipping, a tqdm bar) shared by the CLIP and the Llama pretraining, and `pretrain_llm` itself.

Determinism: a pretraining seeds torch inside `torch.random.fork_rng` (the caller's RNG state is left as it was),
draws its data order from its own seeded generator, and runs CPU kernels whose results do not depend on the run:
the same arguments on the same machine and thread count give byte-identical safetensors files.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lmm.log import log


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Seed torch for a build without disturbing the caller's RNG; yields a generator for the data order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed + 1)


class Batches:
    """Index batches over `n` items: each epoch a new order drawn from `generator`, a batch may span two epochs."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.pending: list[int] = []

    def next(self) -> torch.Tensor:
        while len(self.pending) < self.batch_size:
            self.pending += torch.randperm(self.n, generator=self.generator).tolist()
        batch, self.pending = self.pending[:self.batch_size], self.pending[self.batch_size:]
        return torch.tensor(batch, dtype=torch.long)


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Hugging Face's own progress bars ("Loading weights", "Writing model shards") off for a while."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class Clock:
    """Wall-clock and process CPU seconds since creation. On an idle machine wall ~ cpu / threads; when other jobs
    share the cores the wall time grows and the CPU time much less (a rough idle-machine estimate is cpu / threads)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - self.wall, 1),
                "cpu_seconds": round(time.process_time() - self.cpu, 1)}


def cosine_schedule(step: int, steps: int, warmup: int, decay: bool = True) -> float:
    """The learning-rate factor at `step`: linear warmup to 1 over `warmup` steps, then cosine decay to 0.1 (or, with
    `decay` off, 1 throughout)."""
    if step < warmup:
        return (step + 1) / warmup
    if not decay:
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, no_decay: Sequence[str] = ()) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only (not on norms, biases, scalars or `no_decay` names)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not any(k in name for k in no_decay) else rest).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def train_steps(model: torch.nn.Module, loss_of_step: Callable[[int], torch.Tensor], *, steps: int, lr: float,
                warmup: int, weight_decay: float, desc: str, progress: bool, bf16: bool = False,
                no_decay: Sequence[str] = (), after_step: Callable[[], None] | None = None,
                decay: bool = True, stop: Callable[[int], bool] | None = None) -> list[float]:
    """Run `steps` optimiser steps of `loss_of_step(step)` and return every step's loss.

    AdamW (betas 0.9/0.95), warmup then cosine decay (cosine_schedule; constant with `decay` off), gradients clipped
    at norm 1. `bf16` runs
    the forward passes under CPU bfloat16 autocast (weights and optimiser stay fp32). `after_step` runs after each
    optimiser step (CLIP clamps its logit scale there); `stop(steps done)` after that ends the training early when it
    says so (the model back in train mode is its business).
    """
    from tqdm.auto import tqdm

    model.train()
    opt = adamw(model, lr, weight_decay, no_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_schedule(s, steps, warmup, decay))
    losses: list[float] = []
    bar = tqdm(total=steps, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=1.0, leave=True)
    try:
        for step in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_of_step(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step()
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if stop is not None and stop(step + 1):
                break
    finally:
        bar.close()
    model.eval()
    return losses


def final_loss(losses: Sequence[float], window: int = 20) -> float | None:
    """The mean of the last `window` steps' losses (None without steps): less noisy than the very last one."""
    tail = list(losses[-window:])
    return sum(tail) / len(tail) if tail else None


def llama_config(tokenizer: PreTrainedTokenizerBase, hidden_size: int = 128, num_layers: int = 4,
                 num_heads: int = 4, intermediate_size: int | None = None,
                 max_position_embeddings: int = 1024) -> LlamaConfig:
    """A small Llama with the tokenizer's vocabulary and special ids (untied embeddings, as Llama-2/Vicuna)."""
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size,
                       intermediate_size=intermediate_size or int(2.75 * hidden_size), num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, num_key_value_heads=num_heads,
                       max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)


def token_stream(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """The texts in a seeded random order, each as BOS + text + EOS, concatenated into one stream of ids."""
    order = torch.randperm(len(texts), generator=generator).tolist()
    encoded = tokenizer([texts[i] for i in order], add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return torch.tensor([t for ids in encoded for t in (bos, *ids, eos)], dtype=torch.long)


@torch.no_grad()
def heldout_perplexity(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                       batch_size: int = 32) -> float:
    """Token-weighted perplexity over `texts`, each scored alone as BOS + text + EOS (every token after BOS)."""
    model.eval()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    limit = model.config.max_position_embeddings
    seqs = sorted(([bos, *ids, eos][:limit] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]),
                  key=len)
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="sum",
                                                         ignore_index=-100))
        count += int((target != -100).sum())
    return math.exp(total / max(count, 1))


def document_rows(tokenizer: PreTrainedTokenizerBase, documents: Sequence[str],
                  seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document as a row of its own, BOS + document + EOS cut at `seq_len` and right-padded: (ids, labels), pad
    labelled -100. Why not packed with the text: a document is read from its own beginning, so that what a question
    looks up is in this document and no other."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = torch.full((len(documents), seq_len), pad, dtype=torch.long)
    labels = torch.full((len(documents), seq_len), -100, dtype=torch.long)
    for i, doc in enumerate(tokenizer(list(documents), add_special_tokens=False)["input_ids"]):
        row = torch.tensor([bos, *doc, eos][:seq_len])
        ids[i, :len(row)], labels[i, :len(row)] = row, row
    return ids, labels


def grown(folder: str | Path, repeat: int) -> LlamaForCausalLM:
    """The Llama at `folder` with each decoder layer repeated `repeat` times in place (layers 0, 0, 1, 1, ... for 2):
    a deeper model that starts as the smaller one's continuation (depth up-scaling), so that what the smaller one
    learned is kept and the larger costs only its own further steps."""
    with quiet_hf():
        small = LlamaForCausalLM.from_pretrained(folder)
    config = LlamaConfig.from_dict(small.config.to_dict())
    config.num_hidden_layers = small.config.num_hidden_layers * repeat
    model = LlamaForCausalLM(config)
    state = {}
    for key, value in small.state_dict().items():
        if key.startswith("model.layers."):
            layer, rest = key.removeprefix("model.layers.").split(".", 1)
            for r in range(repeat):
                state[f"model.layers.{int(layer) * repeat + r}.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    model.load_state_dict(state)
    return model


def pretrain_llm(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
                 hidden_size: int | None = None, num_layers: int | None = None, num_heads: int | None = None,
                 steps: int = 600, batch_size: int = 16, seq_len: int = 256, lr: float = 3e-3,
                 warmup: int | None = None, weight_decay: float = 0.1, seed: int = 0,
                 heldout_texts: Sequence[str] | None = None, reading: Sequence[str] = (), reading_steps: int = 0,
                 reading_check: Callable[[LlamaForCausalLM], float] | None = None, reading_target: float = 1.0,
                 check_every: int = 250, documents: Sequence[str] = (), documents_share: float = 0.0,
                 grow_from: str | Path | None = None, repeat_layers: int = 2,
                 bf16: bool = False, progress: bool = True, name: str | None = None) -> dict:
    """Pretrain a LlamaForCausalLM (llama_config) on `texts` with next-token loss and save it with its tokenizer.

    The texts, each as BOS + text + EOS, are concatenated in a seeded random order and cut into `seq_len` blocks
    (the remainder dropped); each epoch visits the blocks in a new seeded order, `batch_size` blocks per step.
    Before them, up to `reading_steps` steps of the `reading` documents alone (one per row, document_rows), ended
    early once `reading_check(model)`, scored every `check_every` steps, reaches `reading_target` (the skill they
    teach forms abruptly, after a number of steps that varies with the seed); during them,
    `documents_share` of each batch's rows are `documents` (one per row) instead of text blocks. Each part has its
    own optimiser and schedule: the reading steps warm up and stay at `lr`, the text steps warm up (`warmup`,
    default 5% of them) and decay (cosine) as a pretraining alone does. From scratch, a Llama
    of `hidden_size` (128) x `num_layers` (4) with `num_heads` (4); `grow_from`: that saved Llama with its layers
    repeated `repeat_layers` times (`grown`; leave the size arguments None).
    Returns {"steps" (both parts), "reading_steps" (taken), "reading_checks" ([steps, check] pairs), "final_check"
    (reading_check after all steps; None without it), "seconds", "cpu_seconds", "first_loss", "final_loss" (mean of
    the last 20 steps), "heldout_ppl" (token-weighted over `heldout_texts`, None without), "params", "tokens"}.
    """
    out_dir = Path(out_dir)
    name = name or out_dir.name
    if reading_steps and not reading:
        raise ValueError(f"reading_steps={reading_steps} but no reading documents")
    if documents_share and not documents:
        raise ValueError(f"documents_share={documents_share} but no documents")
    if grow_from is not None and any(v is not None for v in (hidden_size, num_layers, num_heads)):
        raise ValueError("a grown Llama keeps the width and heads of the one it grows from: leave the sizes None")
    if not 0 <= documents_share < 1:
        raise ValueError(f"documents_share must be in [0, 1), got {documents_share}")
    clock = Clock()
    doc_rows = round(documents_share * batch_size) if documents else 0
    with seeded(seed) as gen:
        model = (grown(grow_from, repeat_layers) if grow_from is not None
                 else LlamaForCausalLM(llama_config(tokenizer, hidden_size or 128, num_layers or 4, num_heads or 4)))
        stream = token_stream(tokenizer, texts, gen)
        blocks = stream[: len(stream) // seq_len * seq_len].view(-1, seq_len)
        if steps > 0 and len(blocks) == 0:
            raise ValueError(f"{len(stream)} tokens of text do not fill one block of seq_len={seq_len}")
        losses: list[float] = []
        checks: list[tuple[int, float]] = []  # (reading steps done, reading_check) at each check
        if reading_steps:  # the documents alone, at a constant rate after warmup: the skill forms abruptly, late
            read = document_rows(tokenizer, reading, seq_len)
            width = int((read[1] != -100).sum(1).max())  # no column of padding alone
            read_ids, read_labels = read[0][:, :width], read[1][:, :width]
            read_batches = Batches(len(reading), batch_size, gen)

            def reading_step(step: int) -> torch.Tensor:
                idx = read_batches.next()
                return model(input_ids=read_ids[idx], attention_mask=(read_labels[idx] != -100).long(),
                             labels=read_labels[idx]).loss

            def formed(done: int) -> bool:
                if reading_check is None or done % check_every:
                    return False
                checks.append((done, round(reading_check(model), 4)))
                model.train()
                log.info(f"{name}: reading check {checks[-1][1]:.3f} after {done} steps (target {reading_target})")
                return checks[-1][1] >= reading_target

            losses += train_steps(model, reading_step, steps=reading_steps, lr=lr, weight_decay=weight_decay,
                                  bf16=bf16, warmup=max(1, reading_steps // 20), desc=f"{name} (reading)",
                                  progress=progress, decay=False, stop=formed)
        read_done = len(losses)
        batches = Batches(len(blocks), batch_size - doc_rows, gen)
        docs = document_rows(tokenizer, documents, seq_len) if doc_rows else None
        doc_batches = Batches(len(documents), doc_rows, gen) if docs is not None else None

        def text_step(step: int) -> torch.Tensor:
            ids = blocks[batches.next()]
            if docs is None:
                return model(input_ids=ids, labels=ids).loss
            more = doc_batches.next()
            ids, labels = torch.cat([ids, docs[0][more]]), torch.cat([ids, docs[1][more]])
            return model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss

        losses += train_steps(model, text_step, steps=steps, lr=lr, weight_decay=weight_decay, bf16=bf16,
                              warmup=warmup if warmup is not None else max(1, steps // 20), desc=name,
                              progress=progress)
        ppl = heldout_perplexity(model, tokenizer, heldout_texts) if heldout_texts else None
        final_check = round(reading_check(model), 4) if reading_check is not None else None
    with quiet_hf():
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    total = len(losses)
    result = {"steps": total, "reading_steps": read_done, "reading_checks": checks, "final_check": final_check,
              **clock.read(), "first_loss": losses[0] if losses else None,
              "final_loss": final_loss(losses), "heldout_ppl": ppl,
              "params": sum(p.numel() for p in model.parameters()), "tokens": total * batch_size * seq_len}
    ppl_text = f", held-out perplexity {ppl:.2f}" if ppl is not None else ""
    log.info(f"{name}: {result['params'] / 1e6:.2f}M-parameter Llama, {total} steps in {result['seconds']}s, "
             f"loss {result['final_loss'] or float('nan'):.3f}{ppl_text}")
    return result
