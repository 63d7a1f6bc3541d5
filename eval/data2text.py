"""WebNLG 2017 and DART as their official scripts score them: BLEU, METEOR, TER (Li & Liang 2021, Table 2).

Both official pipelines (webnlg-automatic-evaluation's evaluation.py; Yale-LILY/dart's run_eval_on_dart.sh)
rewrite every text before scoring it and keep only an entry's first 3 references:
- WebNLG: lower-case, unidecode, and every non-word character (re's \\W) split off as a word of its own.
  evaluation.py splits the references before unidecode and the outputs after it; so does this file.
- DART: the same split, then lower-case, no unidecode (this order reproduces every official reference
  line from the XML). The official references carry it; the authors gave it to their outputs by hand.
  Here both sides get it.
BLEU is then multi-bleu.perl's (0-100, 2 decimals), METEOR is METEOR 1.5 with the official `-l en -norm`
(a missing reference scores 0 and never wins, so the official padding changes nothing), TER is tercom
0.7.25's. Used by eval.score_files(task="webnlg" | "dart").
    python -m eval out/test.seen.refs.txt out/test.seen.txt --task webnlg    (beam.py --data-dir writes both)
"""
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from unidecode import unidecode

from .files import check_pairs
from .java import Meteor
from .multi_bleu import multi_bleu
from .ter import ter

N_REFS = 3  # the official reference files hold the first 3 references of each entry


@dataclass
class Memo:
    """What score_files_many computes once per distinct entry: METEOR's statistics per SCORE line, TER's edits."""
    meteor: dict[str, str] = field(default_factory=dict)
    ter: dict[tuple, int] = field(default_factory=dict)


def split_words(text: str) -> str:
    """evaluation.py's "detokenise": every non-word character becomes a word, whitespace is collapsed."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def normalize(text: str, task: str, reference: bool) -> str:
    """The official rewriting of one reference or output of WebNLG ("webnlg") or DART ("dart")."""
    if task == "dart":
        return split_words(text).lower()
    if reference:
        return unidecode(split_words(text).lower())
    return split_words(unidecode(unidecode(text).lower()))


def score_data2text(refs: list[list[str]], outputs: list[str], task: str, meteor: Meteor | None = None,
                    memo: Memo | None = None) -> dict[str, float]:
    """BLEU (0-100), METEOR and TER (0-1) of raw outputs[i] against raw refs[i]; `meteor`, `memo` may be shared."""
    memo = memo or Memo()
    check_pairs(refs, outputs)
    refs = [[normalize(r, task, reference=True) for r in group[:N_REFS]] for group in refs]
    outputs = [normalize(o, task, reference=False) for o in outputs]
    running = meteor or Meteor()  # its JVM loads the paraphrase table while BLEU and TER run
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            meteor_score = pool.submit(running.score, refs, outputs, memo.meteor)
            bleu = multi_bleu([group + [""] * (N_REFS - len(group)) for group in refs], outputs)
            ter_score = ter(refs, outputs, memo.ter)
            return {"BLEU": bleu, "METEOR": meteor_score.result(), "TER": ter_score}
    finally:
        if meteor is None:
            running.close()
