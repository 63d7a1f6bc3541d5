"""The two steps of the official E2E scorer that run Java: PTB tokenization and METEOR 1.5.

Both use the jars that ship inside the pycocoevalcap package (pip install -r requirements-eval.txt), called
the way e2e-metrics' copy of coco-caption calls them. The tokenizer is Stanford CoreNLP 3.4.1's JFlex
lexer; its rules and Unicode tables are run, not re-implemented, so every input tokenizes as the official
script's does. METEOR starts first: loading its paraphrase table is the slowest step of all.
"""
import importlib.util
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from .files import EvalError

# coco-caption's PTBTokenizer drops these tokens after tokenizing.
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def java_jars() -> tuple[str, Path]:
    """The java executable and pycocoevalcap's folder, or an error saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise EvalError("METEOR 1.5 and the PTB tokenizer run Java, and no `java` is on PATH. "
                        "Install a Java runtime (8 or newer), e.g. `apt-get install default-jre-headless`.")
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("pycocoevalcap (which holds the METEOR and tokenizer jars) is not installed. "
                        "Run `pip install -r requirements-eval.txt`.")
    return java, Path(spec.submodule_search_locations[0])


def ptb_tokenize(streams: list[list[str]]) -> list[list[str]]:
    """Tokenize each list of sentences in its own JVM, all at once, as `PTBTokenizer -preserveLines -lowerCase`.

    Each list is one file, as coco-caption writes the references and the outputs: the lexer looks
    across line ends (an abbreviation at the end of a line before a capital), so a list is one stream.
    """
    java, root = java_jars()
    jar = root / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    with tempfile.TemporaryDirectory(prefix="e2e-eval-") as tmp:
        procs = []
        for i, sentences in enumerate(streams):
            src, out = Path(tmp) / f"in{i}.txt", Path(tmp) / f"out{i}.txt"
            src.write_text("\n".join(s.replace("\n", " ") for s in sentences), encoding="utf-8")
            cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
                   str(src)]
            with open(out, "wb") as fh:
                procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL), out))
        results = []
        for (proc, out), sentences in zip(procs, streams):
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise EvalError(f"the PTB tokenizer ({jar}) failed: {err.decode(errors='replace')[-500:]}")
            lines = out.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
            results.append([" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
                            for line in lines[:len(sentences)]])
    return results


class Meteor:
    """A running `meteor-1.5.jar - - -stdio -l en -norm`, as coco-caption's Meteor wrapper runs it."""

    def __init__(self) -> None:
        java, root = java_jars()
        cmd = [java, "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
        self.proc = subprocess.Popen(cmd, cwd=root / "meteor", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.stats: dict[str, str] = {}  # SCORE line -> its statistics: a segment scored again costs nothing

    def score(self, refs: list[list[str]], outputs: list[str]) -> float:
        """Corpus METEOR: the jar's EVAL over every MR's SCORE statistics (not a mean of sentence scores)."""
        lines = [" ||| ".join(("SCORE", " ||| ".join(group), out.replace("|||", "").replace("  ", " ")))
                 for group, out in zip(refs, outputs)]
        new = [line for line in dict.fromkeys(lines) if line not in self.stats]
        # All SCORE lines go in at once from a thread (coco-caption waits for each answer); the jar
        # answers in order, so reading while writing avoids both round trips and a full-pipe deadlock.
        writer = threading.Thread(target=self._write, args=("".join(line + "\n" for line in new),))
        writer.start()
        self.stats.update((line, self._readline()) for line in new)
        writer.join()
        self._write("EVAL" + "".join(" ||| " + self.stats[line] for line in lines) + "\n")
        for _ in lines:  # one score per MR comes first, then the corpus score
            self._readline()
        return float(self._readline())

    def _write(self, text: str) -> None:
        self.proc.stdin.write(text.encode("utf-8"))
        self.proc.stdin.flush()

    def _readline(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise EvalError("METEOR (meteor-1.5.jar) stopped without an answer. Does `java -Xmx2G -version` "
                            "run here? METEOR needs 2 GB of heap for its paraphrase table.")
        return line.decode("utf-8").strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()

