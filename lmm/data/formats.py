"""Response-format prompts, each written once: LLaVA-1.5's training sources' (applied or removed on the fly as a
transform of the human turns) and its benchmarks' (used by lmm.eval and the tiny world's benchmark analogs).

The 665K mixture stores its VQA questions with the format prompt already appended ("...\\nAnswer the question using a
single word or phrase."). Making the prompt a transform means `format_prompt: false` on a source is rung 2 of the
ablation ladder (VQA without the format prompt) read from the same files: the transform strips the stored prompt;
`true` appends it where the raw data lacks it (e.g. VQA converted from the original annotations).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmm.data.records import HUMAN, Turn

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
CAPTION = "Provide a one-sentence caption for the provided image."
REGION_TO_BOX = "Please provide the bounding box coordinate of the region this sentence describes:"
REGION_TO_TEXT = "Please provide a short description for this region:"
# Prompts of the benchmarks only (spec/eval.md), never toggled on training data:
MULTIPLE_CHOICE_CN = "请直接回答选项字母。"  # MMBench-CN: MULTIPLE_CHOICE in Chinese
# VizWiz: before SHORT_ANSWER, so that a question the image cannot answer gets "unanswerable"
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
YES_NO_SUFFIX = " Please answer yes or no."  # the end of MME's questions (with its leading space)

# policy -> the prompt it appends to each human turn (None: the policy has no removable prompt)
PROMPTS: dict[str, str | None] = {
    "short_answer": SHORT_ANSWER,  # VQAv2, GQA, OKVQA, OCRVQA
    "multiple_choice": MULTIPLE_CHOICE,  # A-OKVQA
    "caption": CAPTION,  # TextCaps: the prompt is the whole question
    "region": None,  # RefCOCO, VG: the region prompts *are* the task, so there is nothing to toggle
    "none": None,  # LLaVA-Instruct, ShareGPT, LCS-558K
}
POLICIES = tuple(PROMPTS)


def _strip_suffix(value: str, prompt: str) -> str:
    """Remove a trailing format prompt and the whitespace before it (also when it is the whole question)."""
    stripped = value.rstrip()
    if stripped.endswith(prompt):
        return stripped[: -len(prompt)].rstrip()
    return value


class FormatPrompt:
    """Callable on a conversation: strip the source's stored format prompt from every human turn, then re-append it
    ("{question}\\n{prompt}", LLaVA's layout) when `enabled`. Idempotent, so stored and raw data give the same text.
    """

    def __init__(self, policy: str = "none", enabled: bool = True) -> None:
        if policy not in PROMPTS:
            raise ValueError(f"unknown response-format policy {policy!r}; choose from {POLICIES}")
        self.policy, self.enabled, self.prompt = policy, bool(enabled), PROMPTS[policy]

    def __call__(self, turns: Sequence[Turn]) -> list[Turn]:
        if self.prompt is None:
            return list(turns)
        out = []
        for turn in turns:
            if turn.role != HUMAN:
                out.append(turn)
                continue
            value = _strip_suffix(turn.value, self.prompt)
            if self.enabled:
                value = f"{value}\n{self.prompt}" if value.strip() else self.prompt
            elif not value.strip():
                raise ValueError(f"removing the {self.policy!r} format prompt leaves an empty human turn")
            out.append(Turn(turn.role, value))
        return out

    def __repr__(self) -> str:
        return f"FormatPrompt({self.policy!r}, enabled={self.enabled})"


def detect_policy(turns: Sequence[Turn]) -> str:
    """The policy whose prompt the conversation carries (first match over the human turns), or "none"."""
    humans = [t.value.rstrip() for t in turns if t.role == HUMAN]
    if any(REGION_TO_BOX in v or REGION_TO_TEXT in v for v in humans):
        return "region"
    for policy in ("multiple_choice", "short_answer", "caption"):
        prompt = PROMPTS[policy]
        if any(v.endswith(prompt) for v in humans):
            return policy
    return "none"
