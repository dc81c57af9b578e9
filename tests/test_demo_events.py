"""The embedded demo (``make run``) holds enough labelled events that its champion choice is not noise.

The validation split must reach ``evaluate.min_events`` (below it no metric picks the champion: the
label-free path), and test must hold enough events for its figures to mean something (issue 21: >= 40
each). Counted as the evaluate stage counts them: the windows stage's own splits, segments by the
published AIOps rule (:func:`pipeline.eval.selection.label_events`).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.data import prep, synthetic
from pipeline.eval.selection import label_events
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]


def test_default_demo_has_enough_labelled_events_in_validation_and_test():
    params = load_params(REPO / "params.yaml")
    splits, _, _ = prep.build(synthetic.generate(params.synthetic), None, params.windows)
    events = {split: label_events(frame) for split, frame in splits.items()}
    assert events["val"] >= max(40, params.evaluate.min_events), events
    assert events["test"] >= 40, events
    assert events == {"train": events["train"], "val": 69, "test": 53}, events  # the figures params.yaml quotes
