"""A mistyped key or a value of the wrong type is one line on standard error naming the closest valid key, with exit
status 2; the usage is printed only by --help. Expected suggestions are the keys a user meant, written out here."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_meta.cli import main

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(("typo", "expected"), [
    ("--data.inner_stepz=5", "--data.inner_stepz=5: no such key; did you mean --data.inner_steps?"),
    ("--trainer.max_stepz=3", "--trainer.max_stepz=3: no such key; did you mean --trainer.max_steps?"),
    ("--model.init_args.chanels=8", "--model.chanels=8: no such key; did you mean --model.channels?"),
    ("--trainer.callbacks.every_n_train_step=2",
     "--trainer.callbacks.every_n_train_step=2: no such key; did you mean --trainer.callbacks.every_n_train_steps?"),
    ("--data.inner_steps=abc", "--data.inner_steps=abc: Expected a <class 'int'>. Got value: abc"),
])  # fmt: skip
def test_a_parse_error_is_one_line_with_the_closest_key_and_no_usage(typo, expected, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("LIGHTNING_META_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "recipes/omniglot/leap.yaml", typo])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.splitlines() == [f"lightning-meta: {expected} (lightning-meta fit --help lists every key)"]


def test_help_still_prints_the_usage(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
