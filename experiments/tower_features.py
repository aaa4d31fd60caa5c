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
    python experiments/tower_features.py <clip folder> --per-patch [--textured]   # what each patch names

`--per-patch` fits a per-patch probe instead (a 256-wide MLP on each patch's features; the kind and the colour under
its centre, lmm.world.scenes.patch_objects, as the targets) and reports the share of object patches whose kind and
colour it names (the twelfth measurement's figures); `--textured` draws the scenes with the kinds' textures.
"""

from __future__ import annotations

import argparse
import random

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from transformers import AutoConfig, CLIPVisionModel

from lmm.model.encoder import VisionEncoder
from lmm.world.scenes import COLORS, KINDS, WORDS, Scene, drawing, patch_objects, render, sample_scene
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


def patch_probe(feats: torch.Tensor, scenes: list[Scene], train: int, steps: int = 1500, aspect: str = "pad",
                seed: int = 0) -> dict[str, float]:
    """Fit a per-patch MLP (256 wide) on the first `train` scenes' patches, the kind and the colour under each patch
    centre (or background) as two targets; the held-out object patches whose kind / colour it names (chance: 10% /
    12.5%)."""
    grid = int(round(feats.shape[1] ** 0.5))
    colours = list(COLORS)
    labels = torch.tensor([[(len(KINDS), len(colours)) if o is None else (KINDS.index(o.kind), colours.index(o.colour))
                            for o in patch_objects(s, grid, aspect)] for s in scenes])
    x, y = feats[:train].flatten(0, 1), labels[:train].flatten(0, 1)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(feats.shape[-1], 256), nn.GELU(), nn.Linear(256, len(KINDS) + 1 + len(colours) + 1))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(len(x), (2048,))
        out = head(x[idx])
        loss = (nn.functional.cross_entropy(out[:, :len(KINDS) + 1], y[idx, 0])
                + nn.functional.cross_entropy(out[:, len(KINDS) + 1:], y[idx, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = head(feats[train:].flatten(0, 1))
    truth = labels[train:].flatten(0, 1)
    objects = truth[:, 0] < len(KINDS)
    kind, colour = out[:, :len(KINDS) + 1].argmax(1), out[:, len(KINDS) + 1:].argmax(1)
    return {"kind": float((kind == truth[:, 0])[objects].float().mean()),
            "colour": float((colour == truth[:, 1])[objects].float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a CLIP (or CLIP vision) folder in the Hugging Face format")
    ap.add_argument("--random", action="store_true", help="the same architecture with fresh weights (the floor)")
    ap.add_argument("--layer", type=int, default=-2, help="the hidden state the connector is handed (LLaVA: -2)")
    ap.add_argument("--aspect", choices=("pad", "crop"), default="pad",
                    help="pad: LLaVA-1.5's square padding (what the connector gets); crop: CLIP's centre crop")
    ap.add_argument("--scenes", type=int, default=6000)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--per-patch", action="store_true", help="name each patch's kind and colour instead")
    ap.add_argument("--textured", action="store_true", help="the scenes drawn with the kinds' textures")
    args = ap.parse_args()
    rng = random.Random("tower-features")
    scenes = [sample_scene(rng, sign_rate=0.6) for _ in range(args.scenes)]
    encoder = tower(args.folder, args.random, layer=args.layer)
    with drawing(args.textured):
        feats = features(encoder, scenes, aspect=args.aspect)
    label = (f"{args.folder}{' (random weights)' if args.random else ''}, layer {args.layer}, {args.aspect}"
             f"{', textured' if args.textured else ''}")
    if args.per_patch:
        f = patch_probe(feats, scenes, train=args.scenes - args.heldout, aspect=args.aspect)
        print(f"{label}: object patches named right, kind {100 * f['kind']:.1f}% (chance {100 / len(KINDS):.1f}%), "
              f"colour {100 * f['colour']:.1f}% (chance {100 / len(COLORS):.1f}%)")
        return
    figures = probe(feats, scenes, train=args.scenes - args.heldout)
    print(f"{label}: kinds present, mean AUC {figures['kinds_auc']:.3f} (0.5 = none); sign word "
          f"{100 * figures['word_large']:.1f}% large print, {100 * figures['word_small']:.1f}% small "
          f"(chance {100 / len(WORDS):.1f}%)")


if __name__ == "__main__":
    main()
