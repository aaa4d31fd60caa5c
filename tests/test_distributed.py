"""trainer=ddp and trainer=fsdp with 2 CPU processes (gloo): both stages, sharded checkpoints and resume, text-only
batches, and the token-normalised gradient across ranks.

Every run goes through `python run.py` (or `python -m tests.test_distributed` for the gradient check), as a user's
job would: Lightning launches the second process itself. Each run is a few steps of the tiny world.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SMALL_WORLD

ROOT = Path(__file__).resolve().parents[1]
# the tiny world of tests/conftest.py (built once per session), so these runs build nothing
WORLD = [SMALL_WORLD]
TWO_CPUS = ["trainer.accelerator=cpu", "trainer.devices=2", "logger=csv", "data.num_workers=0"]
# 4 samples per device in micro-batches of 2: the accumulation path runs too
SMALL = [f"stage.{s}.{k}={v}" for s in ("align", "instruct")
         for k, v in (("global_batch_size", 8), ("micro_batch_size", 2))]


def env_for(tmp: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, LMM_OUTPUT_DIR=str(tmp / "out"), LMM_CACHE_DIR=str(cache), WANDB_MODE="disabled")
    for var in ("WANDB_API_KEY", "MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK"):
        env.pop(var, None)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run in a session of its own; on timeout (a hang) kill that session, Lightning's second process included."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:])} hung for {timeout} s\n{out[-2000:]}\n{err[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd[1:])} failed\n{out[-2000:]}\n{err[-6000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_py(args: list[str], env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess:
    return run([sys.executable, "run.py", *WORLD, *TWO_CPUS, *args], env, timeout)


def check_stages(run_dir: Path, steps: dict[str, int]) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    for stage, n in steps.items():
        summary = results["stages"][stage]
        assert summary["world_size"] == 2 and summary["global_step"] == n, summary
        assert json.loads((Path(summary["dir"]) / "stage.json").read_text())["global_step"] == n
        losses = [loss for _, loss in summary["losses"]]
        assert losses and all(math.isfinite(x) for x in losses), summary["losses"]
    return results


def dcp_to_dict(folder: Path, tmp: Path) -> dict:
    """A sharded (DCP) checkpoint folder as one in-memory dict, read without a process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(folder, tmp / "consolidated.pt")
    return torch.load(tmp / "consolidated.pt", weights_only=False)


# ------------------------------------------------------------------------------------------------ both stages
def test_ddp_two_processes_train_both_stages(tmp_path, tiny_world):
    env = env_for(tmp_path, tiny_world)
    run_py(["trainer=ddp", "run_id=ddp", *SMALL, "stage.align.max_steps=3", "stage.instruct.max_steps=3",
            "num_sample_generations=2"], env)
    run_dir = tmp_path / "out" / "runs" / "ddp"
    check_stages(run_dir, {"align": 3, "instruct": 3})
    assert (run_dir / "instruct" / "checkpoints" / "last.ckpt").is_file()
    assert len((run_dir / "samples" / "instruct.jsonl").read_text().splitlines()) == 2

    from lmm.model.io import load_lmm_model

    model, tokenizer = load_lmm_model(run_dir / "instruct" / "model")
    assert model.num_visual_tokens > 0 and tokenizer is not None

    # the evaluation after instruct ran sharded over both ranks: the same answer files (every question once, in
    # question-file order; MME's ids repeat, two questions per image) and scores as one process answering everything
    run([sys.executable, "run.py", *WORLD, "task=eval", f"checkpoint={run_dir}", "run_id=one", "logger=csv",
         "trainer.accelerator=cpu"], env, timeout=150)
    one_dir = tmp_path / "out" / "runs" / "one"
    two_ranks = json.loads((run_dir / "eval" / "results.json").read_text())["benchmarks"]
    one = json.loads((one_dir / "eval" / "results.json").read_text())["benchmarks"]
    assert set(one) == set(two_ranks) and one

    def answers(folder: Path, name: str) -> list[tuple[str, str]]:
        lines = (folder / "eval" / name / "answers.jsonl").read_text().splitlines()
        return [(a["question_id"], a["text"]) for a in map(json.loads, lines)]

    for name in one:
        assert answers(run_dir, name) == answers(one_dir, name) and answers(one_dir, name)
        assert len(answers(one_dir, name)) == one[name]["num_questions"]
    assert {k: v["scores"] for k, v in one.items()} == {k: v["scores"] for k, v in two_ranks.items()}


