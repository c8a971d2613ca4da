"""The artifact's ``config.json``, parsed once into frozen dataclasses (pure Python, no TensorFlow).

* ``EncoderConfig``  the ``"encoder"`` block: backbone name, input size, weights source, and the
  optional ``"int8"`` record of a quantised encoder;
* ``DecoderConfig``  the ``"decoder"`` block: sizes of the merge LSTM network (``model.lstm_decoder``);
* ``DecodeSettings`` the ``"decoding"`` block: the default caption search (``model.caption_search``;
  its ``max_length`` is the decoder's);
* ``AttentionConfig`` the ``"decoder"`` block of an attention artifact (``model.attention_decoder``);
* ``ArtifactConfig`` all of it, with the format, the ensemble and the training/versions records.

Formats (``config.json`` and ``manifest.json`` say which):

* ``image-caption-model/1``: one merge decoder over the pooled vector (``decoder.weights.h5``);
* ``image-caption-model/2``: an ensemble of merge decoders, ``"ensemble": {"members": [files],
  "combine": ...}``;
* ``image-caption-model/3``: attention decoders over the encoder's spatial map; the ``"decoder"``
  block holds the sizes the members share and ``"ensemble": {"members": [{"file": ..., "kind":
  "soft"|"adaptive"}, ...], "combine": ...}`` (always present, one member or more).

A format this version does not know is refused by name (a newer artifact needs a newer package).
The ensemble is parsed here only (``ArtifactConfig.ensemble_members``). Readers use attributes
(``config.encoder.image_size``), never string keys; the JSON on disk is written by
``model.artifact_writer.save_artifact`` and is not changed by parsing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from model.caption_search import DecodeSettings

ENSEMBLE_COMBINE = ("mean_logprob", "mean_prob")
DEFAULT_ENCODER_WEIGHTS = "imagenet"
MERGE_FORMAT = "image-caption-model/1"  # one merge decoder: what every reader since the first can load
ENSEMBLE_FORMAT = "image-caption-model/2"  # several merge decoders
ATTENTION_FORMAT = "image-caption-model/3"  # attention decoder(s) over the spatial map
READABLE_FORMATS = (MERGE_FORMAT, ENSEMBLE_FORMAT, ATTENTION_FORMAT)
DECODER_WEIGHTS = "decoder.weights.h5"
# how the INT8 path holds an attention decoder's graph weights: as trained, or INT8 per output
# channel (NNCF's data-free weight compression; the graphs are in the artifact, judged by the INT8 gate)
DECODER_WEIGHT_MODES = ("float32", "int8_asym")
ENCODER_OUTPUTS = ("pooled", "map")  # what the encoder gives the decoder: global average, or the map


def member_file(index: int) -> str:
    """File name of ensemble member ``index`` (0 is ``decoder.weights.h5``)."""
    return DECODER_WEIGHTS if index == 0 else f"decoder-{index + 1}.weights.h5"


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of the merge decoder; stored in the artifact's config.json."""

    vocab_size: int
    max_length: int  # max caption tokens including <start> and <end>
    feature_dim: int = 2048
    embedding_dim: int = 256
    units: int = 256
    image_dense: tuple[int, ...] = (256,)  # image branch Dense sizes; the last must equal units
    dropout: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_dense", tuple(int(u) for u in self.image_dense))
        if not self.image_dense or self.image_dense[-1] != self.units:
            raise ValueError(f"image_dense must end with units={self.units}, got {self.image_dense}")
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size {self.vocab_size} is too small")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_dense"] = list(self.image_dense)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecoderConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown decoder config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder block of config.json. ``weights`` is the recorded source (``"imagenet"``, a
    path or URI, or ``"artifact"`` for ``encoder.weights.h5``); ``preprocessing`` and ``resize``
    name what the decoder's features were made with and must be what this version runs
    (``model.artifact`` refuses others); ``feature_dim`` must be the decoder's; ``int8`` is the
    record of the artifact's INT8 encoder (source weights hash, calibration, quality gate,
    ``output``) or None."""

    name: str
    image_size: tuple[int, int]
    weights: str = DEFAULT_ENCODER_WEIGHTS
    preprocessing: str | None = None
    feature_dim: int | None = None
    resize: str | None = None
    int8: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def decoder_weights(self) -> str:
        """How the INT8 path stores the decoder's weights (``DECODER_WEIGHT_MODES``): ``float32``, or
        the mode its quality gate passed with (``int8["decoder_weights"]["mode"]``)."""
        return str(((self.int8 or {}).get("decoder_weights") or {}).get("mode", "float32"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON block (fields that are None are left out)."""
        d: dict[str, Any] = {"name": self.name, "weights": self.weights, "image_size": list(self.image_size)}
        for key in ("preprocessing", "feature_dim", "resize", "int8"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"encoder name must be a non-empty string, got {name!r}")
        size = d.get("image_size")
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"encoder image_size must be [height, width], got {size!r}")
        int8 = d.get("int8")
        if int8 is not None and not isinstance(int8, dict):
            raise ValueError("encoder.int8 must be an object")
        feature_dim = d.get("feature_dim")
        config = cls(
            name=name,
            image_size=(int(size[0]), int(size[1])),
            weights=d.get("weights", DEFAULT_ENCODER_WEIGHTS),
            preprocessing=d.get("preprocessing"),
            feature_dim=None if feature_dim is None else int(feature_dim),
            resize=d.get("resize"),
            int8=int8,
        )
        mode = config.decoder_weights
        if mode not in DECODER_WEIGHT_MODES:
            raise ValueError(f"encoder.int8.decoder_weights.mode must be one of {DECODER_WEIGHT_MODES}, not {mode!r}")
        return config


