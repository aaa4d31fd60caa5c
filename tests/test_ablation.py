"""The ablation ladder (conf/ablation/): every rung composes at both scales, each is the rung before it plus exactly
its one change, the align stage changes only where the paper retrains stage 1, runs are named by rung and seed, and a
rung runs end to end on the tiny preset."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmm.config import fingerprint, new_run_id, validate
from lmm.pipeline import ALIGN_KEYS
from lmm.train.loggers import wandb_identity
from tests.test_config import CONF, cfg_of
from tests.test_pipeline import SMALL, env_for, run_py

# rows 0..9 of spec llava15.md §1.1 Table 2 / §9, in order
LADDER = ["baseline", "vqav2", "format_prompt", "mlp", "okvqa_ocr", "region", "res336", "gqa", "sharegpt", "llm13b"]
ARMS = {"qformer_lite": "mlp", "loss_llava": "sharegpt",  # arm -> the rung it changes
        "hd": "res336", "hd_no_global": "hd", "anyres": "res336"}
PRESETS = ["tiny", "paper"]
# each rung's one change, as the config keys (leaf paths or their prefixes) it may and must change
CHANGES = {
    "vqav2": ["data.catalog.vqav2.enabled"],
    "format_prompt": ["data.catalog.vqav2.format_prompt"],
    "mlp": ["model.connector"],  # + the MLP's stage-1 lr at paper scale (test_stage1_lr_follows_the_connector)
    "okvqa_ocr": [f"data.catalog.{s}.enabled" for s in ("okvqa", "aokvqa", "ocrvqa", "textcaps")],
    "region": ["data.catalog.refcoco.enabled", "data.catalog.vg.enabled"],
    "res336": ["input.name"],
    "gqa": ["data.catalog.gqa.enabled"],
    "sharegpt": ["data.catalog.sharegpt.enabled"],
    "llm13b": ["model.llm.pretrained"],
    "qformer_lite": ["model.connector"],
    "loss_llava": ["stage.align.loss_normalization", "stage.instruct.loss_normalization"],
    "hd": ["input"],  # input=hd (its tower is res224's; tests/test_tiled_train.py)
    "hd_no_global": ["input.global_context"],
    "anyres": ["input"],
}
BASE = {**{rung: LADDER[i - 1] for i, rung in enumerate(LADDER) if i}, **ARMS}
EXTRA = {("mlp", "paper"): ["stage.align.lr"]}  # linear 2e-3 -> MLP 1e-3 (spec §5.1, §9); the tiny preset keeps its own


@functools.cache  # each composition takes a quarter of a second; the tests read, never modify, what they get
def rung_cfg(rung: str, preset: str, *overrides: str):
    return cfg_of(f"preset={preset}", f"+ablation={rung}", *overrides)


@functools.cache
def raw_leaves(*overrides: str) -> dict[str, object]:
    """The composed config before interpolation, flattened to dotted leaf paths: a diff of two of these lists the
    knobs that differ, not everything they resolve into."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    out: dict[str, object] = {}

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        else:
            out[path] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}


