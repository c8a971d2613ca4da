"""The self-contained model artifact: a directory (local or any fsspec URI) holding

* ``config.json``  format (``model.artifact_config``: 1 merge decoder, 2 merge ensemble, 3
  attention decoders over the spatial map), encoder name, weights source, image size,
  preprocessing and resize (checked against what this version does: an artifact that asks for
  another is refused), decoder sizes, decoding defaults, library versions, training data and metrics;
* ``vocab.json``   the vocabulary;
* ``decoder.weights.h5``  decoder weights (HDF5, weights only); an ensemble adds
  ``decoder-2.weights.h5`` … (same sizes, other seeds or kinds), named in config ``"ensemble"``;
* ``encoder.weights.h5``  optional encoder weights (config ``"weights": "artifact"``);
* ``encoder.int8.xml`` + ``encoder.int8.bin``  optional INT8 encoder (OpenVINO IR, built by
  ``training.quantize``; config ``encoder.int8`` records its source weights, calibration and
  ``output``: the pooled vector, or the spatial map an attention decoder needs);
* ``decoder_image.int8.xml``/``.bin`` + ``decoder_step.int8.xml``/``.bin``  optional, with the
  INT8 encoder of an attention artifact: its decoder's two OpenVINO graphs (the per-image
  projection, the step) with INT8 weights, which ``--precision int8`` runs (config
  ``encoder.int8.decoder_weights``; judged by the same quality gate as the INT8 encoder);
* ``manifest.json``  size and SHA-256 of every file and the ``model_id`` (a hash of them).

Loading never executes code from the artifact: no pickle, no Keras model deserialisation, only
JSON, HDF5 weight arrays and OpenVINO IR (an XML graph and raw weights), each checked against
the manifest before use.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from model import storage
from model.artifact_config import (
    DECODER_WEIGHTS,
    MERGE_FORMAT,
    READABLE_FORMATS,
    ArtifactConfig,
    EncoderConfig,
)
from model.caption_search import DecodeSettings
from model.vocabulary import Vocabulary, VocabularyError

ARTIFACT_FORMAT = MERGE_FORMAT  # the first format (kept name)
CONFIG = "config.json"
VOCAB = "vocab.json"
ENCODER_WEIGHTS = "encoder.weights.h5"
MANIFEST = "manifest.json"
INT8_ENCODER_XML = "encoder.int8.xml"
INT8_ENCODER_BIN = "encoder.int8.bin"
# the INT8 path's attention graphs, in model.attention_runtime.ATTENTION_GRAPHS order: projection, step
INT8_DECODER_FILES = (
    ("decoder_image.int8.xml", "decoder_image.int8.bin"),
    ("decoder_step.int8.xml", "decoder_step.int8.bin"),
)
ENCODER_WEIGHTS_IN_ARTIFACT = "artifact"
REQUIRED_FILES = (CONFIG, VOCAB, DECODER_WEIGHTS)


class ArtifactError(ValueError):
    """The model artifact is missing, incomplete, tampered with or inconsistent."""


def compute_model_id(file_hashes: dict[str, str]) -> str:
    """Content hash of the artifact: SHA-256 over the sorted (name, file SHA-256) pairs."""
    lines = "".join(f"{name}\0{digest}\n" for name, digest in sorted(file_hashes.items()))
    return storage.sha256_hex(lines.encode())[:16]


@dataclass
class ArtifactContents:
    """A validated artifact: its parsed config (``model.artifact_config``), vocabulary and local
    paths of the weight files."""

    uri: str
    model_id: str
    config: ArtifactConfig
    vocab: Vocabulary
    decoder_weights_paths: list[str]  # one per ensemble member, member 0 first
    encoder_weights: str | None  # resolved weights setting for the encoder
    int8_encoder: tuple[bytes, bytes] | None = None  # verified OpenVINO IR (xml, bin), if the artifact has one
    int8_decoder: tuple[tuple[bytes, bytes], ...] | None = None  # the INT8 path's attention graphs (IR), if any
    _tmp: Any = field(default=None, repr=False)

    @property
    def decoder_weights_path(self) -> str:
        return self.decoder_weights_paths[0]

    @property
    def ensemble_combine(self) -> str:
        return self.config.ensemble_combine

    def decode_settings(self, **overrides: Any) -> DecodeSettings:
        """The artifact's default search with the given fields replaced (``None`` is ignored)."""
        return self.config.decode_settings(**overrides)


def _read(uri: str, name: str) -> bytes:
    path = storage.join(uri, name)
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        raise ArtifactError(f"model artifact {uri} is incomplete: {name} is missing") from None
    except Exception as exc:  # noqa: BLE001 - any storage failure names the file
        raise ArtifactError(f"cannot read {name} of model artifact {uri}: {type(exc).__name__}: {exc}") from exc