def decode_settings_from_dict(d: Mapping[str, Any], max_length: int) -> DecodeSettings:
    """The ``"decoding"`` block (method, beam width, length alpha) with the decoder's max length."""
    return DecodeSettings(**{**d, "max_length": max_length})


@dataclass(frozen=True)
class ArtifactConfig:
    """The whole config.json of an artifact, parsed. ``decoder`` is a ``DecoderConfig`` (formats
    1 and 2) or the members' shared ``AttentionConfig`` (format 3, with member 1's kind);
    ``ensemble_members`` are the decoder weight files, member 1 first (one for format 1),
    ``member_kinds`` the attention members' kinds (empty for merge decoders)."""

    format: str
    encoder: EncoderConfig
    decoder: Any  # DecoderConfig | AttentionConfig
    decoding: DecodeSettings  # the artifact's default caption search
    ensemble_members: tuple[str, ...] = (DECODER_WEIGHTS,)
    ensemble_combine: str = "mean_logprob"
    member_kinds: tuple[str, ...] = ()
    training: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the training summary
    versions: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_attention(self) -> bool:
        return self.format == ATTENTION_FORMAT

    @property
    def encoder_output(self) -> str:
        """What the decoder reads: ``"map"`` (attention) or ``"pooled"`` (``ENCODER_OUTPUTS``)."""
        return "map" if self.is_attention else "pooled"

    def member_configs(self) -> tuple[Any, ...]:
        """One decoder config per member (attention members differ by kind only)."""
        if not self.is_attention:
            return tuple(self.decoder for _ in self.ensemble_members)
        return tuple(replace(self.decoder, kind=kind) for kind in self.member_kinds)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArtifactConfig:
        """Parse config.json; raises ValueError naming the invalid section."""
        fmt = d.get("format")
        if fmt not in READABLE_FORMATS:
            raise ValueError(
                f"unknown format {fmt!r} (this version reads {', '.join(READABLE_FORMATS)}; "
                f"a newer artifact needs a newer version of this package)"
            )
        try:
            members, kinds, combine = _ensemble(fmt, d.get("ensemble"))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"invalid ensemble section: {exc}") from None
        try:
            if fmt == ATTENTION_FORMAT:
                decoder: Any = AttentionConfig.from_dict({**d["decoder"], "kind": kinds[0]})
            else:
                decoder = DecoderConfig.from_dict(d["decoder"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid decoder section: {exc}") from None
        try:
            encoder = EncoderConfig.from_dict(d["encoder"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid encoder section: {exc}") from None
        try:
            decoding = decode_settings_from_dict(d.get("decoding") or {}, decoder.max_length)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid decoding section: {exc}") from None
        return cls(
            format=fmt,
            encoder=encoder,
            decoder=decoder,
            decoding=decoding,
            ensemble_members=members,
            ensemble_combine=combine,
            member_kinds=kinds,
            training=d.get("training") or {},
            versions=d.get("versions") or {},
        )

    def decode_settings(self, **overrides: Any) -> DecodeSettings:
        """The default search with the given fields replaced (``None`` values are ignored)."""
        return replace(self.decoding, **{k: v for k, v in overrides.items() if v is not None})


def _ensemble(fmt: str, ensemble: Any) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(member weight files, attention kinds, combine) of a config's ``"ensemble"`` block."""
    if fmt == MERGE_FORMAT:
        if ensemble is not None:
            raise ValueError(f"format {MERGE_FORMAT} has one decoder and no ensemble")
        return (DECODER_WEIGHTS,), (), "mean_logprob"
    if not isinstance(ensemble, dict) or not isinstance(ensemble.get("members"), list) or not ensemble["members"]:
        raise ValueError(f"format {fmt} needs an 'ensemble' object with a non-empty 'members' list, got {ensemble!r}")
    unknown = set(ensemble) - {"members", "combine"}
    if unknown:
        raise ValueError(f"unknown ensemble keys {sorted(unknown)}")
    kinds: tuple[str, ...] = ()
    if fmt == ATTENTION_FORMAT:
        for m in ensemble["members"]:
            if not isinstance(m, dict) or set(m) != {"file", "kind"} or m["kind"] not in ATTENTION_KINDS:
                raise ValueError(
                    f"an attention member must be {{'file': ..., 'kind': one of {ATTENTION_KINDS}}}, not {m!r}"
                )
        names = [m["file"] for m in ensemble["members"]]
        kinds = tuple(m["kind"] for m in ensemble["members"])
    else:
        names = list(ensemble["members"])
    if (
        names[0] != DECODER_WEIGHTS
        or len(set(names)) != len(names)
        or any(not isinstance(n, str) or not n.endswith(".weights.h5") or "/" in n for n in names)
    ):
        raise ValueError(f"member files must be distinct *.weights.h5 names, the first {DECODER_WEIGHTS}: {names}")
    combine = ensemble.get("combine", "mean_logprob")
    if combine not in ENSEMBLE_COMBINE:
        raise ValueError(f"unknown ensemble combine {combine!r}")
    return tuple(names), kinds, combine


ATTENTION_KINDS = ("soft", "adaptive")


@dataclass(frozen=True)
class AttentionConfig:
    """Sizes of an attention decoder over the encoder's spatial map (``model.attention_decoder``).

    ``kind``: ``soft`` (attention over the ``regions`` map cells) or ``adaptive`` (the same plus a
    visual sentinel the decoder may attend to instead of the image, Lu et al. 2017)."""

    vocab_size: int
    max_length: int  # max caption tokens including <start> and <end>
    feature_dim: int = 2048
    regions: int = 100  # map cells (10x10 for Xception at 299 px)
    embedding_dim: int = 256
    units: int = 512
    attention_dim: int = 256
    dropout: float = 0.5
    kind: str = "adaptive"

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, not {self.kind!r}")
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size {self.vocab_size} is too small")
        if min(self.regions, self.feature_dim, self.embedding_dim, self.units, self.attention_dim) < 1:
            raise ValueError("attention decoder sizes must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttentionConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown attention decoder config keys: {sorted(unknown)}")
        return cls(**d)
