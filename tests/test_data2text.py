"""data.py on WebNLG 2017 and DART against RECIPE-DATA2TEXT.md: counts, the authors' linearization and tokens.

    python -m pytest -q tests/test_data2text.py
"""
from collections import Counter

import pytest
import tiktoken

from conftest import E2E_DIR, SHARED
from data import example_ids, prompt_ids, read_entries, read_pairs
from files.datasets import DataError, dataset_of
from model import IGNORE

WEBNLG = SHARED / "data" / "webnlg"
DART = SHARED / "data" / "dart"
DART_DEV_XML = DART / "dart-v1.1.1-full-dev.xml"


@pytest.fixture(scope="module")
def webnlg():
    """Each split read once: the train XML is 52 files, the test one 2 MB."""
    return {"train": read_pairs(WEBNLG, "train"), "train_entries": read_entries(WEBNLG, "train"),
            "dev": read_pairs(WEBNLG, "dev"), "test": read_entries(WEBNLG, "test")}


@pytest.fixture(scope="module")
def dart():
    return {"dev": read_entries(DART, "dev"), "dev_pairs": read_pairs(DART, "dev"),
            "dev_xml": read_entries(DART_DEV_XML, "dev"), "test": read_entries(DART, "test")}


def test_dataset_of_reads_the_folder():
    assert dataset_of(WEBNLG) == "webnlg" and dataset_of(WEBNLG / "test" / "testdata_with_lex.xml") == "webnlg"
    assert dataset_of(DART) == "dart" and dataset_of(DART_DEV_XML) == "dart"
    assert dataset_of(E2E_DIR) == "e2e" and dataset_of(E2E_DIR / "devset.csv") == "e2e"


def test_dataset_of_jsonl(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"source": "a", "target": "b"}\n')
    assert dataset_of(tmp_path) == "jsonl" and dataset_of(tmp_path / "train.jsonl") == "jsonl"
    assert dataset_of(tmp_path / "nothing-here") == "e2e"  # its reader then names the files it expected


def test_webnlg_counts(webnlg):
    # RECIPE-DATA2TEXT §2: the "good" lexicalisations only (77 "toFix" of 18,102 dropped); dev 2,258 of 2,268.
    assert len(webnlg["train"]) == 18025 and len(webnlg["dev"]) == 2258
    train_entries = webnlg["train_entries"]
    assert len(train_entries) == 6940 and sum(len(e.refs) for e in train_entries) == 18102
    test = webnlg["test"]
    assert len(test) == 1862 and sum(len(e.refs) for e in test) == 4928
    assert Counter(e.group for e in test) == {"seen": 971, "unseen": 891}
    assert {e.group for e in train_entries} == {"seen"}


def test_webnlg_linearization_is_the_authors(webnlg):
    # A " | " before every triple, the first included; strings verbatim (underscores, camelCase, quotes).
    aarhus = " | Aarhus : leaderName : Jacob_Bundsgaard"
    assert webnlg["dev"][0] == (aarhus, "The leader of Aarhus is Jacob Bundsgaard.")
    two = aarhus + " | Aarhus_Airport : cityServed : Aarhus"
    assert (two, "Aarhus airport serves the city of Aarhus who's leader is Jacob Bundsgaard.") in webnlg["train"]
    first = webnlg["test"][0]  # Id1, in document order, with all its references in file order
    assert first.source == " | Abilene_Regional_Airport : cityServed : Abilene,_Texas" and first.group == "seen"
    assert first.refs == ["Abilene, Texas is served by the Abilene regional airport.",
                          "Abilene Regional Airport serves the city of Abilene in Texas."]
    assert webnlg["test"][1].source == (' | Adolfo_Suárez_Madrid–Barajas_Airport : location : '
                                        '"Madrid, Paracuellos de Jarama, San Sebastián de los Reyes and Alcobendas"')


def test_webnlg_example_ids_are_the_authors():
    # RECIPE-DATA2TEXT §2: the authors' full training string, two spaces at its start; their tokenizer keeps
    # the spaces beside <|endoftext|> (RECIPE.md §1), so the ids are these.
    tok = tiktoken.get_encoding("gpt2")
    authors = ("  | Aarhus : leaderName : Jacob_Bundsgaard <|endoftext|> "
               "The leader of Aarhus is Jacob Bundsgaard. <|endoftext|>")
    ids = [220, 930, 317, 283, 7537, 1058, 3554, 5376, 1058, 12806, 62, 33, 917, 82, 36232, 220, 50256,
           383, 3554, 286, 317, 283, 7537, 318, 12806, 13319, 82, 36232, 13, 220, 50256]
    assert tok.encode(authors, allowed_special={"<|endoftext|>"}) == ids
    source, target = read_pairs(WEBNLG, "dev")[0]
    idx, targets = example_ids(tok, source, target)
    assert idx == ids[:-1] and prompt_ids(tok, source) == ids[:17]
    assert targets == [IGNORE] * 16 + ids[17:]  # the loss starts at " The", after the separator


def test_dart_counts_and_xml_equals_json(dart):
    assert len(dart["dev"]) == 2768 and len(dart["dev_pairs"]) == 6980
    assert sum(len(e.refs) for e in dart["dev"]) == 6980 and {e.group for e in dart["dev"]} == {""}
    assert dart["dev_xml"] == dart["dev"]
    assert len(dart["test"]) == 5097 and sum(len(e.refs) for e in dart["test"]) == 12552


