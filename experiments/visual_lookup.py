"""Which visual tokens can the LLaVA side learn to look a named thing up in? (eleventh measurement)

POPE's "Is there a kite in the image?" asks the LLM to find the kite among the visual tokens before the question. This
script trains only that: an LM (and a connector, where there is one) on single-turn existence questions in LLaVA's
vicuna_v1 prompt with the short-answer instruction, the image's tokens spliced in where `<image>` stands, and every
`every` steps reports how well the logit of "yes" minus "no" separates present from absent (AUC on 600 held-out
questions; 0.5 = the image unused) and how often its sign is right. The visual tokens, from easiest to hardest:

- `text`: the scene's objects as words ("a red kite and a blue ball"), embedded by the LM: a lookup in text;
- `words`: 64 tokens, one per 8 x 8 patch of the padded square, each the LM's embedding of the kind under the patch
  centre or of "background": the tokens a perfect tower and a perfect connector would hand on;
- `codes`: the same 64 patches, each a fixed random vector for its kind (or background), of the LM's embedding
  scale: tokens that tell kinds apart perfectly but are not the LM's words;
- `onehot`: the same 64 patches as one-hot labels (kind, colour, background) through a fresh two-layer MLP
  connector: perfect features, a connector that has to learn where the LM's words are;
- `clip`: a run's frozen vision tower and its trained connector (`--run`): the pipeline's own tokens; or any CLIP
  folder's tower (`--tower DIR`, penultimate layer, images padded to a square as the tiny preset does) with a fresh
  connector: a tower judged by what stage 1 makes of its patches.

    python experiments/visual_lookup.py LM_DIR --tokens words [--ask colour] [--steps 600] [--lr 3e-4]
        [--run outputs/runs/<id> [--fresh-connector] | --tower DIR] [--lm-captions 400] [--align-steps 600]
        [--noise 1.0] [--wrong 0.36] [--textured] [--seed 0]

`LM_DIR` is a Llama folder with its tokenizer (the world's llama-tiny, or one `lm_reading.py --save`d).
`--lm-captions N` first teaches the LM (N steps, all of it) to caption scenes from a text stand-in for the image, the
words of the kinds and colours under its patches (`checker_words`); `--align-steps` then trains the connector alone on
captions of the visual tokens through the frozen LM (LLaVA's stage 1, 'plain' template), a fresh MLP for `onehot` and
for `clip` with `--fresh-connector` or `--tower`; `--noise s` adds Gaussian noise of s times each token's own scale
to the visual tokens; `--wrong r` gives `onehot` patches a wrong kind with probability r (features as legible as a
tower's whose patches name their kind 1 - r of the time); `--textured` shows the tower scenes drawn with
lmm.world.scenes' kind textures. One thread; the same arguments give the same figures on
one machine.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmm.constants import IMAGE_TOKEN_INDEX
from lmm.data.formats import SHORT_ANSWER
from lmm.data.templates import VicunaV1Template
from lmm.world import lm_text
from lmm.world.scenes import COLORS, KINDS, Obj, Scene, patch_objects, render, sample_scene

GRID = 8  # patches per side: the world's tower sees 64 px in patches of 8


def under_patches(scene: Scene, grid: int = GRID) -> list[Obj | None]:
    """The object under each patch centre of the image padded to a square (row-major), None for background."""
    return patch_objects(scene, grid, "pad")


def caption(scene: Scene) -> str:
    """The scene's objects as LLaVA's stage-1 caption names them: "a red kite and a blue ball"."""
    return " and ".join(f"a {o.colour} {o.kind}" for o in scene.objects)


def word_id(tok, word: str) -> int:
    """The id of a world word's (last) token."""
    return tok(word, add_special_tokens=False).input_ids[-1]


def onehot(scene: Scene, wrong: float = 0.0) -> torch.Tensor:
    """(64, kinds + colours + 1): each patch's kind and colour, or the background flag. With `wrong` > 0 each object
    patch's kind is another kind at random with that probability (seeded by the scene): the features of a tower whose
    patches name their kind 1 - `wrong` of the time, cleanly otherwise."""
    out = torch.zeros(GRID * GRID, len(KINDS) + len(COLORS) + 1)
    rng = random.Random(repr(scene))
    for p, o in enumerate(under_patches(scene)):
        if o is None:
            out[p, -1] = 1
            continue
        k = KINDS.index(o.kind)
        if wrong and rng.random() < wrong:
            k = rng.choice([j for j in range(len(KINDS)) if j != k])
        out[p, k] = out[p, len(KINDS) + list(COLORS).index(o.colour)] = 1
    return out