def hydra_dirs(*overrides: str) -> tuple[str, str]:
    """hydra.run.dir and hydra.sweep.subdir as Hydra resolves them for a job."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.subdir)


# ------------------------------------------------------------------------------------------------------ structure
def test_the_ladder_is_complete():
    assert sorted(p.stem for p in (CONF / "ablation").glob("*.yaml")) == sorted([*LADDER, *ARMS])


@pytest.mark.parametrize("rung", [*LADDER[1:], *ARMS])
def test_each_rung_is_its_base_plus_defaults_not_a_copy(rung):
    """The file names its base first in its defaults (Hydra composes it), cites the spec and keeps no copied keys."""
    text = (CONF / "ablation" / f"{rung}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and "llava15.md" in text
    body = yaml.safe_load(text)
    assert body["defaults"][0] == BASE[rung] and body["defaults"][-1] == "_self_"
    assert body["ablation"] == {"name": rung, "row": LADDER.index(rung) if rung in LADDER else None,
                                "base": BASE[rung], "change": body["ablation"]["change"]}
    own = set(body) - {"defaults", "ablation"}
    assert own <= {"data", "stage", "input"}, f"{rung} sets {own} itself: a group change belongs in its defaults"


# --------------------------------------------------------------------------------------------------- composition
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("rung", [*LADDER, *ARMS])
def test_every_rung_composes(rung, preset):
    cfg = rung_cfg(rung, preset)
    assert cfg.ablation.name == rung and cfg.model.encoder.pretrained and cfg.model.llm.pretrained
    validate(cfg)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("rung", [*LADDER[1:], *ARMS])
def test_each_rung_differs_from_its_base_by_exactly_its_change(rung, preset):
    before, after = raw_leaves(f"preset={preset}", f"+ablation={BASE[rung]}"), \
        raw_leaves(f"preset={preset}", f"+ablation={rung}")
    diff = {k for k in changed(before, after) if not k.startswith("ablation.")}
    allowed = CHANGES[rung] + EXTRA.get((rung, preset), [])
    stray = {k for k in diff if not any(k == a or k.startswith(a + ".") for a in allowed)}
    assert not stray, f"{BASE[rung]} -> {rung} also changes {sorted(stray)}"
    missing = [a for a in allowed if not any(k == a or k.startswith(a + ".") for k in diff)]
    assert not missing, f"{BASE[rung]} -> {rung} does not change {missing}"


@pytest.mark.parametrize("preset", PRESETS)
def test_the_rows_mean_what_the_paper_says(preset):
    """Spec §9's table, resolved: encoder resolution, connector, stage-2 sources, format prompt and LLM per row, each
    through the preset's own checkpoints (the tiny world's zoo, or the paper's hub ids)."""
    cks = cfg_of(f"preset={preset}").checkpoints
    sources = {0: {"llava_instruct"}, 1: {"vqav2"}, 4: {"okvqa", "aokvqa", "ocrvqa", "textcaps"}, 5: {"refcoco", "vg"},
               7: {"gqa"}, 8: {"sharegpt"}}
    enabled: set[str] = set()
    for row, rung in enumerate(LADDER):
        cfg = rung_cfg(rung, preset)
        enabled |= sources.get(row, set())
        assert cfg.ablation.row == row
        assert {s.name for s in cfg.data.instruct.sources if s.enabled} == enabled, rung
        assert [s.name for s in cfg.data.align.sources if s.enabled] == ["lcs558k"]
        assert cfg.data.catalog.vqav2.format_prompt == (row >= 2), rung
        assert cfg.model.connector._target_.endswith("LinearConnector" if row < 3 else "MLPConnector"), rung
        assert cfg.model.encoder.pretrained == cks.clip["res224" if row < 6 else "res336"], rung
        assert cfg.model.llm.pretrained == cks.llm["vicuna7b" if row < 9 else "vicuna13b"], rung
    if preset == "paper":
        assert rung_cfg("res336", preset).model.encoder.pretrained == "openai/clip-vit-large-patch14-336"
        assert rung_cfg("llm13b", preset).model.llm.pretrained == "lmsys/vicuna-13b-v1.5"
    assert rung_cfg("qformer_lite", preset).model.connector._target_.endswith("QFormerLite")
    llava_loss = rung_cfg("loss_llava", preset).stage
    assert llava_loss.align.loss_normalization == llava_loss.instruct.loss_normalization == "llava"


def test_stage1_lr_follows_the_connector():
    """Paper scale: 2e-3 for the linear connector (rows 0-2), 1e-3 for the MLP (spec §5.1, §9). Tiny scale: the
    tiny preset's own align lr at every rung (it is not per connector)."""
    paper = [rung_cfg(rung, "paper").stage.align.lr for rung in LADDER]
    assert paper == [2e-3] * 3 + [1e-3] * 7
    tiny_lr = cfg_of("preset=tiny").stage.align.lr
    assert [rung_cfg(rung, "tiny").stage.align.lr for rung in LADDER] == [tiny_lr] * len(LADDER)
    assert rung_cfg("mlp", "paper", "stage.align.lr=5e-4").stage.align.lr == 5e-4  # the command line still wins


@pytest.mark.parametrize("preset", PRESETS)
def test_align_stage_changes_only_at_rows_0_3_6_9(preset):
    """Rungs that share an align stage share its fingerprint, so the ladder trains four align stages, not ten."""
    prints = [fingerprint(rung_cfg(rung, preset), ALIGN_KEYS) for rung in LADDER]
    assert prints[0] == prints[1] == prints[2]
    assert prints[3] == prints[4] == prints[5]
    assert prints[6] == prints[7] == prints[8]
    assert len({prints[0], prints[3], prints[6], prints[9]}) == 4
    assert fingerprint(rung_cfg("format_prompt", preset, "seed=7"), ALIGN_KEYS) != prints[2]  # seeds do not share


# ------------------------------------------------------------------------------------------------------- naming
STAMP = r"\d{8}-\d{6}-[0-9a-f]+"  # time + random hex (lmm.config.new_run_id)


def test_run_folder_starts_with_rung_and_seed():
    run_dir, subdir = hydra_dirs("+ablation=format_prompt", "seed=7")
    assert re.fullmatch(rf"format_prompt-seed7-{STAMP}", Path(run_dir).name), run_dir
    assert re.fullmatch(rf"format_prompt-seed7-{STAMP}", subdir), subdir
    assert Path(run_dir).parent.name == "runs"
    assert Path(hydra_dirs("+ablation=format_prompt", "run_id=mine")[0]).name == "mine"  # a name still names it
    assert re.fullmatch(STAMP, Path(hydra_dirs()[0]).name)  # without +ablation: as before


