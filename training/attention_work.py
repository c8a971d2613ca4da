"""The files of an attention training work folder (``python -m training.train_attention``) and
their one reader each.

A work folder holds ``vocabulary.json`` (the tokens and the maximum caption length),
``attention_config.json`` (the decoder's sizes), ``evaluations.jsonl`` (every ``--evaluate-only``
score) and ``member-1/``: ``training.fit``'s weights and state, the ``selected`` checkpoint of the
dev objective and one ``scst-<settings hash>/`` folder per SCST run. ``train_attention`` writes
them; ``export_attention``, the ensembles of ``--evaluate-only`` and the benches read them here.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from model.vocabulary import Vocabulary

log = logging.getLogger(__name__)

VOCABULARY_FILE = "vocabulary.json"
CONFIG_FILE = "attention_config.json"
SELECTED = "selected.weights.h5"
SELECTION = "selected.json"
CHECKPOINTS = ("best", "last", "selected", "scst")


def read_json(path: str) -> dict[str, Any]:
    """A work folder's JSON file; SystemExit naming it when it is missing."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"{path} is missing: not a finished training work folder?") from None


def has_vocabulary(work_dir: str) -> bool:
    return os.path.exists(os.path.join(work_dir, VOCABULARY_FILE))


def read_vocabulary(work_dir: str) -> tuple[Vocabulary, int]:
    """(vocabulary, maximum caption length) of a work folder."""
    saved = read_json(os.path.join(work_dir, VOCABULARY_FILE))
    return Vocabulary.from_json(saved["vocabulary"]), int(saved["max_length"])


def write_vocabulary(work_dir: str, vocab: Vocabulary, max_length: int) -> None:
    from training.fit import _atomic_json

    _atomic_json(os.path.join(work_dir, VOCABULARY_FILE), {"vocabulary": vocab.to_json(), "max_length": max_length})


def read_config(work_dir: str) -> Any:
    """The decoder's sizes (``model.artifact_config.AttentionConfig``) recorded in a work folder."""
    from model.artifact_config import AttentionConfig

    return AttentionConfig.from_dict(read_json(os.path.join(work_dir, CONFIG_FILE)))


def scst_folder(work_dir: str, run: str | None = None) -> str:
    """The SCST run ``run`` (a ``scst-<settings hash>`` folder name) of a work folder, or its only one."""
    if run:
        path = os.path.join(work_dir, "member-1", run)
        if not os.path.isfile(os.path.join(path, "state.json")):
            raise SystemExit(f"{path} is not an SCST run (no state.json)")
        return path
    found = sorted(glob.glob(os.path.join(work_dir, "member-1", "scst-*", "state.json")))
    if len(found) != 1:
        raise SystemExit(
            f"{work_dir} holds {len(found)} SCST runs ({[os.path.dirname(f) for f in found]}); name one with --scst-run"
        )
    return os.path.dirname(found[0])


@dataclass(frozen=True)
class MemberRef:
    """One decoder of an ensemble: a work folder's checkpoint (``scst``: of the run ``scst_run``)."""

    work_dir: str
    checkpoint: str
    scst_run: str | None = None


def member_ref(path: str, checkpoint: str) -> MemberRef:
    """An ``--ensemble-with`` path: a work folder (its ``checkpoint``), or one SCST run of one
    (``WORK/member-1/scst-<hash>``: that run's chosen epoch, whatever ``checkpoint`` says)."""
    path = os.path.normpath(path)
    run, member = os.path.basename(path), os.path.dirname(path)
    if run.startswith("scst-") and os.path.basename(member) == "member-1":
        work_dir = os.path.dirname(member)
        scst_folder(work_dir, run)  # refuses a folder that is not a run
        return MemberRef(work_dir, "scst", run)
    return MemberRef(path, checkpoint)


def checkpoint_file(work_dir: str, checkpoint: str, scst_run: str | None = None) -> str:
    """The weights file of ``checkpoint`` (``CHECKPOINTS``) in a work folder (refused when missing;
    an unfinished SCST run gives its best epoch so far)."""
    from training.fit import BEST, LAST

    if checkpoint == "scst":
        folder = scst_folder(work_dir, scst_run)
        if not read_json(os.path.join(folder, "state.json")).get("done"):
            log.warning("the SCST run in %s is not finished: its best epoch so far is used", folder)
        path = os.path.join(folder, BEST)
    else:
        path = os.path.join(work_dir, "member-1", {"best": BEST, "last": LAST, "selected": SELECTED}[checkpoint])
    if not os.path.isfile(path):
        raise SystemExit(f"{path} is missing (checkpoint {checkpoint} of {work_dir})")
    return path


def checkpoint_epoch(work_dir: str, checkpoint: str, scst_run: str | None = None) -> int:
    """The training epoch whose weights ``checkpoint`` holds (``scst``: the SCST run's chosen epoch)."""
    member = os.path.join(work_dir, "member-1")
    if checkpoint == "scst":
        return int(read_json(os.path.join(scst_folder(work_dir, scst_run), "state.json"))["best_epoch"])
    if checkpoint == "selected":
        return int(read_json(os.path.join(member, SELECTION))["epoch"])
    state = read_json(os.path.join(member, "state.json"))
    return int(state["best_epoch"] if checkpoint == "best" else state["epoch"])


def load_member(work_dir: str, checkpoint: str, vocab: Vocabulary, scst_run: str | None = None) -> Any:
    """The decoder of a work folder with the checkpoint's weights (the vocabulary must be ``vocab``)."""
    from model.attention_decoder import AttentionDecoder

    if read_vocabulary(work_dir)[0].tokens != vocab.tokens:
        raise SystemExit(f"{work_dir} was trained with another vocabulary than the first member")
    decoder = AttentionDecoder(read_config(work_dir))
    decoder.load_weights(checkpoint_file(work_dir, checkpoint, scst_run))
    return decoder