def word_ids(scene: Scene, tok) -> torch.Tensor:
    """(64,) the id of the word for the kind under each patch, or of "background"."""
    word = {w: word_id(tok, w) for w in (*KINDS, "background")}
    return torch.tensor([word[o.kind if o else "background"] for o in under_patches(scene)])


def text_ids(scene: Scene, tok) -> torch.Tensor:
    return torch.tensor(tok(caption(scene), add_special_tokens=False).input_ids, dtype=torch.long)


@torch.no_grad()
def tower_tokens(run: str | None, folder: str | None, scenes: list[Scene],
                 textured: bool = False) -> tuple[list[torch.Tensor], nn.Module | None]:
    """Each scene's patch features as the connector gets them, and the run's trained connector: a run's tower and image
    transform, or a CLIP folder's tower (penultimate layer) on the image padded to a square, with no connector;
    `textured`: the kinds drawn with their textures."""
    if run:
        from lmm.model.io import load_checkpoint

        model = load_checkpoint(f"{run}/instruct/model")
        encode, transform, connector = model.model.encoder, model.image_processor, model.model.connector
    else:
        from lmm.model.encoder import VisionEncoder
        from lmm.model.preprocess import ImageTransform

        encode, transform = VisionEncoder.from_pretrained(folder, select_layer=-2), ImageTransform.from_pretrained(
            folder, aspect="pad")
        connector = None
    tokens = [f for b in range(0, len(scenes), 200)
              for f in encode(torch.stack([transform(render(s, textured)) for s in scenes[b:b + 200]])).float()]
    return tokens, connector


def lookup_scenes(n: int, seed: int = 0) -> list[Scene]:
    """The run's scenes (the last 600 held out); seed 0 gives those of the runs recorded in experiments/world.md."""
    name = "visual-lookup" if seed == 0 else f"visual-lookup-{seed}"
    return [sample_scene(random.Random(f"{name}-{j}")) for j in range(n)]


def question(scene: Scene, ask: str, rng: random.Random) -> tuple[str, int]:
    """A thing present (label 1) or absent (0) at even odds, as far as the scene allows."""
    if ask == "kind":
        present, absent = scene.kinds()
    else:
        have = {o.colour for o in scene.objects}
        present, absent = sorted(have), [c for c in COLORS if c not in have]
    label = int((rng.random() < 0.5 and bool(present)) or not absent)
    return rng.choice(present if label else absent), label


class Lookup(nn.Module):
    """The LLaVA side: prompt embeddings with the visual tokens spliced in at `<image>`; logits at the last place."""

    def __init__(self, llm: nn.Module, tok, tokens: list[torch.Tensor], connector: nn.Module | None,
                 ask: str, noise: float = 0.0) -> None:
        super().__init__()
        self.llm, self.connector, self.tokens, self.noise = llm, connector, tokens, noise
        template, thing = VicunaV1Template(), "{}" if ask == "kind" else "{} object"
        values = KINDS if ask == "kind" else tuple(COLORS)
        self.prompts = {v: torch.tensor(template.prompt_ids(f"Is there a {thing.format(v)} in the image?\n"
                                                            f"{SHORT_ANSWER}", tok)) for v in values}

    def visual(self, i: int) -> torch.Tensor:
        t = self.tokens[i]
        v = self.llm.get_input_embeddings()(t) if self.connector is None else self.connector(t)
        if self.noise:
            v = v + self.noise * v.detach().norm(dim=-1, keepdim=True) / v.shape[-1] ** 0.5 * torch.randn_like(v)
        return v

    def forward(self, batch: list[tuple[int, str]]) -> torch.Tensor:
        embed = self.llm.get_input_embeddings()
        rows = []
        for i, asked in batch:
            ids = self.prompts[asked]
            p = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
            text = embed(ids.clamp(min=0))
            rows.append(torch.cat([text[:p], self.visual(i), text[p + 1:]]))
        n = torch.tensor([len(r) for r in rows])
        return self.logits(rows)[torch.arange(len(rows)), n - 1]

    def logits(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """The LM's logits over rows of embeddings of different lengths (right-padded, masked)."""
        n = torch.tensor([len(r) for r in rows])
        x = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        return self.llm(inputs_embeds=x, attention_mask=(torch.arange(x.shape[1])[None] < n[:, None]).long()).logits


def checker_words(scene: Scene, tok) -> torch.Tensor:
    """(64,) per patch the word of its object's kind or colour, alternating like a chessboard, or "background"
    (lmm.world.lm_text.patch_words, the grid documents' stand-in): a text stand-in for the image from which every
    word of its caption can be copied."""
    return torch.tensor([word_id(tok, w) for w in lm_text.patch_words(scene, GRID)])


def caption_loss(model: Lookup, scenes: list[Scene], tok, idx: list[int]) -> torch.Tensor:
    """LLaVA's 'plain' template: <s>, the visual tokens, the caption ("a red kite and a blue ball"); loss on the
    caption only."""
    embed, rows, targets = model.llm.get_input_embeddings(), [], []
    for i in idx:
        text = torch.tensor(tok(caption(scenes[i]) + "\n", add_special_tokens=False).input_ids)
        v = model.visual(i)
        rows.append(torch.cat([embed(torch.tensor([tok.bos_token_id])), v, embed(text)]))
        targets.append(torch.cat([torch.full((1 + len(v),), -100), text]))
    logits = model.logits(rows)
    y = nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=-100)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), y[:, 1:].flatten())


