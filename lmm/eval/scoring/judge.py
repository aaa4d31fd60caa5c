"""LLM-judge protocol for the open-ended benchmarks, MM-Vet and LLaVA-Bench-in-the-Wild (eval.md 4.10-4.12).

Published numbers come from GPT-4 judges; `OpenAICompatibleJudge` sends the same prompts to any OpenAI-compatible
chat endpoint (GPT-4 or a local server, eval.md 4.12) with plain urllib. `RuleJudge` is the offline fallback.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from lmm.eval.scoring.normalize import normalize_vqa_answer

# MM-Vet grader prompt (official mm-vet_evaluator); the query row "question | GT | prediction | " is appended.
MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""  # noqa: E501
MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
MMVET_TEMPERATURES = (0.0, 0.0, 0.5, 1.0, 1.5)  # first try, then retries with the suffix; after that the score is 0

# LLaVA-Bench (eval_gpt_review_bench.py with rule.json "llava_bench_*", identical for conv/detail/complex).
LLAVA_BENCH_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
LLAVA_BENCH_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user question "
    "displayed above. The user asks the question on observing an image. For your reference, the visual content in "
    "the image is represented with a few sentences describing the image. \nPlease rate the helpfulness, relevance, "
    "accuracy, level of details of their responses. Each assistant receives an overall score on a scale of 1 to 10, "
    "where a higher score indicates better overall performance.\nPlease first output a single line containing only "
    "two values indicating the scores for Assistant 1 and 2, respectively. The two scores are separated by a space."
    "\nIn the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential "
    "bias and ensuring that the order in which the responses were presented does not affect your judgment."
)


@runtime_checkable
class Judge(Protocol):
    """What MMVetScore and LLaVABenchScore need from a grader."""

    def grade_mmvet(self, question: str, answer: str, prediction: str) -> float:
        """Correctness of `prediction` against the ground truth `answer` (may hold <AND>/<OR>), in [0, 1]."""
        ...

    def review_llava_bench(self, context: str | Sequence[str], question: str, reference: str,
                           prediction: str) -> tuple[float, float]:
        """(reference score, prediction score) on 1-10; (-1, -1) when the judge's reply cannot be parsed."""
        ...


def mmvet_query(question: str, answer: str, prediction: str, retry: bool = False) -> str:
    """The grader's user message: prompt, then the row "question | GT | prediction | " to be completed."""
    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return MMVET_PROMPT + "\n" + " | ".join([question, gt, prediction, ""]) + (MMVET_RETRY_SUFFIX if retry else "")


def parse_mmvet_score(reply: str) -> float | None:
    """The reply's first space-separated token as a float in [0, 1], else None (the grader then retries)."""
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def llava_bench_query(context: str | Sequence[str], question: str, reference: str, prediction: str) -> str:
    """The review message: caption, question, GPT-4 reference as Assistant 1, the model as Assistant 2, the rule.

    A list of caption sentences is joined with newlines; a string is used as is.
    """
    caption = context if isinstance(context, str) else "\n".join(context)
    return (f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
            f"[Assistant 1]\n{reference}\n\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{prediction}\n\n[End of Assistant 2]\n\n[System]\n{LLAVA_BENCH_RULE}\n\n")