def test_fsdp_two_processes_train_shard_and_resume(tmp_path, tiny_world):
    """FSDP2: both stages, a sharded checkpoint holding the trainable weights only, a full model folder equal to
    the trained weights; then the stage, stopped after its step-2 checkpoint, resumes there (optimizer, scheduler,
    step)."""
    env = env_for(tmp_path, tiny_world)
    args = ["trainer=fsdp", "run_id=fsdp", *SMALL, "stage.align.max_steps=2",
            "stage.instruct.checkpoint_every_n_steps=2", "num_sample_generations=2"]
    run_py([*args, "stage.instruct.max_steps=2"], env)
    run_dir = tmp_path / "out" / "runs" / "fsdp"
    results = check_stages(run_dir, {"align": 2, "instruct": 2})

    # sharded checkpoints: one shard per rank, only trainable weights (align: the connector)
    align_ckpt = Path(results["stages"]["align"]["dir"]) / "checkpoints" / "last.ckpt"
    ckpt = run_dir / "instruct" / "checkpoints" / "last.ckpt"
    for folder in (align_ckpt, ckpt):
        assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2 and (folder / "meta.pt").is_file()
    align_state = dcp_to_dict(align_ckpt, tmp_path)["state_dict"]
    assert align_state and all(k.startswith("model.connector.") for k in align_state)
    state = dcp_to_dict(ckpt, tmp_path)
    assert any(k.startswith("model.llm.model.layers.") for k in state["state_dict"])  # through the AC wrappers
    assert not any(k.startswith("model.encoder.") for k in state["state_dict"])

    # the final model folder loads, holds the trained weights, kept in fp32 (FSDP2 computes in bf16)
    from lmm.model.io import load_lmm_model

    model, _ = load_lmm_model(run_dir / "instruct" / "model")
    saved = {f"model.{k}": v for k, v in model.state_dict().items()}
    for key, value in state["state_dict"].items():
        assert saved[key].dtype == torch.float32
        torch.testing.assert_close(saved[key], value.float(), msg=key)

    # stopped after the step-2 checkpoint (as if killed before the stage finished): the same run goes on to 4
    (run_dir / "instruct" / "stage.json").unlink()
    (run_dir / "results.json").unlink()
    proc = run_py([*args, "stage.instruct.max_steps=4"], env)
    assert "instruct: global batch" in proc.stdout and "resuming from" in proc.stdout
    results = check_stages(run_dir, {"align": 2, "instruct": 4})
    assert [step for step, _ in results["stages"]["instruct"]["losses"]] == [3, 4]  # started at step 2
    state = dcp_to_dict(ckpt, tmp_path)
    steps = {float(s["step"]) for s in state["optimizer_0"]["state"].values()}
    assert steps == {4.0}  # AdamW's moments and step count came back from the checkpoint
    meta = torch.load(ckpt / "meta.pt", weights_only=False)
    assert meta["global_step"] == 4 and meta["lr_schedulers"][0]["last_epoch"] == 4


# ------------------------------------------------------------------------------------------- text-only batches
def test_ddp_text_only_batches_keep_the_connector_in_the_graph(tmp_path, tiny_world):
    """Every sample text-only: DDP (find_unused_parameters=false) would fail or hang if the connector sat out."""
    records = [{"id": f"text-{i}", "conversations": [
        {"from": "human", "value": f"What is {i} plus one?"}, {"from": "gpt", "value": f"It is {i + 1}."}]}
        for i in range(24)]
    data = tmp_path / "text_only.json"
    data.write_text(json.dumps(records))
    env = env_for(tmp_path, tiny_world)
    source = f"data.instruct.sources=[{{name:text_only,records:'{data}',image_root:'{tmp_path}'}}]"
    proc = run_py(["trainer=ddp", "run_id=text", "stages=[instruct]", "stage.instruct.init_connector_from=random",
                   *SMALL, "stage.instruct.max_steps=3",
                   "num_sample_generations=0", source], env, timeout=120)
    assert "unused" not in proc.stderr.lower()
    results = check_stages(tmp_path / "out" / "runs" / "text", {"instruct": 3})
    assert results["stages"]["instruct"]["accumulate_grad_batches"] == 2


