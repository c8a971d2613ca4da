"""Writing model artifacts (the layout and the checks on reading are ``model.artifact``): a new
artifact from decoders and a vocabulary (``save_artifact``), a copy with an INT8 encoder added
(``with_int8_encoder``), and the files + manifest of any artifact (``write_files``; the manifest is
written last, so an interrupted write is refused on load, never half-trusted)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import replace
from typing import Any

from model import storage
from model.artifact import (
    ARTIFACT_FORMAT,
    CONFIG,
    ENCODER_WEIGHTS,
    ENCODER_WEIGHTS_IN_ARTIFACT,
    INT8_DECODER_FILES,
    INT8_ENCODER_BIN,
    INT8_ENCODER_XML,
    MANIFEST,
    VOCAB,
    ArtifactError,
    artifact_files,
    compute_model_id,
)
from model.artifact_config import (
    ATTENTION_FORMAT,
    ENSEMBLE_FORMAT,
    MERGE_FORMAT,
    ArtifactConfig,
    AttentionConfig,
    EncoderConfig,
    member_file,
)
from model.caption_search import DecodeSettings
from model.vocabulary import Vocabulary


def library_versions() -> dict[str, str]:
    import keras
    import numpy
    import tensorflow

    return {
        "python": platform.python_version(),
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


def save_artifact(
    uri: str,
    *,
    decoder: Any,
    vocab: Vocabulary,
    encoder: EncoderConfig,
    decoding: DecodeSettings,
    training: dict[str, Any] | None = None,
    encoder_model: Any = None,
    extra_files: dict[str, bytes] | None = None,
    combine: str = "mean_logprob",
) -> str:
    """Write an artifact and return its ``model_id``.

    ``decoder`` is one decoder or a list of them (an ensemble of the same sizes whose
    log-probabilities are combined with ``combine`` in every search step): ``MergeDecoder`` objects
    (format 1, or 2 for several) or ``AttentionDecoder`` objects (format 3; soft and adaptive members
    may be mixed). ``encoder`` names the backbone, its input size and weights source (the other
    fields are filled in); pass the built ``encoder_model`` to embed its weights (the config then
    says ``"weights": "artifact"``).
    """
    members = list(decoder) if isinstance(decoder, (list, tuple)) else [decoder]
    first = members[0].config
    attention = isinstance(first, AttentionConfig)
    shared = (lambda c: replace(c, kind="soft")) if attention else (lambda c: c)
    if any(not isinstance(m.config, type(first)) or shared(m.config) != shared(first) for m in members):
        raise ArtifactError("ensemble members must share one decoder config (attention members may differ in kind)")
    if len(vocab) != first.vocab_size:
        raise ArtifactError(f"vocabulary has {len(vocab)} tokens but the decoder expects {first.vocab_size}")
    from model.encoder import get_backbone
    from model.image_loading import RESIZE_METHOD

    encoder_block = EncoderConfig(
        name=encoder.name,
        image_size=encoder.image_size,
        weights=ENCODER_WEIGHTS_IN_ARTIFACT if encoder_model is not None else encoder.weights,
        preprocessing=get_backbone(encoder.name).preprocessing_function,
        feature_dim=first.feature_dim,
        resize=RESIZE_METHOD,
    )
    config: dict[str, Any] = {
        "encoder": encoder_block.to_dict(),
        "decoding": {
            "method": decoding.method,
            "beam_width": decoding.beam_width,
            "length_alpha": decoding.length_alpha,
            **({"no_repeat": True} if decoding.no_repeat else {}),  # older artifacts: absent, off
        },
        "versions": library_versions(),
        "training": training or {},
    }
    files_of = [member_file(i) for i in range(len(members))]
    if attention:
        config.update(
            format=ATTENTION_FORMAT,
            decoder={k: v for k, v in first.to_dict().items() if k != "kind"},
            ensemble={
                "members": [{"file": f, "kind": m.config.kind} for f, m in zip(files_of, members)],
                "combine": combine,
            },
        )
    else:
        config.update(format=MERGE_FORMAT if len(members) == 1 else ENSEMBLE_FORMAT, decoder=first.to_dict())
        if len(members) > 1:
            config["ensemble"] = {"members": files_of, "combine": combine}
    try:
        ArtifactConfig.from_dict(config)  # what is written must read back
    except ValueError as exc:
        raise ArtifactError(f"refusing to write an invalid config: {exc}") from None
    files: dict[str, bytes] = {
        CONFIG: json.dumps(config, indent=2, sort_keys=True).encode(),
        VOCAB: vocab.to_json().encode(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, member in zip(files_of, members):
            member.save_weights(os.path.join(tmp, name))
        if encoder_model is not None:
            encoder_model.save_weights(os.path.join(tmp, ENCODER_WEIGHTS))
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                files[name] = f.read()
    files.update(extra_files or {})
    return write_files(uri, files)


def write_files(uri: str, files: dict[str, bytes]) -> str:
    """Write ``files`` and a manifest (last) for them; returns the new ``model_id``."""
    hashes = {name: storage.sha256_hex(data) for name, data in files.items()}
    model_id = compute_model_id(hashes)
    fmt = json.loads(files[CONFIG]).get("format", ARTIFACT_FORMAT) if CONFIG in files else ARTIFACT_FORMAT
    manifest = {
        "format": fmt,
        "model_id": model_id,
        "files": {name: {"sha256": hashes[name], "bytes": len(data)} for name, data in files.items()},
    }
    for name, data in files.items():
        storage.write_bytes(storage.join(uri, name), data)
    storage.write_bytes(storage.join(uri, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
    return model_id


def with_int8_encoder(
    source: str,
    target: str,
    xml: bytes,
    weights: bytes,
    block: dict[str, Any],
    decoder_graphs: tuple[tuple[bytes, bytes], ...] | None = None,
) -> str:
    """Write a copy of artifact ``source`` to ``target`` (may be the same place) holding the
    INT8 encoder IR and its ``encoder.int8`` config block, and the INT8 path's attention decoder
    graphs when given (``INT8_DECODER_FILES`` order; ``block["decoder_weights"]`` describes them;
    earlier ones are dropped when not given); returns the new ``model_id``. The manifest is
    written last, so an interrupted write is refused on load, never half-trusted."""
    files = artifact_files(source)
    config = json.loads(files[CONFIG])
    config["encoder"]["int8"] = block
    files[CONFIG] = json.dumps(config, indent=2, sort_keys=True).encode()
    files[INT8_ENCODER_XML] = xml
    files[INT8_ENCODER_BIN] = weights
    for names in INT8_DECODER_FILES:
        for name in names:
            files.pop(name, None)
    for names, ir in zip(INT8_DECODER_FILES, decoder_graphs or ()):
        files.update(zip(names, ir))
    return write_files(target, files)
