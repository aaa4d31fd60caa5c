"""Answer post-processing rules of the LLaVA-1.5 benchmarks (spec/eval.md sections 3.2 and 4).

Every function reproduces one official rule, quirks included, because published numbers depend on them: a "cleaner"
parser would score the same outputs differently. Functions take the answer-file text (generation output, stripped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# --- VQA normalisation (EvalAI answer processor, eval.md 3.2) -----------------------------------------------------

_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')  # the 21 characters, in the official order
_COMMA_DIGITS = re.compile(r"(?<=\d),+(?=\d)")  # EvalAI processor: one or more commas between digits
_COMMA_DIGITS_OFFICIAL = re.compile(r"\d,\d")  # GT-Vision-Lab vqaEval.py: digit, comma, digit
_PERIOD = re.compile(r"\.(?!\d)")  # the official look-behind is a typo that never fires, so it is left out
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# Contraction table "key=value". Irregular entries are kept on purpose (somebody'd -> somebodyd is reversed in the
# official table; the capitalised I-keys can never match lowercased text).
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've couldnt've=couldn't've
didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't
hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm
Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't
notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd thered've=there'd've
there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've
theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll
whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've
yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've
youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())


def vqa_punctuation(text: str, official: bool = False) -> str:
    """Step 3 + 4: delete or space out punctuation, then strip periods not followed by a digit."""
    comma_digits = (_COMMA_DIGITS_OFFICIAL if official else _COMMA_DIGITS).search(text) is not None
    out = text
    for c in _PUNCTUATION:  # the delete/space decision looks at the text as it was before this pass
        delete = comma_digits or f"{c} " in text or f" {c}" in text
        out = out.replace(c, "" if delete else " ")
    return _PERIOD.sub("", out, count=32)  # the official call passes re.UNICODE (= 32) in the count slot


def vqa_digits_articles(text: str) -> str:
    """Steps 5-7: number words to digits, drop articles, restore contractions, single-space join."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(text: str, official: bool = False) -> str:
    """Normalise a VQA answer as LLaVA/m4c's EvalAI processor does (steps 1-7).

    ``official=True`` follows GT-Vision-Lab's vqaEval.py instead: no step 1 and the digit-comma-digit clause.
    (Whether vqaEval normalises at all depends on the ground truth; see ``vqa_score``.)
    """
    if not official:
        text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digits_articles(vqa_punctuation(text, official=official))


# --- GQA, POPE, MME ---------------------------------------------------------------------------------------------


def gqa_postprocess(text: str) -> str:
    """convert_gqa_for_eval: trailing periods removed, then lowercased; compared to the gold answer verbatim."""
    return text.strip().rstrip(".").lower()


def parse_pope_yes_no(text: str) -> str:
    """eval_pope.py: text before the first '.', commas deleted, 'yes' unless a space-split token is No/no/not.

    Empty or unrelated text counts as "yes"; so does "NO" (only "No", "no", "not" are recognised).
    """
    words = text.split(".", 1)[0].replace(",", "").split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def parse_mme_yes_no(text: str) -> str:
    """MME calculation.py: lowercase; exact yes/no, else 'yes' then 'no' searched in the first 4 chars, else 'other'."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    return "no" if "no" in text[:4] else "other"


# --- multiple choice: ScienceQA, MMBench, SEED --------------------------------------------------------------------

_SQA_LETTERS = ("A", "B", "C", "D", "E")
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # "." is any character, as in eval_science_qa.py
SQA_FAILED = "FAILED"


def extract_sqa_letter(text: str) -> str:
    """eval_science_qa.py: bare A-E; else 'X. ...'; else exactly one 'The answer is X.'; else 'FAILED'.

    The returned letter may lie beyond the question's choices (e.g. 'E' for 3 choices, or 'F'); it then counts wrong.
    """
    if text in _SQA_LETTERS:
        return text
    if len(text) >= 3 and text[0] in _SQA_LETTERS and text[1:3] == ". ":
        return text[0]
    found = _SQA_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else SQA_FAILED


_MMB_DECORATION = str.maketrans({c: " " for c in ".,:;!*#()[]{}"})


def extract_mmbench_letter(text: str, options: Mapping[str, str] | None = None) -> str | None:
    """Rule-based MMBench letter extraction (VLMEvalKit steps 1-2, no LLM judge); None when unresolved.

    1. Decorations (".", ",", ":", "(", ")" ...) become spaces and the answer is split on whitespace; if exactly one
       option letter occurs as a token it is the answer. A bare undecorated "A" in an answer of more than 3 tokens
       is ambiguous (it may be the article) and sends the answer to step 2.
    2. Else, if exactly one option's text (lowercased) is a substring of the lowercased answer, that option.
    ``options`` maps letters to option texts; without it the letters are A-D and step 2 is skipped.
    """
    letters = list(options) if options else list("ABCD")
    tokens = text.translate(_MMB_DECORATION).split()
    found = [c for c in letters if c in tokens]
    if len(found) == 1:
        article_like = found[0] == "A" and "A" in text.split() and len(tokens) > 3
        if not article_like:
            return found[0]
    if options:
        low = text.lower()
        hits = [c for c, opt in options.items() if str(opt) and str(opt).lower() in low]
        if len(hits) == 1:
            return hits[0]
    return None
