"""The offline smoke of scripts/reproduce.py, shortened: train -> beam -> eval for both tuners, table written."""
import json
import sys

from conftest import ROOT, E2E_DIR

sys.path.insert(0, str(ROOT / "scripts"))
import reproduce  # noqa: E402


def test_smoke_pipeline_end_to_end(tmp_path):
    reproduce.main(["smoke", "--steps", "3", "--limit", "4", "--data-dir", str(E2E_DIR),
                    "--work", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    rows = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert [r["tuner"] for r in rows] == ["prefix", "fine"]
    for r in rows:
        assert set(reproduce.METRICS) <= set(r) and all(r[m] >= 0 for m in reproduce.METRICS)
        assert len((tmp_path / "runs" / r["run"] / "test.txt").read_text().splitlines()) == 4
    assert rows[0]["stored_frac"] < rows[0]["trained_frac"] < rows[1]["trained_frac"] == 1.0
    assert "SMOKE RUN ONLY" in (tmp_path / "results" / "smoke.md").read_text()
