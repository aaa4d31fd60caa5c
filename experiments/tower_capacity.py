"""Can a tower of the world's architecture learn what the world asks, when told directly? A supervised upper bound.

A fresh tower is trained from scratch, with labels instead of captions, on the world's scenes (a sign in 60% of them):
which kinds are present (ten yes/no heads) and the sign's word (16 words or none), from the pooled output CLIP pools.
If the tower cannot learn a thing this way in the world's CLIP budget (600 steps of 128), contrastive pretraining
on captions will not teach it either. A small convolutional net is the reference (`--tower cnn`): the same heads,
max-pooled over positions.

    python experiments/tower_capacity.py                       # the world's ViT: 64 px, patches of 8, 64 x 3
    python experiments/tower_capacity.py --hidden 192          # wider
    python experiments/tower_capacity.py --tower cnn           # the reference
Prints the held-out figures: mean AUC of the kind heads (0.5 = no signal) and word accuracy by print size.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from transformers import CLIPVisionConfig, CLIPVisionModel

from lmm.world.scenes import KINDS, WORDS, render, sample_scene
from lmm.world.zoo_clip import crop_pixels, normalize


class SmallCNN(nn.Module):
    """Four 3x3 convolutions (three of stride 2) and a max over positions: the reference tower."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
                                 nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(), nn.Conv2d(64, width, 3, 1, 1),
                                 nn.AdaptiveMaxPool2d(1), nn.Flatten())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values)


class PooledViT(nn.Module):
    """A CLIP vision tower from scratch; its pooled (class) output, as CLIP's contrastive loss sees it."""

    def __init__(self, image_size: int, patch_size: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.vit = CLIPVisionModel(CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden,
                                                    num_hidden_layers=layers, num_attention_heads=4,
                                                    image_size=image_size, patch_size=patch_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=pixel_values).pooler_output


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a positive scores above a negative (ties count half): torchmetrics' binary AUROC."""
    return float(binary_auroc(scores, labels.long()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tower", choices=("vit", "cnn"), default="vit")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--scenes", type=int, default=8000)
    ap.add_argument("--task", choices=("both", "kinds", "words"), default="both", help="which heads learn")
    args = ap.parse_args()

    torch.manual_seed(0)
    rng = random.Random(0)
    scenes = [sample_scene(rng, sign_rate=0.6) for _ in range(args.scenes)]
    pixels = normalize(crop_pixels([render(s) for s in scenes], args.image_size))
    kinds = torch.tensor([[float(s.count(k) > 0) for k in KINDS] for s in scenes])
    words = torch.tensor([WORDS.index(s.signs[0].word) if s.signs else len(WORDS) for s in scenes])
    prints = [s.signs[0].print if s.signs else "" for s in scenes]
    tower = (SmallCNN(args.hidden) if args.tower == "cnn"
             else PooledViT(args.image_size, args.patch_size, args.hidden, args.layers))
    head = nn.Linear(args.hidden, len(KINDS) + len(WORDS) + 1)
    params = [*tower.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(args.warmup, 1)))
    train = int(0.875 * len(scenes))
    start = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(train, (128,))
        out = head(tower(pixels[idx]))
        kind_loss = nn.functional.binary_cross_entropy_with_logits(out[:, :len(KINDS)], kinds[idx])
        word_loss = nn.functional.cross_entropy(out[:, len(KINDS):], words[idx])
        loss = {"both": kind_loss + word_loss, "kinds": kind_loss, "words": word_loss}[args.task]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        out = head(tower(pixels[train:]))
    kind_auc = sum(auc(out[:, k], kinds[train:, k]) for k in range(len(KINDS))) / len(KINDS)
    guess = out[:, len(KINDS):].argmax(1)
    print(f"{args.tower} {args.image_size}px patch {args.patch_size} hidden {args.hidden} x {args.layers}, "
          f"{args.steps} steps ({time.perf_counter() - start:.0f} s), heads: {args.task}, last loss {loss.item():.3f}")
    print(f"  kinds present: mean AUC {kind_auc:.3f} (0.5 = no signal)")
    for p in ("large", "small"):
        sel = torch.tensor([q == p for q in prints[train:]])
        right = (guess[sel] == words[train:][sel]).float().mean().item()
        print(f"  sign word, {p} print: {100 * right:.1f}% of {int(sel.sum())} (chance {100 / len(WORDS):.1f}%)")


if __name__ == "__main__":
    main()
