import json

from training.demo import DemoConfig, run_demo


def test_demo_writes_a_report_with_table_plot_and_overlays(tmp_path):
    report = run_demo(tmp_path, DemoConfig(train_images=8, val_images=2, steps=3))
    text = report.read_text()
    assert "| qgn | depth 0 |" in text and "| dense | depth 5 |" in text and "accuracy_vs_cost.png" in text
    for name in ("accuracy_vs_cost.png", "example0_overlay_full.png", "example1_labels.png", "eval.json"):
        assert (tmp_path / name).is_file(), name
    records = json.loads((tmp_path / "eval.json").read_text())
    assert [r["max_depth"] for r in records if r["model"] == "qgn" and r["threshold"] is None] == [0, 1, 2, 3, 4, 5]
    # A second call reuses the finished runs instead of training again.
    assert run_demo(tmp_path, DemoConfig(train_images=8, val_images=2, steps=3)) == report
