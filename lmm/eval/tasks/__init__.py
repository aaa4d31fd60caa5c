"""The LLaVA-1.5 benchmarks, one file per benchmark family (as lmm.eval.scoring is one file per scoring rule):

    base       Question, Scored, EmbeddedImage, Benchmark, QuestionFileBenchmark
    vqa        VQAv2, VizWiz, TextVQA (VQA accuracy against 10 human answers)
    gqa        GQA
    scienceqa  ScienceQA
    pope       POPE
    mme        MME
    mmbench    MMBench, MMBench-CN
    seed       SEED-Bench
    judged     MM-Vet, LLaVA-Bench-in-the-Wild (judge-graded)
    refcoco    RefCOCO (a box for a referring expression, accuracy at IoU >= 0.5)

conf/eval/benchmark/<name>.yaml instantiates one of them by its `_target_` (e.g. lmm.eval.tasks.gqa.GQA).
"""

from lmm.eval.tasks.base import Benchmark, EmbeddedImage, Question, QuestionFileBenchmark, Scored
from lmm.eval.tasks.gqa import GQA
from lmm.eval.tasks.judged import LLaVABench, MMVet
from lmm.eval.tasks.mmbench import MMBench
from lmm.eval.tasks.mme import MME
from lmm.eval.tasks.pope import POPE
from lmm.eval.tasks.refcoco import RefCOCO
from lmm.eval.tasks.scienceqa import ScienceQA
from lmm.eval.tasks.seed import SEED
from lmm.eval.tasks.vqa import TextVQA, VizWiz, VQAv2

__all__ = ["GQA", "MME", "POPE", "SEED", "Benchmark", "EmbeddedImage", "LLaVABench", "MMBench", "MMVet", "Question",
           "QuestionFileBenchmark", "RefCOCO", "ScienceQA", "Scored", "TextVQA", "VQAv2", "VizWiz"]