def parse_llava_bench_scores(review: str) -> tuple[float, float]:
    """First line, commas as spaces, exactly two numbers split on single spaces; else (-1, -1) as LLaVA does."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1])
    except ValueError:
        pass
    return -1.0, -1.0


Transport = Callable[[str, Mapping[str, str], bytes, float], bytes]
"""(url, headers, JSON body, timeout seconds) -> response body. Injected in tests so they never touch the network."""


def urllib_transport(url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> bytes:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


class OpenAICompatibleJudge:
    """Posts the official grading prompts to `<base_url>/chat/completions` (OpenAI chat API, no SDK needed).

    `base_url` is the API root, e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1". LLaVA-Bench uses
    LLaVA's temperature 0.2 by default; eval.md 4.12 recommends 0 for local judges (`llava_bench_temperature=0`).
    Failed requests are retried `retries` times, `retry_wait` seconds apart, then the error is raised.
    """

    deterministic = False  # sampled replies vary between runs: benchmarks average several judge runs

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, llava_bench_temperature: float = 0.2,
                 llava_bench_max_tokens: int = 1024, timeout: float = 120.0, retries: int = 3,
                 retry_wait: float = 2.0, transport: Transport | None = None) -> None:
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.llava_bench_temperature, self.llava_bench_max_tokens = llava_bench_temperature, llava_bench_max_tokens
        self.timeout, self.retries, self.retry_wait = timeout, retries, retry_wait
        self.transport = transport or urllib_transport
        self.mmvet_temperatures = MMVET_TEMPERATURES

    def request(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> tuple[dict, bytes]:
        """The headers and JSON body of one chat-completions call (separate so tests can check it)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        return headers, json.dumps(body).encode()

    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        """One completion's message text ("" when the server returns no content)."""
        headers, body = self.request(messages, temperature, max_tokens)
        failures = 0
        while True:
            try:
                reply = json.loads(self.transport(self.url, headers, body, self.timeout))
                return reply["choices"][0]["message"].get("content") or ""
            except (OSError, ValueError, KeyError, IndexError):  # network/HTTP errors, bad JSON, error payloads
                failures += 1
                if failures > self.retries:
                    raise
                time.sleep(self.retry_wait)

    def grade_mmvet(self, question: str, answer: str, prediction: str) -> float:
        """MM-Vet grader protocol: max_tokens 3; unparsable replies retried with a hint and rising temperature."""
        for attempt, temperature in enumerate(self.mmvet_temperatures):
            content = mmvet_query(question, answer, prediction, retry=attempt > 0)
            score = parse_mmvet_score(self.chat([{"role": "user", "content": content}], temperature, 3))
            if score is not None:
                return score
        return 0.0

    def review_llava_bench(self, context: str | Sequence[str], question: str, reference: str,
                           prediction: str) -> tuple[float, float]:
        messages = [{"role": "system", "content": LLAVA_BENCH_SYSTEM},
                    {"role": "user", "content": llava_bench_query(context, question, reference, prediction)}]
        review = self.chat(messages, self.llava_bench_temperature, self.llava_bench_max_tokens)
        return parse_llava_bench_scores(review)


def _tokens(text: str) -> list[str]:
    return normalize_vqa_answer(text).split()


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _token_f1(prediction: list[str], reference: list[str]) -> float:
    common = sum((Counter(prediction) & Counter(reference)).values())
    return 0.0 if common == 0 else 2 * common / (len(prediction) + len(reference))


class RuleJudge:
    """Deterministic, offline stand-in for the GPT judges, used when no judge is configured.

    Its scores are NOT comparable to GPT-judged published MM-Vet / LLaVA-Bench numbers (or to any LLM judge's):
    it only checks word overlap after VQA normalisation, so use it to rank runs of the same setup, never to quote.
    - MM-Vet: "a <AND> b": fraction of the elements found as word sequences in the prediction; "a <OR> b": 1 if
      any is found; otherwise 1 if the whole ground truth is found, else the token F1. Rounded to 0.1.
    - LLaVA-Bench: the reference gets 10, the prediction 1 + 9 * token F1 with the reference, rounded to 0.1.
    """

    deterministic = True  # the same grades every run: one judge run suffices

    def grade_mmvet(self, question: str, answer: str, prediction: str) -> float:
        pred = _tokens(prediction)
        if "<AND>" in answer:
            parts = [_tokens(p) for p in answer.split("<AND>")]
            return round(sum(_contains(pred, p) for p in parts) / len(parts), 1)
        if "<OR>" in answer:
            return float(any(_contains(pred, _tokens(p)) for p in answer.split("<OR>")))
        gt = _tokens(answer)
        return 1.0 if _contains(pred, gt) else round(_token_f1(pred, gt), 1)

    def review_llava_bench(self, context: str | Sequence[str], question: str, reference: str,
                           prediction: str) -> tuple[float, float]:
        return 10.0, round(1 + 9 * _token_f1(_tokens(prediction), _tokens(reference)), 1)
