"""GPT-2's byte-level BPE as a tiktoken Encoding, read from a checkpoint's own vocab.json + merges.txt.

A run folder carries these two files beside its weights, so it decodes offline with exactly the tokenizer it was
trained with; without them tiktoken's cached "gpt2" (the same bytes under other names) is used.
    tok = load_tokenizer("out/")                    # tok.encode(" name : Alimentum <|endoftext|>", allowed_special=...)
    write_tokenizer_files(base_folder, "out/")       # copy them beside a trained model
"""
from __future__ import annotations

from pathlib import Path

import tiktoken
import tiktoken.load

from files.checkpoint import CheckpointError
from files.run import atomic_write, read_capped, read_json

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"  # tiktoken's source, name and sha256:
GPT2_FILES = {"vocab.json": ("encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
              "merges.txt": ("vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, in which vocab.json spells its tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def load_tokenizer(folder: str | Path | None = None) -> tiktoken.Encoding:
    """From the checkpoint's vocab.json + merges.txt, else tiktoken's gpt2 (offline: TIKTOKEN_CACHE_DIR)."""
    vocab, merges = (Path(folder) / "vocab.json", Path(folder) / "merges.txt") if folder else (None, None)
    if vocab is None or not (vocab.is_file() and merges.is_file()):
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline with an empty tiktoken cache: requests' errors, or a bad cache
            raise CheckpointError(f"{folder or 'no folder'}: no vocab.json + merges.txt, and tiktoken could not get "
                                  f"'gpt2' ({type(e).__name__}). Put GPT-2's vocab.json and merges.txt in the "
                                  f"checkpoint folder, or set TIKTOKEN_CACHE_DIR to a cache that has them.") from None
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    try:
        ranks = {bytes(byte_of[ch] for ch in tok): i for tok, i in read_json(vocab).items() if tok != "<|endoftext|>"}
        # tiktoken merges by rank alone; GPT-2's ids are its merge order, which merges.txt must confirm.
        merge_lines = [m for m in read_capped(merges, 1 << 26).decode().split("\n")[1:] if m.strip()]
        by_token = {bytes(byte_of[ch] for ch in m.strip().replace(" ", "")): i for i, m in enumerate(merge_lines)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{vocab}: not GPT-2's vocab.json/merges.txt ({type(e).__name__}: {e}).") from None
    # What tiktoken needs of them, or it raises a TypeError or panics: whole-number ids, one per token, every
    # single byte among the tokens, and the merges in id order.
    ids = list(ranks.values())
    if not all(type(i) is int for i in ids) or len(set(ids)) != len(ids) or any(bytes([b]) not in ranks
                                                                               for b in range(256)):
        raise CheckpointError(f"{vocab}: not GPT-2's vocab.json (expected one whole-number id per token, every "
                              f"byte a token). Copy GPT-2's vocab.json and merges.txt beside the weights.")
    if len(by_token) != len(ranks) - 256 or any(ranks.get(tok) != 256 + i for tok, i in by_token.items()):
        raise CheckpointError(f"{merges}: merge order disagrees with {vocab}; not GPT-2's byte-level BPE files.")
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


def write_tokenizer_files(src: Path | None, dst: Path) -> bool:
    """vocab.json + merges.txt beside a model, from the base or else tiktoken's cache; False when neither has them."""
    for name, (remote, sha) in GPT2_FILES.items():
        have = src is not None and (src / name).is_file()
        try:
            data = (src / name).read_bytes() if have else tiktoken.load.read_file_cached(GPT2_URL + remote, sha)
        except Exception:  # offline without a cache: not fatal here, the caller says what is missing
            return False
        atomic_write(dst / name, lambda tmp: tmp.write_bytes(data))
    return True
