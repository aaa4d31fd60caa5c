"""Templates reproduce LLaVA's tokenisation and v1 label masking on Llama-2 and on a Metaspace-BPE fast tokenizer."""

import re
from pathlib import Path

import pytest

from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lmm.data.records import Turn
from lmm.data.templates import (
    VICUNA_V1_SYSTEM,
    Encoded,
    PlainTemplate,
    TokenizationMismatch,
    VicunaV1Template,
    tokenize_prompt,
    truncate,
)
from tests.conftest import LLAMA_TOKENIZER, need_fixture

TWO_TURNS = [
    Turn("human", "<image>\nWhat color is the bus?"), Turn("gpt", "Red"),
    Turn("human", "Is it big?"), Turn("gpt", "Yes"),
]


def _supervised(enc: Encoded) -> list[int]:
    return [t for t in enc.labels if t != IGNORE_INDEX]


def _runs(enc: Encoded) -> list[list[int]]:
    """Contiguous supervised spans (one per assistant turn)."""
    runs, prev = [], False
    for tok, lab in zip(enc.input_ids, enc.labels, strict=True):
        if lab != IGNORE_INDEX:
            if not prev:
                runs.append([])
            runs[-1].append(tok)
        prev = lab != IGNORE_INDEX
    return runs


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non-legacy"])
def llama(request):
    path = need_fixture(LLAMA_TOKENIZER, "the real Llama-2 tokenizer fixture")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, legacy=request.param)


def _llava_reference(conversations, tokenizer, has_image):
    """LLaVA's preprocess_v1 arithmetic written literally (fixed -2, legacy fix from tokenizer.legacy)."""
    turns = [Turn(t.role, "<image>\n" + t.value.replace("<image>", "").strip()) if "<image>" in t.value else t
             for t in conversations]
    text = VICUNA_V1_SYSTEM + " " + "".join(
        f"{('USER', 'ASSISTANT')[j % 2]}: {t.value}{' ' if j % 2 == 0 else '</s>'}" for j, t in enumerate(turns))
    ids = tokenize_prompt(text, tokenizer, has_image)
    labels, cur = list(ids), 1
    labels[0] = IGNORE_INDEX
    for i, rou in enumerate(text.split("</s>")):
        if rou == "":
            break
        parts = rou.split(" ASSISTANT: ")
        parts[0] += " ASSISTANT: "
        round_len = len(tokenize_prompt(rou, tokenizer, has_image))
        instr_len = len(tokenize_prompt(parts[0], tokenizer, has_image)) - 2
        if i != 0 and not tokenizer.legacy:
            round_len, instr_len = round_len - 1, instr_len - 1
        labels[cur:cur + instr_len] = [IGNORE_INDEX] * instr_len
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
    assert cur == len(ids), "reference itself mismatched"
    return Encoded(ids, labels)


def test_plain_caption_example(llama):
    enc = PlainTemplate().encode([Turn("human", "<image>"), Turn("gpt", "a red bus on a street")], llama)
    assert enc.input_ids == [1, IMAGE_TOKEN_INDEX, 263, 2654, 3593, 373, 263, 11952, 13]
    assert enc.labels == [IGNORE_INDEX, IGNORE_INDEX, 263, 2654, 3593, 373, 263, 11952, 13]
    assert PlainTemplate().prompt_ids("ignored", llama) == [1, IMAGE_TOKEN_INDEX]


def test_legacy_flag_really_changes_tokenisation(llama):
    ids = llama("Red</s>USER: Yes")["input_ids"]
    assert ids == ([1, 4367, 2, 3148, 1001, 29901, 3869] if llama.legacy else [1, 4367, 2, 11889, 29901, 3869])


def test_vicuna_two_turns_supervise_answers_and_eos(llama):
    enc = VicunaV1Template().encode(TWO_TURNS, llama, has_image=True)
    assert _supervised(enc) == [4367, 2, 3869, 2]
    assert len(enc.input_ids) == len(enc.labels) and enc.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    i = enc.input_ids.index(IMAGE_TOKEN_INDEX)
    assert enc.input_ids[i - 2:i + 3] == [29901, 29871, IMAGE_TOKEN_INDEX, 29871, 13]
    assert enc.labels[:i + 1] == [IGNORE_INDEX] * (i + 1)