def _json(uri: str, name: str, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{name} of model artifact {uri} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{name} of model artifact {uri} must hold a JSON object")
    return value


def read_artifact(
    uri: str, *, expected_model_id: str | None = None, encoder_weights: str | None = None
) -> ArtifactContents:
    """Read and verify an artifact without building any model.

    Checks, in order: the manifest, every file's size and SHA-256, the ``model_id`` (and the
    expected one if given), the config format and decoder sizes, the vocabulary and its size,
    and that weight files are HDF5. ``encoder_weights`` overrides the config's weights source.
    """
    uri = uri.rstrip("/")
    manifest, files, model_id = _read_verified_files(uri, expected_model_id)
    return _checked_contents(uri, manifest, files, model_id, encoder_weights)


def _read_verified_files(
    uri: str, expected_model_id: str | None = None
) -> tuple[dict[str, Any], dict[str, bytes], str]:
    """The manifest, every file it lists (each read once, its size and SHA-256 checked) and the
    ``model_id`` they hash to (checked against the manifest's and the expected one)."""
    manifest = _json(uri, MANIFEST, _read(uri, MANIFEST))
    listed = manifest.get("files")
    if manifest.get("format") not in READABLE_FORMATS or not isinstance(listed, dict):
        raise ArtifactError(
            f"{MANIFEST} of model artifact {uri} is not an {' or '.join(READABLE_FORMATS)} "
            f"manifest (format={manifest.get('format')!r}; a newer artifact needs a newer version "
            f"of this package)"
        )
    for name in REQUIRED_FILES:
        if name not in listed:
            raise ArtifactError(f"{MANIFEST} of model artifact {uri} does not list {name}")
    contents: dict[str, bytes] = {}
    hashes: dict[str, str] = {}
    for name, meta in sorted(listed.items()):
        if "/" in name or name.startswith("."):
            raise ArtifactError(f"{MANIFEST} of model artifact {uri} lists an unsafe file name {name!r}")
        data = _read(uri, name)
        if len(data) != meta.get("bytes"):
            raise ArtifactError(
                f"{name} of model artifact {uri} has {len(data)} bytes but the manifest "
                f"records {meta.get('bytes')} (truncated or replaced)"
            )
        digest = storage.sha256_hex(data)
        if digest != meta.get("sha256"):
            raise ArtifactError(
                f"{name} of model artifact {uri} does not match its SHA-256 in the manifest (tampered or corrupt)"
            )
        hashes[name] = digest
        contents[name] = data
    model_id = compute_model_id(hashes)
    if manifest.get("model_id") != model_id:
        raise ArtifactError(
            f"{MANIFEST} of model artifact {uri} records model_id {manifest.get('model_id')} "
            f"but the files hash to {model_id}"
        )
    if expected_model_id and expected_model_id != model_id:
        raise ArtifactError(f"model artifact {uri} has model_id {model_id}, expected {expected_model_id}")
    return manifest, contents, model_id


def _checked_contents(
    uri: str, manifest: dict[str, Any], contents: dict[str, bytes], model_id: str, encoder_weights: str | None
) -> ArtifactContents:
    """Parse and check verified files (config, vocabulary, ensemble, INT8 IR, HDF5 weights)."""
    listed = manifest["files"]
    raw_config = _json(uri, CONFIG, contents[CONFIG])
    if raw_config.get("format") != manifest.get("format"):
        raise ArtifactError(
            f"{CONFIG} of model artifact {uri} is not {manifest.get('format')} (format={raw_config.get('format')!r})"
        )
    for key in ("encoder", "decoder"):
        if not isinstance(raw_config.get(key), dict):
            raise ArtifactError(f"{CONFIG} of model artifact {uri} has no '{key}' section")
    try:
        config = ArtifactConfig.from_dict(raw_config)
    except ValueError as exc:
        raise ArtifactError(f"{CONFIG} of model artifact {uri} has an {exc}") from None
    members = list(config.ensemble_members)
    missing = [n for n in members if n not in listed]
    if missing:
        raise ArtifactError(f"{MANIFEST} of model artifact {uri} does not list ensemble member(s) {missing}")
    _check_encoder_claims(uri, config.encoder)
    decoder_config = config.decoder
    if config.encoder.feature_dim is not None and config.encoder.feature_dim != decoder_config.feature_dim:
        raise ArtifactError(
            f"{CONFIG} of model artifact {uri}: encoder feature_dim {config.encoder.feature_dim} "
            f"does not match the decoder's {decoder_config.feature_dim}"
        )
    try:
        vocab = Vocabulary.from_json(contents[VOCAB].decode("utf-8"))
    except (VocabularyError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{VOCAB} of model artifact {uri} is invalid: {exc}") from None
    if len(vocab) != decoder_config.vocab_size:
        raise ArtifactError(
            f"{CONFIG} of model artifact {uri} says vocab_size={decoder_config.vocab_size} "
            f"but {VOCAB} has {len(vocab)} tokens"
        )

    int8 = _int8_encoder(uri, config, contents)
    int8_decoder = _int8_decoder(uri, config, contents) if int8 is not None else None
    tmp = tempfile.TemporaryDirectory(prefix="caption-artifact-")
    local: dict[str, str] = {}
    for name in (*members, ENCODER_WEIGHTS):
        if name in contents:
            if not contents[name].startswith(storage.HDF5_MAGIC):
                raise ArtifactError(f"{name} of model artifact {uri} is not an HDF5 weights file (refused)")
            local[name] = os.path.join(tmp.name, name)
            with open(local[name], "wb") as f:
                f.write(contents[name])
    weights = encoder_weights if encoder_weights is not None else config.encoder.weights
    if weights == ENCODER_WEIGHTS_IN_ARTIFACT:
        if ENCODER_WEIGHTS not in local:
            raise ArtifactError(
                f"{CONFIG} of model artifact {uri} says the encoder weights are in the "
                f"artifact but {ENCODER_WEIGHTS} is not listed in its manifest"
            )
        weights = local[ENCODER_WEIGHTS]
    return ArtifactContents(
        uri=uri,
        model_id=model_id,
        config=config,
        vocab=vocab,
        decoder_weights_paths=[local[m] for m in members],
        encoder_weights=weights,
        int8_encoder=int8,
        int8_decoder=int8_decoder,
        _tmp=tmp,
    )


def _check_encoder_claims(uri: str, encoder: EncoderConfig) -> None:
    """Refuse an artifact whose encoder block asks for preprocessing or resizing other than what
    this version does (the backbone's ``preprocess_input``, ``model.image_loading.RESIZE_METHOD``):
    they are promises about the features the decoder was trained on, never silently ignored."""
    from model.encoder import EncoderError, get_backbone
    from model.image_loading import RESIZE_METHOD

    try:
        expected = get_backbone(encoder.name).preprocessing_function
    except EncoderError as exc:
        raise ArtifactError(f"{CONFIG} of model artifact {uri}: {exc}") from None
    if encoder.preprocessing not in (None, expected):
        raise ArtifactError(
            f"{CONFIG} of model artifact {uri} says the images are preprocessed with "
            f"{encoder.preprocessing!r}, but this version runs {expected} for {encoder.name} (refused)"
        )
    if encoder.resize not in (None, RESIZE_METHOD):
        raise ArtifactError(
            f"{CONFIG} of model artifact {uri} says the images are resized with "
            f"{encoder.resize!r}, but this version resizes with {RESIZE_METHOD!r} only (refused)"
        )


def _int8_encoder(uri: str, config: ArtifactConfig, contents: dict[str, bytes]) -> tuple[bytes, bytes] | None:
    """The verified INT8 IR (xml, bin) the config's ``encoder.int8`` block announces, else None.
    The XML must be an OpenVINO IR graph made for this encoder's name and image size."""
    block = config.encoder.int8
    if block is None:
        return None
    for name in (INT8_ENCODER_XML, INT8_ENCODER_BIN):
        if name not in contents:
            raise ArtifactError(
                f"{CONFIG} of model artifact {uri} announces an INT8 encoder but {name} is not listed in its manifest"
            )
    xml = _ir_graph(uri, INT8_ENCODER_XML, contents)
    encoder = config.encoder
    if block.get("output", "pooled") != config.encoder_output:
        raise ArtifactError(
            f"the INT8 encoder of model artifact {uri} outputs the {block.get('output', 'pooled')} "
            f"features but its decoder reads the {config.encoder_output} ones (refused)"
        )
    if block.get("encoder") != encoder.name or list(block.get("image_size", [])) != list(encoder.image_size):
        raise ArtifactError(
            f"the INT8 encoder of model artifact {uri} was built for {block.get('encoder')} at "
            f"{block.get('image_size')}, not {encoder.name} at {list(encoder.image_size)}"
        )
    return xml, contents[INT8_ENCODER_BIN]


def _int8_decoder(
    uri: str, config: ArtifactConfig, contents: dict[str, bytes]
) -> tuple[tuple[bytes, bytes], ...] | None:
    """The verified INT8 decoder graphs (xml, bin each: ``INT8_DECODER_FILES``) that
    ``encoder.int8.decoder_weights`` announces (attention decoders only), else None."""
    if config.encoder.decoder_weights == "float32":
        return None
    if not config.is_attention:
        raise ArtifactError(f"{CONFIG} of model artifact {uri} announces INT8 decoder graphs for a merge decoder")
    for name in (name for pair in INT8_DECODER_FILES for name in pair):
        if name not in contents:
            raise ArtifactError(
                f"{CONFIG} of model artifact {uri} announces INT8 decoder graphs but {name} "
                "is not listed in its manifest"
            )
    return tuple((_ir_graph(uri, xml, contents), contents[weights]) for xml, weights in INT8_DECODER_FILES)


def _ir_graph(uri: str, name: str, contents: dict[str, bytes]) -> bytes:
    xml = contents[name]
    if not xml.lstrip().startswith(b"<?xml") or b"<net " not in xml[:4096]:
        raise ArtifactError(f"{name} of model artifact {uri} is not an OpenVINO IR graph (refused)")
    return xml


def artifact_files(uri: str) -> dict[str, bytes]:
    """Every file an artifact's manifest lists, as bytes: each read once and verified as
    ``read_artifact`` verifies it (the bytes returned are the bytes checked)."""
    uri = uri.rstrip("/")
    manifest, files, model_id = _read_verified_files(uri)
    _checked_contents(uri, manifest, files, model_id, None)
    return files
