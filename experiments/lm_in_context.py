"""Can a world LM use what is in its context? The skill LLaVA's LLM needs before any tower can help it.

LLaVA hands the image to the LLM as tokens before the question; answering "Is there a kite?" from them is, for the
LLM, looking something up earlier in its context. This script asks that of an LM in text alone, on fresh scenes:
the scene's detailed description (the world's own sentences, every object named), then "Is there a {kind} in the
image?" about a kind present or absent (even odds), answered greedily. Two figures:

- copy: the asked kind appears in the answer (the conversations answer "No, there is no kite ..." or "Yes, there
  is a red kite ..."): repeating a word from ten tokens back, the simplest use of context;
- existence: the answer starts "Yes" exactly when the description names the kind (0.5 = the context unused).

    python experiments/lm_in_context.py .cache/lmm/worlds/tiny-<hash>/llama-tiny [more LM folders] [--scenes N]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from lmm.world.questions import article, detailed_description
from lmm.world.scenes import sample_scene

Ask = Callable[[str], str]  # prompt -> the LM's answer


def probes(scenes: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """(prompt, asked kind, present?) for fresh scenes with a kind present and one absent: one question of each."""
    rng = random.Random(f"in-context-{seed}")
    out = []
    while len(out) < 2 * scenes:
        scene = sample_scene(rng)
        present, absent = scene.kinds()
        if not present or not absent:
            continue
        text = detailed_description(scene)
        for kind, there in ((rng.choice(present), True), (rng.choice(absent), False)):
            out.append((f"{text} Is there {article(kind)} in the image?", kind, there))
    return out


def in_context_figures(ask: Ask, items: Sequence[tuple[str, str, bool]]) -> dict[str, float]:
    """The copy and existence rates of `ask` over `items` (see the module docstring)."""
    answers = [ask(prompt) for prompt, _, _ in items]
    n = len(items)
    copy = sum(kind in a.split() or f"{kind}s" in a.split() or f"{kind}." in a.split()
               for a, (_, kind, _) in zip(answers, items, strict=True))
    right = sum(a.strip().startswith("Yes") == there for a, (_, _, there) in zip(answers, items, strict=True))
    return {"copy": copy / n, "existence": right / n, "yes": sum(a.strip().startswith("Yes") for a in answers) / n,
            "n": n}


def greedy(folder: str, max_new_tokens: int = 12) -> Ask:
    """The LM of `folder` answering greedily (its own tokenizer; special tokens dropped)."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder).eval()

    @torch.no_grad()
    def ask(prompt: str) -> str:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return ask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lms", nargs="+", help="Llama folders (the world's llama-tiny, llama-tiny-large, ...)")
    ap.add_argument("--scenes", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    items = probes(args.scenes)
    for folder in args.lms:
        f = in_context_figures(greedy(folder), items)
        print(f"{folder}: asked kind repeated {100 * f['copy']:.1f}%, existence right {100 * f['existence']:.1f}% "
              f"(\"Yes\" {100 * f['yes']:.1f}%; {f['n']} questions, half about absent kinds)")


if __name__ == "__main__":
    main()
