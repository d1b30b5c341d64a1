from pathlib import Path

from tunelab.reports.html import write_report


def _context(warning: str | None) -> dict:
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.5 + 0.1 * e, "train_macro_f1": 0.5 + 0.1 * e,
                "val_macro_f1": 0.8 - 0.05 * e, "lr": 1e-5} for e in (1, 2, 3)]
    split = {"accuracy": 0.9, "macro_f1": 0.88, "n": 20}
    per_class = {"a": {"precision": 1.0, "recall": 0.8, "f1": 0.889, "support": 10},
                 "b": {"precision": 0.83, "recall": 1.0, "f1": 0.909, "support": 10}}
    return {"name": "r", "spec": {"task": "text-classification", "model": {"base": "m", "method": "full"}},
            "spec_yaml": "task: text-classification", "labels": ["a", "b"], "metric": "macro_f1",
            "metrics": {"baseline": {"test": {"accuracy": 0.5, "macro_f1": 0.33, "n": 20}}, "fine_tuned": {"test": split}},
            "details": {"fine_tuned": {"test": {"per_class": per_class, "confusion_matrix": [[8, 2], [0, 10]]}},
                        "baseline": {"test": {"per_class": {"a": {"f1": 0.667}}}}},
            "history": history, "step_losses": [[i, 1.0 / i] for i in range(1, 10)], "baseline_method": "majority",
            "warning": warning, "findings": [], "version": "test"}


def test_report_sections_and_overfitting_warning(tmp_path: Path) -> None:
    write_report(tmp_path / "report.html", _context("validation loss rose for two epochs"))
    html = (tmp_path / "report.html").read_text()
    assert 'id="overfitting-warning"' in html and "validation loss rose for two epochs" in html
    assert html.count("data:image/png;base64,") == 2  # learning curves + confusion matrix
    assert "+0.5500" in html  # macro-F1 gain 0.88 - 0.33 on test
    assert ">0.889<" in html and ">0.667<" in html  # per-class F1, fine-tuned and baseline


def test_report_without_warning(tmp_path: Path) -> None:
    write_report(tmp_path / "report.html", _context(None))
    assert "overfitting-warning" not in (tmp_path / "report.html").read_text()


def test_data_report_draws_the_token_length_histogram(tmp_path: Path) -> None:
    from tunelab.data.doctor import Finding
    from tunelab.reports import data_report

    too_long = Finding("too-long", "warning", "3 text(s) are longer than max_length=8", 3, "raise data.max_length",
                       ["a.csv:2"], details={"max_length": 8, "histogram": {"edges": [1, 4, 8, 16], "counts": [5, 2, 3]}})
    report = data_report.build([too_long], {"train": 10}, [{"source": "a.csv", "kind": "csv", "sha256": "ab"}])
    data_report.write(report, tmp_path)
    html = (tmp_path / "data_report.html").read_text()
    assert 'alt="too-long histogram"' in html and "a.csv:2" in html
    assert report["summary"] == {"error": 0, "warning": 1, "info": 0}
    assert data_report.headline(report) == "train 10; 0 error(s), 1 warning(s), 0 note(s)"