def test_image_moved_to_front_of_first_turn(llama):
    moved = [Turn("human", "What color is the bus? <image>")] + TWO_TURNS[1:]
    tpl = VicunaV1Template()
    assert tpl.encode(moved, llama) == tpl.encode(TWO_TURNS, llama)


@pytest.mark.parametrize("conv,has_image", [
    (TWO_TURNS, True),
    ([Turn("human", "Count <image> them"), Turn("gpt", "1 bus"), Turn("human", "Sure?"), Turn("gpt", "Yes."),
      Turn("human", "Why?"), Turn("gpt", "Because I see it.\nOnly one.")], True),
    ([Turn("human", "Hi there"), Turn("gpt", "Hello! How can I help?"), Turn("human", "Tell 1 joke"),
      Turn("gpt", "2 jokes")], False),
])
def test_equals_llava_reference_arithmetic(llama, conv, has_image):
    assert VicunaV1Template().encode(conv, llama, has_image) == _llava_reference(conv, llama, has_image)


def test_wrong_legacy_fix_raises_mismatch(llama):
    wrong = VicunaV1Template(legacy_fix=bool(llama.legacy))  # legacy tokenizer needs no fix, non-legacy needs it
    with pytest.raises(TokenizationMismatch, match="tokenization mismatch") as info:
        wrong.encode(TWO_TURNS, llama)
    assert info.value.total - info.value.cursor == (1 if llama.legacy else -1)  # the fix drops 1 per round ≥ 1
    assert VicunaV1Template(legacy_fix=not llama.legacy).encode(TWO_TURNS, llama).labels


def test_separator_inside_text_raises_mismatch(llama):
    conv = [Turn("human", "Say </s> please"), Turn("gpt", "No")]
    with pytest.raises(TokenizationMismatch):
        VicunaV1Template().encode(conv, llama, has_image=False)


def test_text_only_path(llama):
    conv = [Turn("human", "Hi"), Turn("gpt", "Hello!"), Turn("human", "Bye"), Turn("gpt", "Bye!")]
    enc = VicunaV1Template().encode(conv, llama, has_image=False)
    assert IMAGE_TOKEN_INDEX not in enc.input_ids
    assert [llama.decode(r) for r in _runs(enc)] == ["Hello!</s>", "Bye!</s>"]
    with pytest.raises(ValueError, match="placeholder"):
        VicunaV1Template().encode(TWO_TURNS, llama, has_image=False)


def test_prompt_ids_end_with_assistant_colon(llama):
    tpl = VicunaV1Template()
    ids = tpl.prompt_ids("What color is the bus?", llama, has_image=True)
    train = tpl.encode(TWO_TURNS, llama).input_ids
    assert ids == train[:len(ids)] and train[len(ids)] == 4367  # next token is the answer "▁Red"
    assert llama.convert_ids_to_tokens(ids[-2:]) == ["ANT", ":"]
    assert IMAGE_TOKEN_INDEX not in tpl.prompt_ids("Hi", llama, has_image=False)


def test_truncate_keeps_alignment():
    enc = Encoded([1, 2, 3, 4], [IGNORE_INDEX, 2, 3, 4])
    assert truncate(enc, 2) == Encoded([1, 2], [IGNORE_INDEX, 2])
    assert truncate(enc, 10) == enc


