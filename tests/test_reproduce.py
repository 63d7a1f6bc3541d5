"""The offline smoke of scripts/reproduce.py, shortened: train -> beam -> eval for both tuners, table written."""
import json
import sys

import pytest

from conftest import ROOT, E2E_DIR

sys.path.insert(0, str(ROOT / "scripts"))
import pipeline  # noqa: E402
import reproduce  # noqa: E402


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path):
    reproduce.main(["smoke", "--steps", "3", "--limit", "4", "--data-dir", str(E2E_DIR),
                    "--work", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    rows = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert [r["tuner"] for r in rows] == ["prefix", "fine"]
    for r in rows:
        assert set(pipeline.METRICS) <= set(r) and all(r[m] >= 0 for m in pipeline.METRICS)
        assert len((tmp_path / "runs" / r["run"] / "test.txt").read_text().splitlines()) == 4
    assert rows[0]["stored_frac"] < rows[0]["trained_frac"] < rows[1]["trained_frac"] == 1.0
    assert "SMOKE RUN ONLY" in (tmp_path / "results" / "smoke.md").read_text()


@pytest.mark.slow
def test_paper_mode_on_a_small_train_file(tmp_path):
    """`paper` with the recipe's own settings (5 epochs, batch 10), on 30 training pairs and 2 test MRs."""
    data = tmp_path / "e2e"
    data.mkdir()
    lines = (E2E_DIR / "src1_valid.txt").read_text().splitlines(keepends=True)
    (data / "src1_train.txt").write_text("".join(lines[:30]))
    (data / "src1_valid.txt").write_text("".join(lines[30:40]))
    (data / "src1_test.txt").write_text((E2E_DIR / "src1_test.txt").read_text())
    reproduce.main(["paper", "--model", "random:tiny", "--data-dir", str(data), "--limit", "2",
                    "--work", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    rows = json.loads((tmp_path / "results" / "e2e.json").read_text())
    assert [r["run"] for r in rows] == ["prefix-seed101", "fine-seed101"]
    args = json.loads((tmp_path / "runs" / "prefix-seed101" / "args.json").read_text())
    assert (args["lr"], args["epochs"], args["batch_size"], args["prefix_len"]) == (8e-5, 5, 10, 5)
    assert abs(rows[0]["s_per_epoch"] * 5 - rows[0]["train_s"]) < 1e-6  # 5 epochs of 3 steps each
    assert "70.3" in (tmp_path / "results" / "e2e.md").read_text()  # the paper's numbers beside ours
