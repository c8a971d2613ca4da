"""The attention work folder's one reader per file (``training.attention_work``), without TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.vocabulary import Vocabulary
from training import attention_work as work


def _state(folder: Path, **state: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps(state))


def test_the_vocabulary_and_its_length_are_read_as_written(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["a dog runs", "a dog sits", "two cats"], min_count=1)
    assert not work.has_vocabulary(str(tmp_path))
    work.write_vocabulary(str(tmp_path), vocab, 12)
    assert work.has_vocabulary(str(tmp_path))
    read, max_length = work.read_vocabulary(str(tmp_path))
    assert read.tokens == vocab.tokens and max_length == 12
    assert not [p.name for p in tmp_path.iterdir() if p.name != work.VOCABULARY_FILE]  # no temp file left


def test_a_missing_file_is_named_instead_of_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"vocabulary\.json is missing"):
        work.read_vocabulary(str(tmp_path / "never-trained"))


def test_checkpoints_name_their_weights_and_epochs(tmp_path: Path) -> None:
    member = tmp_path / "member-1"
    _state(member, epoch=7, best_epoch=4)
    (member / work.SELECTION).write_text(json.dumps({"metric": "cider_d", "epoch": 5, "score": 0.4}))
    _state(member / "scst-aaa", done=True, best_epoch=2)
    for name in ("best.weights.h5", "last.weights.h5", work.SELECTED):
        (member / name).write_bytes(b"w")
    (member / "scst-aaa" / "best.weights.h5").write_bytes(b"w")

    epochs = {c: work.checkpoint_epoch(str(tmp_path), c) for c in work.CHECKPOINTS}
    assert epochs == {"best": 4, "last": 7, "selected": 5, "scst": 2}
    assert work.checkpoint_file(str(tmp_path), "scst") == str(member / "scst-aaa" / "best.weights.h5")
    assert work.checkpoint_file(str(tmp_path), "last") == str(member / "last.weights.h5")

    (member / work.SELECTED).unlink()
    with pytest.raises(SystemExit, match="checkpoint selected"):
        work.checkpoint_file(str(tmp_path), "selected")


def test_several_scst_runs_must_be_named_and_a_wrong_name_is_refused(tmp_path: Path) -> None:
    member = tmp_path / "member-1"
    with pytest.raises(SystemExit, match="holds 0 SCST runs"):
        work.scst_folder(str(tmp_path))
    _state(member / "scst-aaa", best_epoch=1)
    _state(member / "scst-bbb", best_epoch=2)
    with pytest.raises(SystemExit, match="holds 2 SCST runs"):
        work.scst_folder(str(tmp_path))
    assert work.scst_folder(str(tmp_path), "scst-bbb") == str(member / "scst-bbb")
    assert work.checkpoint_epoch(str(tmp_path), "scst", "scst-aaa") == 1
    with pytest.raises(SystemExit, match="not an SCST run"):
        work.scst_folder(str(tmp_path), "scst-ccc")


def test_an_unfinished_scst_run_gives_its_best_epoch_so_far_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "member-1" / "scst-aaa"
    _state(run, done=False, best_epoch=1)
    (run / "best.weights.h5").write_bytes(b"w")
    assert work.checkpoint_file(str(tmp_path), "scst") == str(run / "best.weights.h5")
    assert "not finished" in caplog.text


def test_an_ensemble_member_is_a_work_folder_or_one_of_its_scst_runs(tmp_path: Path) -> None:
    _state(tmp_path / "member-1" / "scst-aaa", best_epoch=1)
    assert work.member_ref(str(tmp_path), "last") == work.MemberRef(str(tmp_path), "last")
    run = work.member_ref(str(tmp_path / "member-1" / "scst-aaa") + "/", "best")
    assert run == work.MemberRef(str(tmp_path), "scst", "scst-aaa")
    with pytest.raises(SystemExit, match="not an SCST run"):
        work.member_ref(str(tmp_path / "member-1" / "scst-zzz"), "best")
