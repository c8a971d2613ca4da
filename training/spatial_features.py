"""Extract (or complete) the spatial feature cache of the attention decoder.

Example::

    nice -n 10 python -m training.spatial_features --flickr8k ../shared/data/flickr8k \\
        --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5

Every image of the given splits is encoded once into Xception's last convolutional map (10x10x2048
at 299 px), stored as float16 in the feature cache (``--cache-dir``, default
``~/.cache/image-captioning/features``), one atomically written part per chunk: an interrupted
run continues where it stopped when started again. Missing or undecodable images are reported.
"""

from __future__ import annotations

import argparse
import json
import logging

from model.encoder import get_backbone
from training.splits import add_data_arguments, load_split_features

log = logging.getLogger("training")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.spatial_features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_arguments(p)
    p.add_argument("--encoder", default="xception")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--splits", nargs="+", default=["train", "dev"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = args.image_size or get_backbone(args.encoder).default_size
    for split in args.splits:
        items, feats, report = load_split_features(
            args, split, args.encoder, args.encoder_weights, (size, size), spatial=True
        )
        print(
            json.dumps(
                {
                    "split": split,
                    "images": len(items),
                    "shape": list(feats.shape),
                    "dtype": str(feats.dtype),
                    **report.summary(),
                }
            )
        )
        del feats
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
