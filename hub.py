"""Checkpoints by name from the Hugging Face hub (gpt2, gpt2-medium, hf:owner/name), for checkpoint.resolve.

checkpoint.py imports this file only for a name that is not on disk, so huggingface_hub stays optional and a
local run never touches the network. Only the files this project reads are downloaded, never a pickle.
    folder = download("gpt2-medium")    # the hub cache's folder holding config.json + model.safetensors
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from checkpoint import CheckpointError

HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt"]


def download(src: str | Path) -> Path:
    """A hub name -> the local folder holding its config.json. Only a bare name (`gpt2-medium`) or `hf:owner/name`
    goes to the hub: a path with a separator, or a file name (.safetensors, .json), is local, so a typo there is
    "no such folder" and never sends a local path name over the network."""
    path, name = Path(src), str(src)
    if name.startswith("hf:"):
        name = name[3:]
    elif "/" in name or os.sep in name or not re.fullmatch(r"[\w.-]+", name) or path.suffix in (".safetensors",
                                                                                                 ".json"):
        raise CheckpointError(f"{src}: no such folder (neither a folder, a file nor a hub name). A path with a "
                              f"separator is read as local; for a hub repository write hf:owner/name.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{src}: not a local folder or file, and huggingface_hub is not installed to fetch "
                              f"it from the hub. `pip install huggingface_hub`, or pass a local folder.") from None
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated: all end the same way for the user
        if "NotFound" in type(e).__name__:  # huggingface_hub's RepositoryNotFoundError: a typo, most likely
            raise CheckpointError(f"{src}: not found on the hub, and no such local folder. Check the spelling "
                                  f"(gpt2, gpt2-medium, hf:owner/name) or pass a local folder.") from None
        raise CheckpointError(f"{src}: not a local folder or file, and the hub could not give it ({type(e).__name__}: "
                              f"{e}). Check the name and your connection, or download it and pass the folder.") from None