def _metaspace_bpe(prepend_scheme: str, split: bool = True):
    """A Llama-like fast tokenizer: BPE + Metaspace, <unk>=0 <s>=1 </s>=2, BOS added by TemplateProcessing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=split)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=split)
    corpus = [VICUNA_V1_SYSTEM, "USER: What color is the bus?\n ASSISTANT: Red", "Is it big? Yes, it is a big bus.",
              "a red bus on a street", "Hi there! Hello, how can I help?"] * 5
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=220, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2]
    return tok


BPE_CONV = [Turn("human", "What color is the bus?\n<image>"), Turn("gpt", "Red"),
            Turn("human", "Is it big?"), Turn("gpt", "Yes, it is a big bus.")]


@pytest.mark.parametrize("scheme,after_sep2", [("always", 0), ("first", -1)])
def test_metaspace_bpe_supervision(scheme, after_sep2):
    tok = _metaspace_bpe(scheme)
    tpl = VicunaV1Template()
    assert tpl.probe(tok).after_sep2 == after_sep2  # "first": "USER:" after </s> costs one token more than alone
    for has_image in (True, False):
        conv = BPE_CONV if has_image else [Turn(t.role, t.value.replace("<image>", "")) for t in BPE_CONV]
        enc = tpl.encode(conv, tok, has_image=has_image)
        assert enc.input_ids[0] == 1 and enc.input_ids.count(IMAGE_TOKEN_INDEX) == int(has_image)
        assert [tok.decode(r) for r in _runs(enc)] == ["Red</s>", "Yes, it is a big bus.</s>"]
        assert sum(len(r) for r in _runs(enc)) == len(_supervised(enc))
    plain = PlainTemplate().encode([Turn("human", "<image>"), Turn("gpt", "a red bus")], tok)
    assert plain.input_ids[:2] == [1, IMAGE_TOKEN_INDEX] and plain.labels[:2] == [IGNORE_INDEX] * 2
    assert tok.decode(_supervised(plain)) == "a red bus\n"
    with pytest.raises(TokenizationMismatch):
        VicunaV1Template(legacy_fix=True).encode(BPE_CONV, tok)


def test_bpe_with_merges_across_words_never_masks_answer_tokens():
    tok = _metaspace_bpe("first", split=False)  # merges like "T:▁Red" cross the instruction/answer boundary
    enc = VicunaV1Template().encode(BPE_CONV, tok)
    runs = ["".join(tok.convert_ids_to_tokens(r)).replace("▁", " ") for r in _runs(enc)]
    assert len(runs) == 2 and runs[0].endswith("Red</s>") and runs[1].endswith("Yes, it is a big bus.</s>")


def test_template_pickles_after_probing():
    import pickle

    tok = _metaspace_bpe("always")
    tpl = VicunaV1Template(roles=["USER", "ASSISTANT"])  # lists arrive from Hydra configs
    expected = tpl.encode(BPE_CONV, tok)
    assert pickle.loads(pickle.dumps(tpl)).encode(BPE_CONV, tok) == expected


def test_stop_tokens_on_real_tokenizer(llama_tokenizer_dir):
    from transformers import AutoTokenizer

    from lmm.data.templates import PlainTemplate, VicunaV1Template

    tok = AutoTokenizer.from_pretrained(llama_tokenizer_dir)
    assert PlainTemplate().stop_token_ids(tok) == [13, 2]  # "\n" (<0x0A>) is the plain template's terminator
    assert VicunaV1Template().stop_token_ids(tok) == [2]


@pytest.mark.parametrize(("ci", "outcome"), [(None, pytest.skip.Exception), ("", pytest.skip.Exception),
                                             ("false", pytest.skip.Exception), ("true", pytest.fail.Exception),
                                             ("1", pytest.fail.Exception)], ids=lambda v: getattr(v, "__name__", v))
def test_missing_fixture_skips_for_a_user_and_fails_under_ci(tmp_path, monkeypatch, ci, outcome):
    """need_fixture, which every test needing ../shared goes through: a clone without the fixtures skips them with
    the path as reason; with CI set the same missing fixture fails the test."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    missing = tmp_path / "shared" / "fixtures" / "llama-tokenizer"
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception),  # both caught: a skip must not pass as one
                       match=re.escape(f"the tokenizer fixture not found at {missing}")) as outcome_of:
        need_fixture(missing, "the tokenizer fixture")
    assert outcome_of.type is outcome
    missing.mkdir(parents=True)
    assert need_fixture(missing, "the tokenizer fixture") == missing  # present: the test runs


def test_fixture_paths_only_in_conftest():
    """No test module finds ../shared by itself (and so around need_fixture's CI rule)."""
    tests = Path(__file__).resolve().parent
    joins_shared = re.compile(r"""/\s*["']shared["']""")  # `... / "shared"`
    bypass = [p.name for p in tests.glob("test_*.py")
              if p.name != Path(__file__).name and joins_shared.search(p.read_text())]
    assert not bypass, f"{bypass} build the ../shared path themselves: use tests/conftest.py's need_fixture"
