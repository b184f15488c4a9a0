import json

import pytest

from training.demo import DemoConfig, demo_run_config, run_demo
from training.trainer import TrainingInterrupted, train

SMALL = DemoConfig(train_images=8, val_images=2, steps=3)


def test_demo_writes_a_report_with_table_plot_and_examples(tmp_path):
    report = run_demo(tmp_path, SMALL)
    text = report.read_text()
    assert "| qgn | depth 0 |" in text and "| dense | depth 5 |" in text and "accuracy_vs_cost.png" in text
    assert "3 steps (this session)" in text and "load average" in text
    for name in ("accuracy_vs_cost.png", "example0.png", "example1.png", "eval.json"):
        assert (tmp_path / name).is_file(), name
    records = json.loads((tmp_path / "eval.json").read_text())
    assert [r["max_depth"] for r in records if r["model"] == "qgn" and r["threshold"] is None] == [0, 1, 2, 3, 4, 5]
    # A second call reuses the finished runs instead of training again, and says so.
    assert run_demo(tmp_path, SMALL) == report
    assert "3 steps (reused from an earlier session)" in report.read_text()


def test_an_interrupted_demo_is_resumed_not_reused(tmp_path):
    def stop_at_step_1(progress):
        if progress.step == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stopped:
        train(demo_run_config(SMALL, "qgn"), tmp_path / "run_qgn", on_step=stop_at_step_1)
    assert stopped.value.checkpoint == tmp_path / "run_qgn" / "last.pt" and stopped.value.step == 1
    text = run_demo(tmp_path, SMALL).read_text()
    assert "for 3 steps (resumed from step 1) for QGN" in text