def test_dart_linearization_is_the_authors(dart):
    # RECIPE-DATA2TEXT §2: relations lower-cased, " | " between triples only, subject and object verbatim.
    assert dart["dev"][0].source == ("Mars Hill College : joined : 1973 | "
                                     "Mars Hill College : location : Mars Hill, North Carolina")
    assert dart["test"][0].source == ("Hawaii Five-O : notes : Episode: The Flight of the Jewels | "
                                      "[TABLECONTEXT] : [title] : Jeff Daniels | "
                                      "[TABLECONTEXT] : title : Hawaii Five-O")
    tok = tiktoken.get_encoding("gpt2")
    assert tok.decode(prompt_ids(tok, dart["dev"][0].source)).startswith(" Mars Hill College : joined")


def test_dart_empty_annotation_is_a_reference_not_an_example(dart):
    # Test entry Id116's second annotation is empty: the official references keep its place; it trains nothing.
    assert dart["test"][115].refs == ["reserved (previously G721) has 1 channel and 8000 Hz clock rate", ""]
    assert len(read_pairs(DART, "test")) == 12551


XML_ENTRY = """<benchmark><entries><entry category="Astronaut" eid="Id7" size="1"><modifiedtripleset>
<mtriple>{triple}</mtriple></modifiedtripleset>{lex}</entry></entries></benchmark>"""
GOOD_TRIPLE, GOOD_LEX = "Alan_Bean | occupation | Test_pilot", '<lex comment="good" lid="Id1">Alan Bean flew.</lex>'


@pytest.mark.parametrize("text,message", [
    (XML_ENTRY.format(triple=GOOD_TRIPLE, lex=GOOD_LEX)[:-20], r"with_lex.xml: not readable as XML \(.*line"),
    (XML_ENTRY.format(triple="Alan_Bean | occupation", lex=GOOD_LEX), "entry Id7: triple .* has 2 parts"),
    (XML_ENTRY.format(triple=GOOD_TRIPLE, lex=""), "entry Id7: no references"),
])
def test_bad_webnlg_names_file_and_entry(tmp_path, text, message):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "testdata_with_lex.xml").write_text(text)
    with pytest.raises(DataError, match=message):
        read_entries(tmp_path, "test")


def test_good_webnlg_file_reads(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "testdata_with_lex.xml").write_text(XML_ENTRY.format(triple=GOOD_TRIPLE, lex=GOOD_LEX))
    assert read_entries(tmp_path, "test") == [(" | Alan_Bean : occupation : Test_pilot", ["Alan Bean flew."], "seen")]


@pytest.mark.parametrize("text,message", [
    ('[{"tripleset": [["a", "B", "c"]], "annotations": [{"text": "x"}]}, {"tripleset": [["a", "B", "c"]]}]',
     r"dart-v1.1.1-full-dev.json: entry 2: .*'annotations'"),
    ('[{"tripleset": [["a", "B", "c"]], "annotations": [{"source": "e2e"}]}]', r"entry 1: .*'text'"),
    ('[{"tripleset": [["a", "B"]], "annotations": [{"text": "x"}]}]', r"entry 1: triple \['a', 'B'\] has 2 parts"),
    ('[{"tripleset": [["a", "B", "c"]], "annotations": []}]', "entry 1: no references"),
    ('[{"tripleset": [', "dart-v1.1.1-full-dev.json: not readable as JSON"),
])
def test_bad_dart_names_file_and_entry(tmp_path, text, message):
    (tmp_path / "dart-v1.1.1-full-dev.json").write_text(text)
    with pytest.raises(DataError, match=message):
        read_entries(tmp_path, "dev")


def test_missing_split_names_the_expected_files(tmp_path):
    (tmp_path / "dart-v1.1.1-full-dev.json").write_text('[{"tripleset": [["a", "B", "c"]], '
                                                        '"annotations": [{"text": "x"}]}]')
    assert read_pairs(tmp_path, "dev") == [("a : b : c", "x")]
    with pytest.raises(DataError, match="no dart file for split 'train'.*dart-v1.1.1-full-train.json"):
        read_pairs(tmp_path, "train")


def test_split_naming_a_file_is_read_by_its_own_format(tmp_path):
    (tmp_path / "mine.jsonl").write_text('{"source": "a", "target": "b"}\n')
    assert read_pairs(WEBNLG, str(tmp_path / "mine.jsonl")) == [("a", "b")]  # train.py: --train-split PATH
    assert read_pairs(tmp_path, "mine.jsonl") == [("a", "b")]


@pytest.mark.parametrize("root, found", [(E2E_DIR, "dev, test"), (WEBNLG, "dev, test, train"), (DART, "dev, test"),
                                         (None, "train, valid")])
def test_split_typo_lists_the_splits_there(root, found, tmp_path):
    if root is None:  # a JSONL folder: its files' names are its splits
        root = tmp_path
        for name in ("train.jsonl", "valid.jsonl"):
            (root / name).write_text('{"source": "a", "target": "b"}\n')
    with pytest.raises(DataError, match=rf"split 'tset' \(expected .*\); splits here: {found}\.$"):
        read_pairs(root, "tset")
