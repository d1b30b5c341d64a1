"""The quirks ../shared/datasets/INDEX.md lists are found by the doctor (skipped when the folder is absent).

Amazon-review duplicates and leakage are covered in test_doctor_dedup.py, the hymenoptera placeholder
image in test_doctor_images.py; this file covers the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.data import infer_labels
from tunelab.data.doctor import DoctorContext, run_checks
from tunelab.data.sources import DataError, read_source

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


@pytest.mark.skipif(not (SHARED / "legal_unfair_tos").is_dir(), reason="shared datasets absent")
def test_legal_unfair_tos_heavy_imbalance_is_reported() -> None:
    ds = read_source(str(SHARED / "legal_unfair_tos" / "unfair_tos_en.jsonl"), "text", "unfair")
    findings = {f.check: f for f in run_checks(DoctorContext({"train": ds}, infer_labels(ds)))}
    imbalance = findings["class-imbalance"]
    assert imbalance.details["counts"] == {"False": 17383 - 1374, "True": 1374}
    assert imbalance.details["ratio"] > 10


@pytest.mark.skipif(not (SHARED / "financial_phrasebank").is_dir(), reason="shared datasets absent")
def test_financial_phrasebank_latin1_raw_file_is_named_with_its_byte(tmp_path: Path) -> None:
    raw = SHARED / "financial_phrasebank" / "raw" / "Sentences_50Agree.txt"
    data = raw.read_bytes()
    as_csv = tmp_path / "fpb50.tsv"  # the raw file is sentence@label lines; give it a header as a reader would
    header = b"text\tlabel\n"
    as_csv.write_bytes(header + data.replace(b"@", b"\t"))
    with pytest.raises(DataError) as err:
        read_source(str(as_csv))
    first_bad = next(i for i, b in enumerate(data) if b >= 0x80)
    line = data.count(b"\n", 0, first_bad) + 2  # + the header line
    assert f"fpb50.tsv:{line}: byte {first_bad + len(header)}" in str(err.value)
    assert "not valid UTF-8" in str(err.value)
