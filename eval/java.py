"""The two steps of the official E2E scorer that run Java: PTB tokenization and METEOR 1.5.

Both run the jars that ship inside the pycocoevalcap package (pip install -r requirements-eval.txt), called the
way e2e-metrics' copy of coco-caption calls them. The tokenizer is Stanford CoreNLP 3.4.1's JFlex lexer; its rules
and Unicode tables are run, not re-implemented, so every input tokenizes as the official script's does.
"""
import shutil
import subprocess
import sys
from pathlib import Path

from pycocoevalcap.meteor import meteor as coco_meteor
from pycocoevalcap.tokenizer import ptbtokenizer
from tqdm import tqdm

from .files import EvalError


def require_java() -> None:
    """An error saying what to install if no `java` is on PATH."""
    if shutil.which("java") is None:
        raise EvalError("METEOR 1.5 and the PTB tokenizer run Java, and no `java` is on PATH. "
                        "Install a Java runtime (8 or newer), e.g. `apt-get install default-jre-headless`.")


def ptb_tokenize(groups: list[list[str]]) -> list[list[str]]:
    """Groups of sentences as coco-caption's PTBTokenizer gives them: `-preserveLines -lowerCase`, punctuation dropped.
    All groups go in one stream, as coco-caption writes the references and, separately, the outputs: the lexer
    looks across line ends (an abbreviation at the end of a line before a capital)."""
    require_java()
    jar = Path(ptbtokenizer.__file__).parent / "stanford-corenlp-3.4.1.jar"
    cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    text = "\n".join(s.replace("\n", " ") for group in groups for s in group)
    proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True)
    lines = proc.stdout.decode("utf-8").split("\n")
    if proc.returncode != 0 or len(lines) < sum(map(len, groups)):
        raise EvalError(f"the PTB tokenizer ({jar}) failed: {proc.stderr.decode(errors='replace')[-500:]}")
    tokens = iter(" ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS) for line in lines)
    return [[next(tokens) for _ in group] for group in groups]


class Meteor:
    """A running `meteor-1.5.jar - - -stdio -l en -norm`, as coco-caption's Meteor wrapper runs it."""

    def __init__(self) -> None:
        require_java()
        cmd = ["java", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
        self.proc = subprocess.Popen(cmd, cwd=Path(coco_meteor.__file__).parent, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def score(self, refs: list[list[str]], outputs: list[str], memo: dict[str, str] | None = None) -> float:
        """Corpus METEOR: the jar's EVAL over every MR's SCORE statistics (not a mean of sentence scores); `memo`
        (SCORE line -> its statistics) is read and filled, so a call scoring several pairs asks once per entry."""
        memo = {} if memo is None else memo
        lines = [" ||| ".join(("SCORE", *group, out.replace("|||", "").replace("  ", " ")))
                 for group, out in zip(refs, outputs)]
        # The slowest metric, one MR at a time: its bar (a terminal only) is the scoring's progress and ETA.
        bar = tqdm(lines, unit="MR METEOR", disable=not sys.stderr.isatty(), file=sys.stderr)
        stats = [memo.get(line) or self._ask(line) for line in bar]
        memo.update(zip(lines, stats))
        return float(self._ask("EVAL ||| " + " ||| ".join(stats), answers=len(stats) + 1))  # per MR, then all

    def _ask(self, line: str, answers: int = 1) -> str:
        """Send one line to the jar and return the last of the lines it answers."""
        try:
            self.proc.stdin.write((line + "\n").encode("utf-8"))
            self.proc.stdin.flush()
            replies = [self.proc.stdout.readline() for _ in range(answers)]
        except BrokenPipeError:
            replies = [b""]
        if not replies[-1]:
            raise EvalError("METEOR (meteor-1.5.jar) stopped without an answer. Does `java -Xmx2G -version` "
                            "run here? METEOR needs 2 GB of heap for its paraphrase table.")
        return replies[-1].decode("utf-8").strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()
