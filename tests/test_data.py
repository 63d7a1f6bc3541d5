"""data.py against the recipe: the authors' token template (RECIPE.md §1), the E2E CSVs and the paper code's files.

    python -m pytest -q tests/test_data.py
"""
import csv
import json

import pytest
import tiktoken

from conftest import E2E_DIR
from data import collate, epoch_batches, example_ids, group_refs, prompt_ids, read_entries, read_pairs, subset
from files.datasets import DataError, linearize
from model import IGNORE

SOURCE = "name : Alimentum | area : city centre"


@pytest.fixture(scope="module")
def tok():
    return tiktoken.get_encoding("gpt2")  # GPT-2's BPE, what load_tokenizer gives without a folder


def test_prompt_and_example_exact_ids(tok):
    # " name : Alimentum | area : city centre " + EOS: the lone space (220) before EOS, as RECIPE.md §1 says.
    prompt = [1438, 1058, 978, 3681, 388, 930, 1989, 1058, 1748, 7372, 220, 50256]
    assert prompt_ids(tok, SOURCE) == prompt
    idx, targets = example_ids(tok, SOURCE, "A pub .")
    ids = prompt + [317, 2240, 764, 220, 50256]  # " A", " pub", " .", " ", EOS
    assert idx == ids[:-1]
    assert targets == [IGNORE] * (len(prompt) - 1) + ids[len(prompt):]  # the loss starts at the first target token


def test_linearize_renames_keys_in_csv_order():
    mr = "name[The Eagle], eatType[coffee shop], priceRange[£20-25], customer rating[3 out of 5], familyFriendly[yes]"
    assert linearize(mr) == ("name : The Eagle | Type : coffee shop | price : £20-25 | customer rating : 3 out of 5 "
                             "| family friendly : yes")


@pytest.mark.parametrize("split,csv_name,unique", [("dev", "devset.csv", 547), ("test", "testset_w_refs.csv", 630)])
def test_group_refs_follow_csv_first_appearance(split, csv_name, unique):
    with open(E2E_DIR / csv_name, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    first_seen = list(dict.fromkeys(linearize(r["mr"]) for r in rows))
    from_csv = group_refs(read_pairs(E2E_DIR / csv_name, split))
    assert [s for s, _ in from_csv] == first_seen and len(first_seen) == unique
    assert sum(len(refs) for _, refs in from_csv) == len(rows)
    # In a folder holding both, the paper code's pre-tokenized src1 file wins; it groups the same way.
    from_src1 = group_refs(read_pairs(E2E_DIR, split))
    assert [len(r) for _, r in from_src1] == [len(r) for _, r in from_csv]
    assert from_src1[0][1][0].endswith(" .")


def test_jsonl_split_in_folder(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"source": " a b ", "target": "c"}) + "\n\n")
    assert read_pairs(tmp_path, "train") == [("a b", "c")]
    assert read_entries(tmp_path, "train") == [("a b", ["c"], "")]


def test_lines_end_at_newline_only(tmp_path):
    # U+2028, NEL and a form feed are characters of a line (str.splitlines would cut there); so is a lone \r.
    target = "one\u2028two\x85three\x0cfour\rfive"
    (tmp_path / "x.jsonl").write_bytes((json.dumps({"source": "s", "target": target}, ensure_ascii=False)
                                        + "\r\n").encode())
    assert read_pairs(tmp_path / "x.jsonl", "dev") == [("s", target)]
    (tmp_path / "src1_valid.txt").write_bytes("a\x0cb||c\u2028d \r\ne||f\n".encode())
    assert read_pairs(tmp_path, "dev") == [("a\x0cb", "c\u2028d"), ("e", "f")]


@pytest.mark.parametrize("name,text,message", [
    ("bad.csv", "mr,text\nname[A],x\n", "bad.csv:1: header"),
    ("bad.csv", "mr,ref\nname[A],x\n\"name[B]\"\n", "bad.csv:3: 1 columns"),
    ("bad.csv", "mr,ref\nname[A],x\n,y\n", "bad.csv:3: empty MR"),
    ("bad.csv", "mr,ref\nname[A],\n", "bad.csv:2: empty target"),
    ("bad.csv", "mr,ref\n\"name[A], area city\",x\n", "bad.csv:2: MR 'name[A], area city' does not parse"),
    ("src1_valid.txt", "a||b\nno separator\n", "src1_valid.txt:2: expected 'source||target'"),
    ("src1_valid.txt", "a||b\n  ||b\n", "src1_valid.txt:2: empty source"),
    ("x.jsonl", '{"source": "a", "target": "b"}\n{"source": "a"\n', "x.jsonl:2: not JSON"),
    ("x.jsonl", '{"source": "a", "tgt": "b"}\n', "x.jsonl:1: expected"),
    ("x.jsonl", "\n", "no examples"),
])
def test_bad_rows_name_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("|", r"\|")):
        read_pairs(tmp_path / name, "dev")


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        read_pairs(tmp_path, "train")
    assert "github.com/tuetschek/e2e-dataset" in str(e.value) and "src1_train.txt or trainset.csv" in str(e.value)


def test_subset_batches_and_padding():
    pairs = [(str(i), str(i)) for i in range(100)]
    low = subset(pairs, 10, seed=3)
    assert len(low) == 10 and low == subset(pairs, 10, seed=3) and low != subset(pairs, 10, seed=4)
    lengths = [i % 17 + 1 for i in range(103)]
    for bucket in (False, True):
        batches = epoch_batches(lengths, 10, seed=5, bucket=bucket)
        assert sorted(i for b in batches for i in b) == list(range(103)) and len(batches) == 11
        assert batches == epoch_batches(lengths, 10, seed=5, bucket=bucket)
    idx, targets = collate([([1, 2, 3], [IGNORE, 3, 4]), ([5], [6])], pad_id=50256)
    assert idx.tolist() == [[1, 2, 3], [5, 50256, 50256]]
    assert targets.tolist() == [[IGNORE, 3, 4], [6, IGNORE, IGNORE]]
