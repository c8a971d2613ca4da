"""Start an attention training work folder from a released artifact (``--init-from-model``).

``python -m training.train_attention --init-from-model models/flickr8k-xception …`` continues from
the artifact's decoder instead of training one: the work folder gets the artifact's vocabulary
and max length, and its ``member-1`` the artifact's decoder weights as a *finished* cross-entropy
fit (``training.fit`` state ``done``, zero epochs), so the same command's ``--scst-*`` flags run
SCST from the released weights, resumably like any other run. The artifact is read through
``model.artifact.read_artifact`` (manifest, SHA-256 and format checked) and must hold exactly one
attention decoder whose sizes and kind are the ones the flags ask for.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from model.artifact import read_artifact
from model.artifact_config import AttentionConfig
from model.storage import atomic_local_path

VOCABULARY_FILE = "vocabulary.json"
SEED_FILE = "initialised_from.json"


def seed_vocabulary(model_uri: str, work_dir: str) -> None:
    """Write the artifact's vocabulary and max length as the work folder's (once: a folder that
    already has a vocabulary keeps it)."""
    path = os.path.join(work_dir, VOCABULARY_FILE)
    if os.path.exists(path):
        return
    contents = _attention_artifact(model_uri)
    os.makedirs(work_dir, exist_ok=True)
    with atomic_local_path(path) as tmp, open(tmp, "w") as f:
        json.dump({"vocabulary": contents.vocab.to_json(), "max_length": contents.config.decoder.max_length}, f)


def seed_member(
    model_uri: str, member_dir: str, config: AttentionConfig, fit_settings: dict[str, Any], tokens: list[str]
) -> bool:
    """Make ``member_dir`` a finished fit holding the artifact's decoder weights, unless it
    already holds a fit (then nothing changes and False is returned). Raises SystemExit when the
    artifact's decoder is not ``config`` (other sizes or kind) or its vocabulary is not the work
    folder's ``tokens``."""
    from training.fit import BEST, LAST, STATE, _atomic_json

    if os.path.exists(os.path.join(member_dir, STATE)):
        return False
    contents = _attention_artifact(model_uri)
    if list(contents.vocab.tokens) != list(tokens):
        raise SystemExit(f"{model_uri} was trained with another vocabulary than the work folder's")
    (released,) = contents.config.member_configs()
    if released != config:
        raise SystemExit(
            f"{model_uri} holds a decoder of config {released.to_dict()}; the flags ask for "
            f"{config.to_dict()}: give the flags of the released decoder (e.g. --kind {released.kind})"
        )
    os.makedirs(member_dir, exist_ok=True)
    for name in (BEST, LAST):
        with atomic_local_path(os.path.join(member_dir, name)) as tmp:
            shutil.copyfile(contents.decoder_weights_path, tmp)
    _atomic_json(os.path.join(member_dir, SEED_FILE), {"model": model_uri, "model_id": contents.model_id})
    _atomic_json(
        os.path.join(member_dir, STATE),
        {
            "epoch": 0,
            "history": {},
            "best_loss": None,
            "best_epoch": 0,
            "wait": 0,
            "done": True,
            "seconds": 0.0,
            "settings": fit_settings,
            "initialised_from": contents.model_id,
        },
    )
    return True


def _attention_artifact(model_uri: str) -> Any:
    contents = read_artifact(model_uri)
    if not contents.config.is_attention or len(contents.decoder_weights_paths) != 1:
        raise SystemExit(f"{model_uri} is not an artifact with one attention decoder: it cannot seed this training")
    return contents
