"""Conversation templates: LLaVA's prompt strings, its tokenisation around <image> and its exact label masking."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmm.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from lmm.data.records import GPT, HUMAN, Turn

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass
class Encoded:
    """Token ids of one sample and its labels (IGNORE_INDEX where no loss); the image is one IMAGE_TOKEN_INDEX."""

    input_ids: list[int]
    labels: list[int]


class TokenizationMismatch(ValueError):
    """The masking cursor disagrees with the token count, so the labels cannot be trusted (never train on it)."""

    def __init__(self, message: str, *, cursor: int, total: int, text: str) -> None:
        super().__init__(message)
        self.cursor, self.total, self.text = cursor, total, text


def truncate(encoded: Encoded, max_length: int) -> Encoded:
    """Cut input_ids and labels to max_length together so they stay aligned."""
    return Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length])


def _ids(tokenizer: Any, text: str, special: bool = True) -> list[int]:
    """Token ids of text as the tokenizer's plain call gives them (with its BOS when special)."""
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


_PREFIX_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_prefix(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before any text (BOS for Llama); a tokenizer that appends ids is refused."""
    try:
        return list(_PREFIX_CACHE[tokenizer])
    except (KeyError, TypeError):
        pass
    with_sp, without = _ids(tokenizer, "a"), _ids(tokenizer, "a", special=False)
    if with_sp[len(with_sp) - len(without):] != without:
        raise ValueError(f"tokenizer appends special ids ({with_sp} vs {without}); disable e.g. add_eos_token")
    prefix = with_sp[: len(with_sp) - len(without)]
    try:
        _PREFIX_CACHE[tokenizer] = prefix
    except TypeError:
        pass
    return prefix


def tokenize_prompt(text: str, tokenizer: Any, has_image: bool = True) -> list[int]:
    """LLaVA's tokenizer_image_token: chunks between <image> tokenised separately, one prefix kept, -200 between."""
    if not has_image:
        return _ids(tokenizer, text)
    n_prefix = len(special_prefix(tokenizer))
    chunks = [_ids(tokenizer, chunk) for chunk in text.split(IMAGE_PLACEHOLDER)]
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[n_prefix:])
    return ids


def _turns(conversations: Sequence[Any]) -> list[Turn]:
    """Accept Turn objects or LLaVA's {"from", "value"} dicts."""
    return [Turn(t["from"], t["value"]) if isinstance(t, Mapping) else Turn(t.role, t.value) for t in conversations]


def _check_turns(turns: list[Turn], has_image: bool) -> None:
    """Refuse conversations the masking cannot handle (validate_record catches these earlier, with file context)."""
    if not turns or len(turns) % 2:
        raise ValueError(f"need an even, non-zero number of turns, got {len(turns)}")
    for j, turn in enumerate(turns):
        if turn.role != (HUMAN if j % 2 == 0 else GPT):
            raise ValueError(f"turn {j} is from {turn.role!r}; turns must alternate human/gpt, human first")
    n_img = sum(t.value.count(IMAGE_PLACEHOLDER) for t in turns)
    if n_img != (1 if has_image else 0):
        raise ValueError(f"has_image={has_image} but the conversation holds {n_img} {IMAGE_PLACEHOLDER} placeholders")


def _image_first(value: str) -> str:
    """LLaVA's preprocess_multimodal: remove <image> from the turn and put it in front as "<image>\\n{rest}"."""
    return (IMAGE_PLACEHOLDER + "\n" + value.replace(IMAGE_PLACEHOLDER, "").strip()).strip()


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _mask(labels: list[int], start: int, end: int) -> None:
    """Set labels[start:end] to IGNORE_INDEX without ever changing the list's length."""
    for k in range(max(start, 0), min(end, len(labels))):
        labels[k] = IGNORE_INDEX