def test_run_ids_of_the_same_second_never_collide():
    ids = {new_run_id(None, "mlp-seed1") for _ in range(200)}
    assert len(ids) == 200 and all(i.startswith("mlp-seed1-") for i in ids)
    assert hydra_dirs("+ablation=mlp") != hydra_dirs("+ablation=mlp")  # two jobs composed at once
    assert new_run_id("given", "mlp-seed1") == "given"


def test_wandb_run_is_named_grouped_and_tagged_by_rung():
    run_dir = Path("/runs/format_prompt-seed3-20260101-000000-abcdef")
    cfg = rung_cfg("format_prompt", "tiny", "seed=3")
    assert wandb_identity(cfg, run_dir, preset="tiny") == {
        "name": "format_prompt-seed3", "group": "format_prompt", "tags": ["format_prompt", "seed3", "tiny"]}
    kept = wandb_identity(cfg, run_dir, group="ladder-v2", tags=["mine"], preset="paper")
    assert kept["group"] == "ladder-v2" and kept["tags"] == ["mine", "format_prompt", "seed3", "paper"]
    plain = wandb_identity(cfg_of("seed=3"), run_dir)  # without +ablation: as before
    assert plain == {"name": run_dir.name, "group": None, "tags": []}


# ---------------------------------------------------------------------------------------------------- end to end
def test_a_rung_runs_end_to_end_and_the_next_reuses_its_align_stage(tmp_path, tiny_world):
    """`+ablation=format_prompt` on the small world: align -> instruct -> eval, the run folder and the W&B run named
    by rung and seed; then `+ablation=vqav2` (same align stage) reuses it and says so."""
    env = env_for(tmp_path, tiny_world)
    short = [*SMALL, "stage.align.max_steps=2", "stage.instruct.max_steps=2", "num_sample_generations=0"]
    run_py([*short, "+ablation=format_prompt", "eval=tiny_ladder"], env)
    runs = tmp_path / "out" / "runs"
    (first,) = runs.iterdir()
    assert re.fullmatch(rf"format_prompt-seed42-{STAMP}", first.name)
    results = json.loads((first / "results.json").read_text())
    assert results["stages"]["align"]["reused"] is False and results["stages"]["instruct"]["global_step"] == 2
    assert set(results["eval"]["benchmarks"]) == {"tiny_gqa", "tiny_mme", "tiny_mmvet", "tiny_refcoco"}
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert config["ablation"]["name"] == "format_prompt" and config["data"]["catalog"]["vqav2"]["format_prompt"]
    (wandb_file,) = (first / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_file.read_bytes()
    for needle in (b"format_prompt-seed42", b"seed42", b"tiny", b"align_stage", first.name.encode()):
        assert needle in records, needle

    run_py([*short, "+ablation=vqav2", "logger=csv", "~eval"], env)
    (second,) = [d for d in runs.iterdir() if d.name.startswith("vqav2-seed42-")]
    again = json.loads((second / "results.json").read_text())["stages"]["align"]
    assert again["reused"] is True and again["fingerprint"] == results["stages"]["align"]["fingerprint"]
    assert (second / "align").resolve() == (first / "align").resolve() == Path(again["dir"])


def test_every_rung_and_arm_trains_a_few_steps_in_one_multirun(tmp_path, tiny_world):
    """The ladder and its arms as one Hydra multirun on the small world, two steps per stage: every rung runs, and
    align stages are trained only where the rung changes what align depends on (rows 0, 3, 6, 9; the Q-Former arm's
    connector; the LLaVA-loss arm's align loss), the other rungs reuse the one above them."""
    env = env_for(tmp_path, tiny_world)
    rungs = [*LADDER, *ARMS]
    run_py(["-m", *SMALL, "stage.align.max_steps=2", "stage.instruct.max_steps=2", "num_sample_generations=0",
            "logger=csv", "~eval", "seed=1", f"+ablation={','.join(rungs)}"], env, timeout=900)
    runs = {d.name.split("-seed1-")[0]: d for d in (tmp_path / "out" / "runs").iterdir() if "-seed1-" in d.name}
    assert sorted(runs) == sorted(rungs)
    stages = {r: json.loads((runs[r] / "results.json").read_text())["stages"] for r in rungs}
    assert all(stages[r]["instruct"]["global_step"] == 2 for r in rungs)
    trained = {r for r in rungs if not stages[r]["align"]["reused"]}
    assert trained == {"baseline", "mlp", "res336", "llm13b", "qformer_lite", "loss_llava"}
    for rung in set(LADDER) - trained:
        assert stages[rung]["align"]["fingerprint"] == stages[BASE[rung]]["align"]["fingerprint"], rung
