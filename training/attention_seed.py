"""Start an attention training work folder from a released artifact (``--init-from-model``).

``python -m training.train_attention --init-from-model models/flickr8k-xception …`` continues from
the artifact's decoder instead of training one: the work folder gets the artifact's vocabulary
and max length (written by ``train_attention`` like a vocabulary of its own), and its
``member-1`` the artifact's decoder weights as a *finished* cross-entropy
fit (``training.fit`` state ``done``, zero epochs), so the same command's ``--scst-*`` flags run
SCST from the released weights, resumably like any other run. The artifact is read through
``model.artifact.read_artifact`` (manifest, SHA-256 and format checked) and must hold exactly one
attention decoder whose sizes and kind are the ones the flags ask for.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Any

from model.artifact import read_artifact
from model.artifact_config import AttentionConfig
from model.storage import atomic_local_path
from training.fit import FitSettings

SEED_FILE = "initialised_from.json"


def released_decoder(model_uri: str) -> Any:
    """The verified contents (``model.artifact.ArtifactContents``) of an artifact holding one
    attention decoder; SystemExit for any other artifact."""
    contents = read_artifact(model_uri)
    if not contents.config.is_attention or len(contents.decoder_weights_paths) != 1:
        raise SystemExit(f"{model_uri} is not an artifact with one attention decoder: it cannot seed this training")
    return contents


def seed_member(
    released: Any, member_dir: str, config: AttentionConfig, fit_settings: FitSettings, tokens: Sequence[str]
) -> bool:
    """Make ``member_dir`` a finished fit holding the ``released`` decoder's weights (from
    :func:`released_decoder`), unless it already holds a fit (then nothing changes and False is
    returned). Raises SystemExit when the released decoder is not ``config`` (other sizes or kind)
    or its vocabulary is not the work folder's ``tokens``."""
    from training.fit import BEST, LAST, STATE, _atomic_json, new_fit_state

    if os.path.exists(os.path.join(member_dir, STATE)):
        return False
    if list(released.vocab.tokens) != list(tokens):
        raise SystemExit(f"{released.uri} was trained with another vocabulary than the work folder's")
    (config_of_released,) = released.config.member_configs()
    if config_of_released != config:
        raise SystemExit(
            f"{released.uri} holds a decoder of config {config_of_released.to_dict()}; the flags ask for "
            f"{config.to_dict()}: give the flags of the released decoder (e.g. --kind {config_of_released.kind})"
        )
    os.makedirs(member_dir, exist_ok=True)
    for name in (BEST, LAST):
        with atomic_local_path(os.path.join(member_dir, name)) as tmp:
            shutil.copyfile(released.decoder_weights_path, tmp)
    _atomic_json(os.path.join(member_dir, SEED_FILE), {"model": released.uri, "model_id": released.model_id})
    state = new_fit_state(fit_settings)
    state.update(done=True, initialised_from=released.model_id)
    _atomic_json(os.path.join(member_dir, STATE), state)
    return True