class PlainTemplate:
    """Stage-1 template: "<image>" + caption + "\\n", no EOS, loss on the caption and the newline."""

    name = "plain"

    def __init__(self, sep: str = "\n") -> None:
        self.sep = sep

    def encode(self, conversations: Sequence[Any], tokenizer: Any, has_image: bool = True) -> Encoded:
        """Tokenise [human, gpt] as image + caption + sep; mask the prefix and the image placeholder."""
        turns = _turns(conversations)
        _check_turns(turns, has_image)
        if len(turns) != 2:
            raise ValueError(f"plain template needs exactly 2 turns, got {len(turns)}")
        if has_image and IMAGE_PLACEHOLDER not in turns[0].value:
            raise ValueError(f"plain template needs {IMAGE_PLACEHOLDER} in the first (human) turn")
        head = IMAGE_PLACEHOLDER if has_image else ""
        ids = tokenize_prompt(head + turns[1].value + self.sep, tokenizer, has_image)
        labels = list(ids)
        _mask(labels, 0, len(self.prompt_ids("", tokenizer, has_image)))
        return Encoded(ids, labels)

    def prompt_ids(self, question: str, tokenizer: Any, has_image: bool = True) -> list[int]:
        """Inference prompt: BOS + image (the question is not part of the plain format)."""
        return tokenize_prompt(IMAGE_PLACEHOLDER, tokenizer) if has_image else special_prefix(tokenizer)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Generation ends at the learned terminator (the last token of `sep`) or at EOS."""
        sep_ids = _ids(tokenizer, "a" + self.sep, special=False)
        return [sep_ids[-1], tokenizer.eos_token_id]


@dataclass(frozen=True)
class _Probe:
    """How a tokenizer deviates from 'tokenise each round alone'; each value measured from the tokenizer."""

    n_prefix: int  # ids added before any text (LLaVA: BOS = 1)
    sep2_len: int  # tokens of sep2 in context (LLaVA: "</s>" = 1)
    merge_cost: int  # tokens the trailing space of "ASSISTANT: " costs alone, merged into the answer in context (1)
    after_sep2: int  # tokens fewer for a round right after sep2 than alone (LLaVA legacy fix: 1 non-legacy, else 0)


class VicunaV1Template:
    """Stage-2 template "{system} USER: {q} ASSISTANT: {a}</s>" with LLaVA's preprocess_v1 masking arithmetic."""

    name = "vicuna_v1"

    def __init__(
        self,
        system: str = VICUNA_V1_SYSTEM,
        roles: Sequence[str] = ("USER", "ASSISTANT"),
        sep: str = " ",
        sep2: str | None = None,
        legacy_fix: bool | str = "auto",
    ) -> None:
        if legacy_fix not in ("auto", True, False):
            raise ValueError(f"legacy_fix must be 'auto', True or False, got {legacy_fix!r}")
        self.system, self.roles, self.sep, self.sep2 = system, tuple(str(r) for r in roles), sep, sep2
        self.legacy_fix = legacy_fix
        self._probes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __getstate__(self) -> dict:
        """Drop the per-tokenizer cache when pickled into dataloader workers."""
        return {k: v for k, v in self.__dict__.items() if k != "_probes"}

    def __setstate__(self, state: dict) -> None:
        """Restore with an empty cache (the probe is re-measured on first use)."""
        self.__dict__.update(state, _probes=weakref.WeakKeyDictionary())

    def _sep2(self, tokenizer: Any) -> str:
        """The assistant-turn terminator: the tokenizer's EOS string unless given."""
        return self.sep2 if self.sep2 is not None else tokenizer.eos_token

    def probe(self, tokenizer: Any) -> _Probe:
        """Measure the offsets LLaVA hard-codes (BOS, "</s>", the "▁" merge, the legacy fix) on this tokenizer."""
        try:
            return self._probes[tokenizer]
        except (KeyError, TypeError):
            pass
        n_prefix = len(special_prefix(tokenizer))
        sep2 = self._sep2(tokenizer)
        sep2_ids = _ids(tokenizer, sep2, special=False)
        if self.sep2 is None and sep2_ids != [tokenizer.eos_token_id]:
            raise ValueError(f"EOS string {sep2!r} tokenises to {sep2_ids}, not [{tokenizer.eos_token_id}]")
        ask = self.roles[0] + self.sep + self.roles[1] + ": "
        merge_cost = len(_ids(tokenizer, ask)) - len(_ids(tokenizer, ask.rstrip()))
        head = self.roles[0] + ": " + self.roles[1]
        alone = len(_ids(tokenizer, head)) - n_prefix
        after = len(_ids(tokenizer, sep2 + head)) - n_prefix - len(sep2_ids)
        after_sep2 = alone - after if self.legacy_fix == "auto" else int(self.legacy_fix)
        probe = _Probe(n_prefix, len(sep2_ids), merge_cost, after_sep2)
        try:
            self._probes[tokenizer] = probe
        except TypeError:
            pass
        return probe

    def _prompt_text(self, turns: list[Turn], sep2: str, open_answer: bool = False) -> str:
        """LLaVA's SeparatorStyle.TWO get_prompt; open_answer ends with "ASSISTANT:" for generation."""
        text = self.system + self.sep
        for j, turn in enumerate(turns):
            text += f"{self.roles[j % 2]}: {turn.value}{self.sep if j % 2 == 0 else sep2}"
        return text + (f"{self.roles[1]}:" if open_answer else "")

    def encode(self, conversations: Sequence[Any], tokenizer: Any, has_image: bool = True) -> Encoded:
        """Tokenise a human/gpt conversation; supervise each answer and its EOS exactly as LLaVA's preprocess_v1."""
        turns = _turns(conversations)
        _check_turns(turns, has_image)
        turns = [Turn(t.role, _image_first(t.value)) if IMAGE_PLACEHOLDER in t.value else t for t in turns]
        p = self.probe(tokenizer)
        sep2 = self._sep2(tokenizer)
        text = self._prompt_text(turns, sep2)
        ids = tokenize_prompt(text, tokenizer, has_image)
        labels = list(ids)
        cur = p.n_prefix
        _mask(labels, 0, cur)
        ask = self.sep + self.roles[1] + ": "
        for i, rnd in enumerate(text.split(sep2)):
            if rnd == "":
                break
            parts = rnd.split(ask)
            if len(parts) != 2:
                break
            rnd_ids = tokenize_prompt(rnd, tokenizer, has_image)
            instr_ids = tokenize_prompt(parts[0] + ask, tokenizer, has_image)
            round_len = len(rnd_ids) - p.n_prefix + p.sep2_len
            # LLaVA's "len - 2" (BOS + the "▁" merged into the answer), never past where round and instruction differ
            instr_len = min(len(instr_ids) - p.merge_cost, _common_prefix(instr_ids, rnd_ids)) - p.n_prefix
            if i > 0:
                round_len -= p.after_sep2
                instr_len -= p.after_sep2
            _mask(labels, cur, cur + instr_len)
            cur += round_len
        _mask(labels, cur, len(labels))
        if cur != len(ids):
            raise TokenizationMismatch(
                f"tokenization mismatch: masking cursor {cur} != {len(ids)} tokens "
                f"(has_image={has_image}, {len(turns) // 2} rounds, probe={p}); text={text[:300]!r}",
                cursor=cur, total=len(ids), text=text,
            )
        return Encoded(ids, labels)

    def prompt_ids(self, question: str, tokenizer: Any, has_image: bool = True) -> list[int]:
        """Inference prompt "{system} USER: <image>\\n{question} ASSISTANT:" (no trailing space)."""
        if has_image:
            question = _image_first(question) if IMAGE_PLACEHOLDER in question else IMAGE_PLACEHOLDER + "\n" + question
        elif IMAGE_PLACEHOLDER in question:
            raise ValueError(f"text-only prompt contains {IMAGE_PLACEHOLDER}")
        text = self._prompt_text([Turn(HUMAN, question)], self._sep2(tokenizer), open_answer=True)
        return tokenize_prompt(text, tokenizer, has_image)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Generation ends at the assistant turn's separator (EOS, "</s>" for Llama)."""
        return [tokenizer.convert_tokens_to_ids(self._sep2(tokenizer))]
