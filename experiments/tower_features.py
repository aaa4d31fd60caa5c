"""What does LLaVA's connector get from a tower? A probe of the frozen features the connector is handed.

tower_probe asks whether a CLIP's pooled embedding matches the right caption; LLaVA never uses that embedding. It
feeds the connector the patch features of the penultimate layer (lmm.model.encoder.VisionEncoder, CLS dropped).
This script loads a tower through that same class, extracts those features for fresh scenes, and trains two small
probes on them (the tower stays frozen): which kinds are present (a per-patch MLP max-pooled over patches, ten yes/no
heads; mean AUC) and the sign's word (a linear layer on all patch features; accuracy by print size). A tower with
the same architecture and random weights (`random`) is the floor: pretraining should carry more than it.

    python experiments/tower_features.py .cache/lmm/worlds/tiny-<hash>/clip-tiny-res224
    python experiments/tower_features.py <clip folder> --random          # the same architecture, untrained
    python experiments/tower_features.py <clip folder> --layer -3        # another layer (LLaVA's select_layer)
"""

from __future__ import annotations

import argparse
import random

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from transformers import AutoConfig, CLIPVisionModel

from lmm.model.encoder import VisionEncoder
from lmm.world.scenes import KINDS, WORDS, Scene, render, sample_scene
from lmm.world.zoo_clip import crop_pixels, normalize


def tower(folder: str, untrained: bool = False, seed: int = 0, layer: int = -2) -> VisionEncoder:
    """The tower as LLaVA loads it (`layer`: the penultimate by default, patches only); `untrained`: its
    architecture, fresh weights."""
    if not untrained:
        return VisionEncoder.from_pretrained(folder, select_layer=layer)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(folder)
    return VisionEncoder(CLIPVisionModel(getattr(config, "vision_config", config)), select_layer=layer)


@torch.no_grad()
def features(encoder: VisionEncoder, scenes: list[Scene], batch: int = 500, aspect: str = "pad") -> torch.Tensor:
    """[N, patches, hidden]: what the connector is handed for each scene at the tower's size: LLaVA-1.5 pads each image
    to a square first (`aspect` "pad", the tiny preset's image_aspect); "crop" is CLIP's own centre crop, which cuts
    away the sides of the world's wide and tall scenes, and the objects there."""
    out = []
    for i in range(0, len(scenes), batch):
        pixels = normalize(crop_pixels([render(s) for s in scenes[i:i + batch]], encoder.image_size, aspect))
        out.append(encoder(pixels).float())
    return torch.cat(out)


def probe(feats: torch.Tensor, scenes: list[Scene], train: int, steps: int = 1500,
          seed: int = 0) -> dict[str, float]:
    """Fit the two probes on the first `train` scenes; held-out kind AUC and word accuracy by print size."""
    kinds = torch.tensor([[float(s.count(k) > 0) for k in KINDS] for s in scenes])
    words = torch.tensor([WORDS.index(s.signs[0].word) if s.signs else len(WORDS) for s in scenes])
    torch.manual_seed(seed)
    patches, dim = feats.shape[1:]
    kind_head = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, len(KINDS)))
    word_head = nn.Linear(patches * dim, len(WORDS) + 1)
    opt = torch.optim.AdamW([*kind_head.parameters(), *word_head.parameters()], lr=2e-3, weight_decay=0.01)
    for _ in range(steps):
        idx = torch.randint(train, (128,))
        loss = (nn.functional.binary_cross_entropy_with_logits(kind_head(feats[idx]).amax(1), kinds[idx])
                + nn.functional.cross_entropy(word_head(feats[idx].flatten(1)), words[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        kind_scores = kind_head(feats[train:]).amax(1)
        guess = word_head(feats[train:].flatten(1)).argmax(1)
    per_kind = [float(binary_auroc(kind_scores[:, k], kinds[train:, k].long())) for k in range(len(KINDS))]
    out = {"kinds_auc": sum(per_kind) / len(KINDS)}
    for size in ("large", "small"):
        sel = torch.tensor([bool(s.signs) and s.signs[0].print == size for s in scenes[train:]])
        out[f"word_{size}"] = float((guess[sel] == words[train:][sel]).float().mean()) if sel.any() else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a CLIP (or CLIP vision) folder in the Hugging Face format")
    ap.add_argument("--random", action="store_true", help="the same architecture with fresh weights (the floor)")
    ap.add_argument("--layer", type=int, default=-2, help="the hidden state the connector is handed (LLaVA: -2)")
    ap.add_argument("--aspect", choices=("pad", "crop"), default="pad",
                    help="pad: LLaVA-1.5's square padding (what the connector gets); crop: CLIP's centre crop")
    ap.add_argument("--scenes", type=int, default=6000)
    ap.add_argument("--heldout", type=int, default=1000)
    args = ap.parse_args()
    rng = random.Random("tower-features")
    scenes = [sample_scene(rng, sign_rate=0.6) for _ in range(args.scenes)]
    encoder = tower(args.folder, args.random, layer=args.layer)
    figures = probe(features(encoder, scenes, aspect=args.aspect), scenes, train=args.scenes - args.heldout)
    label = f"{args.folder}{' (random weights)' if args.random else ''}, layer {args.layer}, {args.aspect}"
    print(f"{label}: kinds present, mean AUC {figures['kinds_auc']:.3f} (0.5 = none); sign word "
          f"{100 * figures['word_large']:.1f}% large print, {100 * figures['word_small']:.1f}% small "
          f"(chance {100 / len(WORDS):.1f}%)")


if __name__ == "__main__":
    main()
