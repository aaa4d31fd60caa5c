"""Benchmark scorers of lmm: the official LLaVA-1.5 scoring rules as torchmetrics metrics (spec/eval.md 3-4).

Conventions: every metric's update() takes raw model texts (answer-file `text`; outer whitespace is ignored) and
references in the benchmark's own form; compute() returns a dict of floats. Accuracy-like keys (acc, precision,
recall, f1, yes_ratio) are fractions in [0, 1]; keys named "score" keep the benchmark's own scale (MME points,
MM-Vet and LLaVA-Bench 0-100). Keys of groups that received no data are left out.
"""

from lmm.eval.scoring.choice import MMBenchCircular, ScienceQAAccuracy, SEEDAccuracy
from lmm.eval.scoring.grounding import GroundingAccuracy, box_iou, parse_box
from lmm.eval.scoring.judge import (
    Judge,
    OpenAICompatibleJudge,
    RuleJudge,
    llava_bench_query,
    mmvet_query,
    parse_llava_bench_scores,
    parse_mmvet_score,
)
from lmm.eval.scoring.judged import (
    LLAVA_BENCH_CATEGORIES,
    MMVET_CAPABILITIES,
    LLaVABenchScore,
    MMVetScore,
    mean_over_runs,
)
from lmm.eval.scoring.mme import MME_COGNITION, MME_PERCEPTION, MME_SUBTASKS, MMEMetric
from lmm.eval.scoring.normalize import (
    extract_mmbench_letter,
    extract_sqa_letter,
    gqa_postprocess,
    normalize_vqa_answer,
    parse_mme_yes_no,
    parse_pope_yes_no,
)
from lmm.eval.scoring.pope import POPE_SPLITS, POPEMetric
from lmm.eval.scoring.pope_files import PopeSplit, evaluate_pope_files, load_pope_splits
from lmm.eval.scoring.vqa import GQAAccuracy, VQAAccuracy, vqa_score

__all__ = [
    "GroundingAccuracy", "box_iou", "parse_box",
    "GQAAccuracy", "Judge", "LLAVA_BENCH_CATEGORIES", "LLaVABenchScore", "MMBenchCircular", "MMEMetric",
    "MME_COGNITION", "MME_PERCEPTION", "MME_SUBTASKS", "MMVET_CAPABILITIES", "MMVetScore", "OpenAICompatibleJudge",
    "POPEMetric", "POPE_SPLITS", "PopeSplit", "RuleJudge", "SEEDAccuracy", "ScienceQAAccuracy", "VQAAccuracy",
    "evaluate_pope_files", "extract_mmbench_letter", "extract_sqa_letter", "gqa_postprocess", "llava_bench_query",
    "load_pope_splits", "mean_over_runs", "mmvet_query", "normalize_vqa_answer", "parse_llava_bench_scores",
    "parse_mme_yes_no", "parse_mmvet_score", "parse_pope_yes_no", "vqa_score",
]