def fit_captions(model: Lookup, scenes: list[Scene], tok, params: list, steps: int, lr: float, what: str) -> None:
    """`steps` of caption loss on the training scenes for `params` alone (the rest stays as it is)."""
    rng, opt = random.Random(5), torch.optim.AdamW(params, lr=lr)
    for step in range(1, steps + 1):
        loss = caption_loss(model, scenes, tok, [rng.randrange(len(model.tokens) - 600) for _ in range(32)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"{what} step {step}: caption loss {loss.item():.3f}", flush=True)


def align(model: Lookup, scenes: list[Scene], tok, steps: int, lr: float) -> None:
    """LLaVA's stage 1 on the same tokens: the connector alone learns to caption them through the frozen LM."""
    for p in model.llm.parameters():
        p.requires_grad_(False)
    fit_captions(model, scenes, tok, list(model.connector.parameters()), steps, lr, "align")
    for p in model.llm.parameters():
        p.requires_grad_(True)


def patch_words(model: Lookup, scenes: list[Scene], idx: list[int], tok) -> dict[str, float]:
    """Which of the world's words (kinds, colours, "background") each visual token is nearest to, by cosine to the
    LM's input embeddings: the share of object patches nearest their object's kind, or its colour, and of background
    patches nearest "background"; and the object patches' mean cosine to their kind's word. LLaVA's LM finds a thing
    among tokens that look like its word."""
    vocab = [*KINDS, *COLORS, "background"]
    ids = torch.tensor([word_id(tok, w) for w in vocab])
    words = nn.functional.normalize(model.llm.get_input_embeddings().weight[ids], dim=-1)
    kind = colour = objects = background = empty = cosine = 0.0
    with torch.no_grad():
        for i in idx:
            sims = nn.functional.normalize(model.visual(i), dim=-1) @ words.T
            for o, n, sim in zip(under_patches(scenes[i]), sims.argmax(-1).tolist(), sims, strict=True):
                if o is None:
                    empty += 1
                    background += vocab[n] == "background"
                else:
                    objects += 1
                    kind += vocab[n] == o.kind
                    colour += vocab[n] == o.colour
                    cosine += float(sim[vocab.index(o.kind)])
    return {"kind": kind / max(objects, 1), "colour": colour / max(objects, 1),
            "background": background / max(empty, 1), "cosine": cosine / max(objects, 1)}


def figures(model: Lookup, held: list[tuple[int, str, int]], yes: int, no: int) -> tuple[float, float]:
    """(AUC of the yes-minus-no margin, accuracy of its sign) on the held-out questions."""
    with torch.no_grad():
        logits = torch.cat([model([(i, v) for i, v, _ in held[b:b + 100]]) for b in range(0, len(held), 100)])
    margin, labels = logits[:, yes] - logits[:, no], torch.tensor([y for _, _, y in held])
    return float(binary_auroc(margin, labels)), float(((margin > 0).long() == labels).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lm", help="a Llama folder with its tokenizer")
    ap.add_argument("--tokens", choices=("text", "words", "codes", "onehot", "clip"), default="words")
    ap.add_argument("--ask", choices=("kind", "colour"), default="kind")
    ap.add_argument("--run", help="a run folder whose instruct/model gives the tower and connector (--tokens clip)")
    ap.add_argument("--tower", help="or a CLIP folder: its vision tower, with a fresh connector (--tokens clip)")
    ap.add_argument("--scenes", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--connector-lr", type=float, help="the connector's own learning rate (default: --lr)")
    ap.add_argument("--lm-captions", type=int, default=0,
                    help="first, steps in which the LM learns to caption scenes from their words per patch")
    ap.add_argument("--fresh-connector", action="store_true", help="--tokens clip: a new MLP, not the run's")
    ap.add_argument("--align-steps", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0, help="scenes, weights and batches (0: the recorded runs)")
    ap.add_argument("--textured", action="store_true", help="--tokens clip: kinds drawn with textures")
    ap.add_argument("--wrong", type=float, default=0.0,
                    help="--tokens onehot: the share of object patches given a wrong kind")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    tok = AutoTokenizer.from_pretrained(args.lm)
    llm = AutoModelForCausalLM.from_pretrained(args.lm)
    scenes = lookup_scenes(args.scenes + 600, args.seed)
    connector = None
    if args.tokens == "clip":
        tokens, trained = tower_tokens(args.run, args.tower, scenes, args.textured)
        connector = None if args.fresh_connector else trained
    elif args.tokens == "onehot":
        tokens = [onehot(s, args.wrong) for s in scenes]
    elif args.tokens == "codes":
        weight = llm.get_input_embeddings().weight.detach()
        scale = weight.norm(dim=-1).mean() / weight.shape[1] ** 0.5
        codes = torch.randn(len(KINDS) + 1, weight.shape[1], generator=torch.Generator().manual_seed(1)) * scale
        tokens = [codes[[KINDS.index(o.kind) if o else len(KINDS) for o in under_patches(s)]] for s in scenes]
        connector = nn.Identity()
    else:
        tokens = [(word_ids if args.tokens == "words" else text_ids)(s, tok) for s in scenes]
    if args.tokens in ("onehot", "clip") and connector is None:
        connector = nn.Sequential(nn.Linear(tokens[0].shape[-1], 128), nn.GELU(),
                                  nn.Linear(128, llm.config.hidden_size))
    if args.lm_captions:
        words = Lookup(llm, tok, [checker_words(s, tok) for s in scenes], None, args.ask)
        fit_captions(words, scenes, tok, list(llm.parameters()), args.lm_captions, 1e-3, "LM captions from words")
    model = Lookup(llm, tok, tokens, connector, args.ask, args.noise)
    if args.align_steps:
        align(model, scenes, tok, args.align_steps, args.connector_lr or 1e-3)
    near = patch_words(model, scenes, list(range(args.scenes, args.scenes + 200)), tok)
    print("visual tokens nearest their object's kind word {kind:.2f}, colour word {colour:.2f}; background patches "
          "nearest 'background' {background:.2f}; object patches' cosine to their kind's word {cosine:.2f}"
          .format(**near), flush=True)

    yes, no = (tok("yes", add_special_tokens=False).input_ids[0], tok("no", add_special_tokens=False).input_ids[0])
    held = [(i, *question(scenes[i], args.ask, random.Random(i))) for i in range(args.scenes, args.scenes + 600)]
    groups = [{"params": list(llm.parameters()), "lr": args.lr}]
    if connector is not None and any(True for _ in connector.parameters()):
        groups.append({"params": list(connector.parameters()), "lr": args.connector_lr or args.lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    rng, start = random.Random(args.seed), time.perf_counter()
    print(f"{args.tokens} tokens, asking {args.ask}: before training AUC %.3f, accuracy %.3f"
          % figures(model, held, yes, no), flush=True)
    for step in range(1, args.steps + 1):
        batch = [(i, *question(scenes[i], args.ask, rng)) for i in (rng.randrange(args.scenes) for _ in range(32))]
        logits = model([(i, v) for i, v, _ in batch])
        loss = nn.functional.cross_entropy(logits, torch.tensor([yes if y else no for _, _, y in batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            auc, acc = figures(model, held, yes, no)
            print(f"step {step}: loss {loss.item():.3f}, held-out AUC {auc:.3f}, accuracy {acc:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
