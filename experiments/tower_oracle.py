"""What would LLaVA do with a tower that knows the kinds? The world's CLIP, its vision tower told them by labels.

A diagnostic, not a recipe: it says whether the tower is what stands between a model trained on the world and the
answers that need kinds (POPE, "what kind"), by handing LLaVA a tower whose patches carry them. The CLIP at `clip`
is copied, its vision tower fine-tuned on fresh scenes with a per-patch head on the layer the connector is handed
(lmm.world.zoo_clip.CaptionWords over the ten kinds: a linear score per kind, max over patches, binary
cross-entropy against which kinds are present), and saved whole (text tower, projections, processor and tokenizer
as they were), so that LLaVA loads it as it loads the world's:

    python experiments/tower_oracle.py .cache/lmm/worlds/tiny-<hash>/clip-tiny-res224 /tmp/clip-oracle-res224
    python experiments/tower_features.py /tmp/clip-oracle-res224        # what the connector now gets
    python run.py run_id=oracle checkpoints.clip.res224=/tmp/clip-oracle-res224
Images are padded as LLaVA-1.5 pads them (the tiny preset's image_aspect).
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

import torch
from transformers import CLIPModel

from lmm.log import log
from lmm.world.pretrain import Batches, final_loss, quiet_hf, seeded, train_steps
from lmm.world.scenes import KINDS, render, sample_scene
from lmm.world.zoo_clip import CaptionWords, crop_pixels, normalize


def tell_kinds(clip: str | Path, out: str | Path, *, scenes: int = 20000, steps: int = 1500, batch_size: int = 128,
               lr: float = 1e-3, layer: int = -2, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune the vision tower of the CLIP at `clip` on which kinds each fresh scene holds; save it to `out`."""
    with quiet_hf():
        model = CLIPModel.from_pretrained(clip)
    size = model.config.vision_config.image_size
    rng = random.Random(f"tower-oracle-{seed}")
    world = [sample_scene(rng) for _ in range(scenes)]
    pixels = crop_pixels([render(s) for s in world], size, "pad")
    kinds = torch.tensor([[float(s.count(k) > 0) for k in KINDS] for s in world])
    with seeded(seed) as gen:
        trained = torch.nn.ModuleDict({"vision": model.vision_model,
                                       "kinds": CaptionWords(model.config.vision_config.hidden_size, len(KINDS),
                                                             layer)})
        batches = Batches(scenes, min(batch_size, scenes), gen)

        def loss_of_step(step: int) -> torch.Tensor:
            idx = batches.next()
            hidden = trained["vision"](pixel_values=normalize(pixels[idx]), output_hidden_states=True).hidden_states
            return torch.nn.functional.binary_cross_entropy_with_logits(trained["kinds"](hidden), kinds[idx])

        losses = train_steps(trained, loss_of_step, steps=steps, lr=lr, warmup=max(1, steps // 10),
                             weight_decay=0.05, desc="tower oracle", progress=progress, no_decay=("embedding",))
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(clip, out)  # processor, tokenizer: as they were
    with quiet_hf():
        model.save_pretrained(out)
    result = {"steps": steps, "first_loss": losses[0] if losses else None, "final_loss": final_loss(losses)}
    log.info(f"tower oracle: {steps} steps on {scenes} scenes, kinds loss {result['first_loss'] or float('nan'):.3f}"
             f" -> {result['final_loss'] or float('nan'):.3f}; saved {out}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", help="a full CLIP folder (the world's clip-tiny-res224)")
    ap.add_argument("out", help="where the told CLIP is written (replaced if there)")
    ap.add_argument("--scenes", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layer", type=int, default=-2, help="the hidden state the head reads (LLaVA: -2)")
    args = ap.parse_args()
    tell_kinds(args.clip, args.out, scenes=args.scenes, steps=args.steps, lr=args.lr, layer=args.layer)


if __name__ == "__main__":
    main()