# --------------------------------------------------------------------------------------- gradient normalisation
def grad_samples() -> list[list[dict]]:
    """Four micro-batches of very different supervised-token counts (one text-only sample among them)."""
    from tests.test_loss import sample

    text_only = sample(12, 5, 7)
    text_only["input_ids"][1] = 5
    text_only["has_image"] = False
    return [[sample(10, 3, 0)], [sample(40, 30, 1), text_only], [sample(16, 2, 2)], [sample(30, 20, 3)]]


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "fsdp-bf16", "fsdp-packed", "ddp-llava"])
def test_gradient_is_the_token_mean_over_all_ranks(tmp_path, mode):
    """2 ranks x 2 accumulated micro-batches give the gradient of the token mean over the whole step (packed rows
    under FSDP2 too), or with loss_normalization=llava the mean of the 4 micro-batch means; the reference is
    transformers' causal-LM loss on one process."""
    out = tmp_path / "grads.pt"
    run([sys.executable, "-m", "tests.test_distributed", mode, str(out)], env_for(tmp_path, tmp_path), timeout=120)
    captured = torch.load(out)

    from tests.conftest import tiny_llava
    from tests.test_loss import hf_loss

    reference = tiny_llava()
    reference.encoder.requires_grad_(False)
    if mode == "ddp-llava":
        means = [hf_loss(reference, micro, mean=True)[0] for micro in grad_samples()]
        (sum(means) / len(means)).backward()
    else:
        hf_loss(reference, [s for micro in grad_samples() for s in micro], mean=True)[0].backward()
    expected = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert set(captured["grads"]) == set(expected)
    if mode == "fsdp-bf16":  # FSDP2 computes in bf16 on fp32 parameters: close, not equal
        assert captured["logits_dtype"] == "torch.bfloat16" and captured["param_dtype"] == "torch.float32"
        flat = torch.cat([captured["grads"][k].flatten() for k in expected])
        ref = torch.cat([expected[k].flatten() for k in expected])
        assert torch.nn.functional.cosine_similarity(flat, ref, dim=0) > 0.999
        assert abs(flat.norm() / ref.norm() - 1) < 0.01
        return
    for name, grad in expected.items():
        torch.testing.assert_close(captured["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _grad_worker(mode: str, out: str) -> None:
    """One optimizer step of LlavaLitModule on 2 CPU processes; rank 0 saves the (full) gradient it stepped with."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader

    from lmm.data.dataset import collate
    from lmm.data.packing import pack
    from lmm.train.module import LlavaLitModule
    from lmm.train.sharding import FSDP2Plan, FSDP2Strategy, clean_name
    from tests.conftest import tiny_llava

    class Capture(LlavaLitModule):
        def training_step(self, batch, batch_idx):
            handle = self.model.llm.register_forward_hook(
                lambda m, a, output: setattr(self, "logits_dtype", str(output.logits.dtype)))
            try:
                return super().training_step(batch, batch_idx)
            finally:
                handle.remove()

        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)
            grads = {}
            for name, p in self.model.named_parameters():
                if p.grad is not None:
                    grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                    grads[clean_name(name)] = grad.detach().clone()
            param = next(self.model.parameters())
            if self.trainer.is_global_zero:
                torch.save({"grads": grads, "logits_dtype": self.logits_dtype, "param_dtype": str(param.dtype)}, out)

    class PerRank(L.LightningDataModule):
        def train_dataloader(self):
            rank = self.trainer.global_rank
            micro = grad_samples()[2 * rank: 2 * rank + 2]
            if mode == "fsdp-packed":  # each micro-batch in one row, positions restarting per sample
                return DataLoader([pack(m, 0, capacity=64, visual_tokens=4) for m in micro], batch_size=None)
            return DataLoader([collate(m, 0) for m in micro], batch_size=None)

    fsdp = None
    if mode.startswith("ddp"):
        strategy = DDPStrategy(find_unused_parameters=False)
    else:
        strategy = FSDP2Strategy()
        fsdp = FSDP2Plan(param_dtype="bfloat16" if mode == "fsdp-bf16" else "float32", activation_checkpointing=True)
    module = Capture(tiny_llava(), train=["connector", "llm"], lr=1e-3, warmup_ratio=0.0, fsdp=fsdp,
                     loss_normalization="llava" if mode == "ddp-llava" else "global_tokens")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=1, accumulate_grad_batches=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module, datamodule=PerRank())
    from lmm.train.stage import close_process_group

    close_process_group()


if __name__ == "__main__":
    _grad_worker(sys.argv[1], sys.argv[2])
