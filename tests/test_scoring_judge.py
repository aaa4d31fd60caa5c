"""Judge protocol: request building and reply parsing with a fake transport (never the network), the rule
fallback, and the MM-Vet / LLaVA-Bench metrics built on a judge."""

import json
import urllib.error
from collections.abc import Mapping, Sequence

import pytest

from lmm.eval.scoring import (
    Judge,
    LLaVABenchScore,
    MMVetScore,
    OpenAICompatibleJudge,
    RuleJudge,
    llava_bench_query,
    mmvet_query,
    parse_llava_bench_scores,
    parse_mmvet_score,
)
from lmm.eval.scoring.judge import LLAVA_BENCH_RULE, LLAVA_BENCH_SYSTEM, MMVET_PROMPT, MMVET_RETRY_SUFFIX


class FakeTransport:
    """Replies with canned chat completions (or raises canned errors) and records every request."""

    def __init__(self, replies: Sequence[str | Exception]) -> None:
        self.replies, self.calls = list(replies), []

    def __call__(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> bytes:
        self.calls.append({"url": url, "headers": dict(headers), "body": json.loads(body), "timeout": timeout})
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()


def _judge(replies: Sequence[str | Exception], **kwargs) -> tuple[OpenAICompatibleJudge, FakeTransport]:
    transport = FakeTransport(replies)
    return OpenAICompatibleJudge("http://127.0.0.1:8000/v1/", "judge-model", transport=transport, retry_wait=0,
                                 **kwargs), transport


def test_both_judges_satisfy_the_protocol() -> None:
    assert isinstance(RuleJudge(), Judge)
    assert isinstance(_judge([])[0], Judge)


def test_endpoint_and_headers() -> None:
    judge, transport = _judge(["0.5"], api_key="sk-test", timeout=9.0)
    judge.grade_mmvet("q", "a", "p")
    call = transport.calls[0]
    assert call["url"] == "http://127.0.0.1:8000/v1/chat/completions"
    assert call["headers"] == {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    assert call["timeout"] == 9.0
    assert "Authorization" not in _judge([])[0].request([], 0.0, 1)[0]
    full = OpenAICompatibleJudge("https://x/v1/chat/completions", "m")
    assert full.url == "https://x/v1/chat/completions"


def test_mmvet_request_follows_the_grader_protocol() -> None:
    judge, transport = _judge(["0.5 because"])
    assert judge.grade_mmvet("What is x in the equation?", "-1<AND>-5", "x = -1") == 0.5
    body = transport.calls[0]["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 3
    expected = MMVET_PROMPT + "\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | "
    assert body["messages"] == [{"role": "user", "content": expected}]
    assert mmvet_query("What is x in the equation?", "-1<AND>-5", "x = -1") == expected


def test_mmvet_retries_with_hint_and_rising_temperature() -> None:
    judge, transport = _judge(["Score:", "1.5", "0.7"])
    assert judge.grade_mmvet("q", "a", "p") == 0.7
    bodies = [c["body"] for c in transport.calls]
    assert [b["temperature"] for b in bodies] == [0.0, 0.0, 0.5]
    assert not bodies[0]["messages"][0]["content"].endswith(MMVET_RETRY_SUFFIX)
    assert all(b["messages"][0]["content"].endswith(MMVET_RETRY_SUFFIX) for b in bodies[1:])

    judge, transport = _judge(["nope"] * 5)
    assert judge.grade_mmvet("q", "a", "p") == 0.0  # gives up after 5 tries
    assert [c["body"]["temperature"] for c in transport.calls] == [0.0, 0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize(("reply", "score"), [("0.4", 0.4), ("1.0", 1.0), ("0", 0.0), ("0.3 ok", 0.3),
                                              (" 0.3", None), ("1.1", None), ("-0.1", None), ("", None)])
def test_parse_mmvet_score(reply: str, score: float | None) -> None:
    assert parse_mmvet_score(reply) == score


def test_llava_bench_request_and_parse() -> None:
    judge, transport = _judge(["8 6\nAssistant 1 is more detailed."])
    assert judge.review_llava_bench(["A red car.", "On a road."], "What is it?", "A car.", "Car") == (8.0, 6.0)
    body = transport.calls[0]["body"]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 1024
    system, user = body["messages"]
    assert system == {"role": "system", "content": LLAVA_BENCH_SYSTEM}
    assert user["role"] == "user"
    assert user["content"] == ("[Context]\nA red car.\nOn a road.\n\n[Question]\nWhat is it?\n\n"
                               "[Assistant 1]\nA car.\n\n[End of Assistant 1]\n\n"
                               "[Assistant 2]\nCar\n\n[End of Assistant 2]\n\n"
                               f"[System]\n{LLAVA_BENCH_RULE}\n\n")
    assert llava_bench_query("caption as one string", "q", "r", "p").startswith("[Context]\ncaption as one string\n")
    judge, transport = _judge(["7 7"], llava_bench_temperature=0.0)
    judge.review_llava_bench("c", "q", "r", "p")
    assert transport.calls[0]["body"]["temperature"] == 0.0


@pytest.mark.parametrize(("review", "pair"), [
    ("8 6", (8.0, 6.0)), ("8,6\nwhy", (8.0, 6.0)), ("7.5 9", (7.5, 9.0)), ("8, 6", (-1.0, -1.0)),
    ("Scores: 8 6", (-1.0, -1.0)), ("8", (-1.0, -1.0)), ("a b", (-1.0, -1.0)), ("", (-1.0, -1.0)),
])
def test_parse_llava_bench_scores(review: str, pair: tuple[float, float]) -> None:
    # LLaVA splits on single spaces after replacing commas, so "8, 6" gives three parts and fails
    assert parse_llava_bench_scores(review) == pair


def test_transport_errors_are_retried_then_raised() -> None:
    judge, transport = _judge([urllib.error.URLError("down"), "0.9"])
    assert judge.grade_mmvet("q", "a", "p") == 0.9 and len(transport.calls) == 2
    judge, _ = _judge([urllib.error.URLError("down")] * 2, retries=1)
    with pytest.raises(urllib.error.URLError):
        judge.grade_mmvet("q", "a", "p")
    judge, _ = _judge(["0.9"])
    judge.transport = lambda *args: b'{"error": {"message": "overloaded"}}'
    with pytest.raises(KeyError):
        judge.grade_mmvet("q", "a", "p")


def test_rule_judge_on_the_mmvet_prompt_examples() -> None:
    judge = RuleJudge()
    gt = "-1 <AND> -5"
    assert judge.grade_mmvet("What is x in the equation?", gt, "x = 3") == 0.0
    assert judge.grade_mmvet("What is x in the equation?", gt, "x = -1") == 0.5
    assert judge.grade_mmvet("What is x in the equation?", gt, "x = -5 or 5") == 0.5
    assert judge.grade_mmvet("What is x in the equation?", gt, "x = -1 or x = -5") == 1.0
    assert judge.grade_mmvet("Which color?", "red <OR> blue", "It is blue.") == 1.0
    assert judge.grade_mmvet("Which color?", "dark red", "The car is dark red") == 1.0
    assert 0.0 < judge.grade_mmvet("Why?", "the sun heats the water", "water gets warm from sun") < 1.0
    assert judge.review_llava_bench("c", "q", "A red car.", "a red car") == (10.0, 10.0)
    assert judge.review_llava_bench("c", "q", "A red car.", "bananas") == (10.0, 1.0)


class TableJudge:
    """A stub judge with fixed answers, to check the metrics' arithmetic."""

    def __init__(self, mmvet: Mapping[str, float] | None = None,
                 bench: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.mmvet, self.bench = mmvet or {}, bench or {}

    def grade_mmvet(self, question: str, answer: str, prediction: str) -> float:
        return self.mmvet[prediction]

    def review_llava_bench(self, context, question: str, reference: str, prediction: str) -> tuple[float, float]:
        return self.bench[prediction]


def test_mmvet_score_overall_per_capability_and_per_combination() -> None:
    metric = MMVetScore(TableJudge(mmvet={"p1": 1.0, "p2": 0.5, "p3": 0.0, "p4": 0.3}))
    metric.update(["p1", "p2", " p3 ", "p4"], ["q"] * 4, ["a"] * 4,
                  [["rec"], ["rec", "ocr"], ["math"], ["ocr", "rec"]])
    out = metric.compute()
    # a capability counts every question that has it; a combination only questions with exactly that set
    assert out == pytest.approx({"score": 45.0, "score/rec": 60.0, "score/ocr": 40.0, "score/math": 0.0,
                                 "score_combo/rec": 100.0, "score_combo/rec_ocr": 40.0, "score_combo/math": 0.0})
    assert "score_std" not in out  # one judge run
    with pytest.raises(ValueError):
        metric.update(["p1"], ["q"], ["a"], [["vision"]])


class RunJudge:
    """A stub judge whose grades change from call to call, as a sampled LLM judge's do."""

    model = "stub-judge"

    def __init__(self, mmvet_grades: Sequence[float], bench_pairs: Sequence[tuple[float, float]] = ()) -> None:
        self.mmvet_grades, self.bench_pairs = list(mmvet_grades), list(bench_pairs)

    def grade_mmvet(self, question: str, answer: str, prediction: str) -> float:
        return self.mmvet_grades.pop(0)

    def review_llava_bench(self, context, question: str, reference: str, prediction: str) -> tuple[float, float]:
        return self.bench_pairs.pop(0)


def test_several_judge_runs_give_mean_and_std() -> None:
    # two questions, three runs each (question-major): run totals 50, 75, 25 -> mean 50, sample std 25
    metric = MMVetScore(RunJudge([1.0, 1.0, 0.5, 0.0, 0.5, 0.0]), runs=3)
    metric.update(["p", "q"], ["q"] * 2, ["a"] * 2, [["rec"], ["ocr", "math"]])
    out = metric.compute()
    assert out["score"] == pytest.approx(50.0) and out["score_std"] == pytest.approx(25.0)
    assert out["score/rec"] == pytest.approx(100 * 2.5 / 3)
    assert out["score_combo/ocr_math"] == pytest.approx(100 * 0.5 / 3)
    assert [r["score"] for r in metric.compute_runs()] == pytest.approx([50.0, 75.0, 25.0])

    bench = LLaVABenchScore(RunJudge([], [(10, 8), (10, 6), (-1, -1)]), runs=3)
    bench.update(["p"], ["q"], ["r"], ["c"], ["conv"])
    runs = bench.compute_runs()
    assert [r["score"] for r in runs] == pytest.approx([80.0, 60.0, 100.0])
    assert [r["n_failed"] for r in runs] == [0.0, 0.0, 1.0]
    out = bench.compute()
    assert out["score"] == pytest.approx(80.0) and out["score_std"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="runs"):
        MMVetScore(runs=0)


def test_judge_runs_default_and_are_recorded(tmp_path) -> None:
    """Deterministic RuleJudge: 1 run by default; an LLM judge: LLaVA's 3, with its model and temperature."""
    from lmm.eval.tasks import LLaVABench, MMVet

    rows = [{"question_id": i, "image": "x.png", "text": f"q{i}"} for i in range(2)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "gt.json").write_text(json.dumps({f"v1_{i}": {"question": f"q{i}", "answer": "red",
                                                             "capability": ["rec", "ocr"]} for i in range(2)}))
    files = {"questions": tmp_path / "q.jsonl", "annotations": tmp_path / "gt.json", "image_root": tmp_path}
    rule = MMVet(**files)
    assert rule.judge_runs == 1 and rule.describe()["judge_runs"] == 1
    assert rule.describe()["judge_temperature"] is None and "NOT comparable" in rule.describe()["judge_note"]

    judge, transport = _judge(["1.0", "0.5", "0.0", "1.0", "1.0", "1.0"])
    llm = MMVet(judge=judge, **files)
    info = llm.describe()
    assert (info["judge_runs"], info["judge_model"], info["judge_temperature"]) == (3, "judge-model", 0.0)
    assert info["judge_url"] == "http://127.0.0.1:8000/v1/chat/completions"
    scored = llm.score(llm.questions(), ["red", "red"])
    assert len(transport.calls) == 6  # 2 questions x 3 runs
    assert scored.scores["score"] == pytest.approx(100 * 4.5 / 6)
    assert scored.scores["score_std"] == pytest.approx(100 * 0.25)  # run totals 100, 75, 50
    assert [r["score"] for r in scored.details["judge_run_scores"]] == pytest.approx([100.0, 75.0, 50.0])
    assert scored.per_question == pytest.approx([0.5, 1.0])
    assert "score_combo/rec_ocr" in scored.scores
    assert MMVet(judge=judge, judge_runs=2, **files).judge_runs == 2
    bench_judge, _ = _judge([], llava_bench_temperature=0.0)
    bench = LLaVABench(tmp_path / "q.jsonl", None, None, tmp_path, judge=bench_judge, check_images=False)
    assert bench.describe()["judge_temperature"] == 0.0 and bench.judge_runs == 3


def test_llava_bench_relative_score_keeps_failed_reviews() -> None:
    judge = TableJudge(bench={"good": (8.0, 8.0), "bad": (10.0, 4.0), "broken": (-1.0, -1.0)})
    metric = LLaVABenchScore(judge)
    metric.update(["good", "bad", "broken"], ["q"] * 3, ["r"] * 3, ["c"] * 3, ["conv", "detail", "detail"])
    out = metric.compute()
    assert out["score"] == pytest.approx(100 * (8 + 4 - 1) / (8 + 10 - 1))
    assert out["score/conv"] == pytest.approx(100.0)
    assert out["score/detail"] == pytest.approx(100 * 3 / 9)
    assert "score/complex" not in out
    assert out["model_mean"] == pytest.approx(11 / 3) and out["reference_mean"] == pytest.approx(17 / 3)
    assert out["n_failed"] == 1.0


def test_metrics_default_to_the_rule_judge() -> None:
    assert isinstance(MMVetScore().judge, RuleJudge) and isinstance(LLaVABenchScore().judge, RuleJudge)
