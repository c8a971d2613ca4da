"""How much choosing among the beam's captions can give (issue 27), on the dev split.

Reproduce (after ``python -m training.spatial_features``; a few minutes on 2 cores)::

    python bench/bench_rerank.py --flickr8k ../shared/data/flickr8k \\
        --encoder-weights ../shared/models/xception_weights_tf_dim_ordering_tf_kernels_notop.h5 \\
        [--model models/flickr8k-xception] [--widths 2 5] [--neighbours 5 10 20] [--mu 0 0.1 0.3]

For each beam width the candidates of an image are its beam's distinct finished captions, best
first by the search's length-normalised log-probability (the artifact's search otherwise: its
alpha, no_repeat and banned words). Rows, each with every ``dev_quality`` column:

* the search's choice (what the artifact captions);
* three **oracles that read the dev answers**, not methods: the candidate with the best sentence
  CIDEr-D against the image's references, and the candidate with the best E[1/rank] for the
  image's own findability queries (references #2-#5, the other images' captions fixed at the
  search's choice) — both choose with the very answers they are scored on, so they include
  selection on noise; and the candidate with the best CIDEr-D against reference #1 *alone*, a
  reranker that knows one annotator's caption: its R@5 (queries #2-#5) and the columns scored
  against references #2-#5 only (``bleu4 #2-5``, ``cider_d #2-5``) are answers it never saw;
* **consensus reranking** (Devlin et al. 2015, "Language models for image captioning: the quirks
  and what works"; Mao et al. 2015): the candidate with the highest CIDEr-D against the captions
  of the image's ``k`` nearest training images (cosine of the pooled Xception vectors, the means
  of the cached maps; document frequencies of the training captions), plus ``mu`` times its
  length-normalised log-probability. It reads no dev answers. Its rows name what the CIDEr-D
  stage cost per image, and the footer what finding the nearest training images cost.

Float32 maps from training's spatial feature cache; prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.common import REPO, machine, table

COLUMNS = ("bleu1", "bleu4", "cider_d", "rouge_l", "distinct", "r_at_1", "r_at_5", "mrr", "median_rank")
HELD_OUT = ("bleu4 #2-5", "cider_d #2-5")


def pooled(maps: np.ndarray) -> np.ndarray:
    """Unit-length means of spatial maps ``(n, ..., d)``, in chunks (the cache is float16)."""
    out = np.concatenate(
        [
            np.asarray(maps[s : s + 500], np.float32)
            .reshape(-1, int(np.prod(maps.shape[1:-1])), maps.shape[-1])
            .mean(1)
            for s in range(0, len(maps), 500)
        ]
    )
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def candidates(contents: Any, step: Any, maps: np.ndarray, width: int) -> list[list[tuple[str, float]]]:
    """Per image: (caption, length-normalised log-probability) of its beam's distinct finished
    captions, best first."""
    from model.caption_search import beam_candidates, filtered_decoder, normalised_score, strip_end

    vocab, search = contents.vocab, contents.decode_settings()
    decoder = filtered_decoder(step, search, vocab.never_generated)
    out = []
    for s in range(0, len(maps), 50):
        for found in beam_candidates(
            decoder, maps[s : s + 50], vocab.start_id, vocab.end_id, search.max_length, width, search.length_alpha
        ):
            scored: dict[str, float] = {}
            for h in found:
                text = " ".join(vocab.decode(strip_end(h.token_ids, vocab.end_id)))
                norm = normalised_score(h, search.length_alpha)
                scored[text] = max(norm, scored.get(text, -np.inf))
            out.append(sorted(scored.items(), key=lambda kv: -kv[1]))
    return out


def oracle_findability(cands: Sequence[Sequence[tuple[str, float]]], refs: Sequence[Sequence[str]]) -> list[str]:
    """Per image, the candidate its own queries (references #2-#5) find best (E[1/rank]), the other
    images' documents being the search's choices: an oracle that reads the dev answers."""
    from model.retrieval_metrics import BM25Index, reciprocal_rank_among

    top = [c[0][0] for c in cands]
    index = BM25Index(top)
    chosen = []
    for i, options in enumerate(cands):
        queries = refs[i][1:5]
        others = [np.delete(index.scores(q), i) for q in queries]

        found = [
            np.mean([reciprocal_rank_among(o, index.score_outside(q, text)) for o, q in zip(others, queries)])
            for text, _ in options
        ]
        chosen.append(options[int(np.argmax(found))][0])
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    from training.splits import add_data_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(p, with_dev=False)
    p.add_argument("--model", default=str(REPO / "models" / "flickr8k-xception"))
    p.add_argument("--widths", type=int, nargs="+", default=[2, 5])
    p.add_argument("--neighbours", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--mu", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    args = p.parse_args(argv)

    from model.artifact import read_artifact
    from model.attention_decoder import make_attention_step_model
    from model.bleu import bleu_tokens
    from model.caption_metrics import CiderD
    from model.captioner import build_decoders
    from training.attention_data import dev_quality
    from training.datasets import CaptionedImage
    from training.evaluate import caption_scores
    from training.splits import load_split_features

    contents = read_artifact(args.model)
    enc = contents.config.encoder
    weights = args.encoder_weights or contents.encoder_weights
    items, maps, _ = load_split_features(args, "dev", enc.name, weights, enc.image_size, spatial=True)
    train, train_maps, _ = load_split_features(args, "train", enc.name, weights, enc.image_size, spatial=True)
    train_vectors = pooled(train_maps)  # built once, as an artifact would carry it
    started = time.perf_counter()
    nearest = np.argsort(-(pooled(maps) @ train_vectors.T), axis=1)[:, : max(args.neighbours)]
    knn_ms = (time.perf_counter() - started) * 1000 / len(items)
    del train_maps
    train_refs = [[bleu_tokens(c) for c in it.captions] for it in train]
    cider = CiderD(train_refs)
    refs = [it.captions for it in items]
    ref_tokens = [[bleu_tokens(c) for c in r] for r in refs]
    # the two CIDEr-D oracles' references, prepared once for every width: all five, and #1 alone
    dev_cider, first = CiderD(ref_tokens), CiderD([r[:1] for r in ref_tokens])
    all_prepared = [dev_cider.prepare(r) for r in ref_tokens]
    first_prepared = [first.prepare(r[:1]) for r in ref_tokens]
    step = make_attention_step_model(build_decoders(contents))

    rows = []

    later = [CaptionedImage(it.image_id, it.uri, tuple(it.captions[1:5])) for it in items]

    def row(name: str, captions: Sequence[str]) -> None:
        words = [c.split() for c in captions]
        q, held_out = dev_quality(words, items), caption_scores(words, later)
        rows.append([name, *(round(q[c], 4) for c in COLUMNS), *(round(held_out[c], 4) for c in ("bleu4", "cider_d"))])
        print(table(["choice", *COLUMNS, *HELD_OUT], [rows[-1]]).splitlines()[-1], flush=True)

    for width in args.widths:
        cands = candidates(contents, step, maps, width)
        mean = float(np.mean([len(c) for c in cands]))
        row(f"beam {width}: the search's choice ({mean:.2f} candidates per image)", [c[0][0] for c in cands])
        truth = [[dev_cider.score(bleu_tokens(t), all_prepared[i]) for t, _ in c] for i, c in enumerate(cands)]
        row(
            f"beam {width}: oracle, best CIDEr-D against the references",
            [c[int(np.argmax(s))][0] for c, s in zip(cands, truth)],
        )
        row(f"beam {width}: oracle, best findability for its own queries", oracle_findability(cands, refs))
        one = [[first.score(bleu_tokens(t), first_prepared[i]) for t, _ in c] for i, c in enumerate(cands)]
        row(
            f"beam {width}: oracle, best CIDEr-D against reference #1 alone",
            [c[int(np.argmax(s))][0] for c, s in zip(cands, one)],
        )
        for k in args.neighbours:
            started = time.perf_counter()
            consensus = []
            for i, c in enumerate(cands):
                prepared = cider.prepare([r for j in nearest[i, :k] for r in train_refs[j]])
                consensus.append(np.asarray([cider.score(bleu_tokens(t), prepared) for t, _ in c]))
            scoring_ms = (time.perf_counter() - started) * 1000 / len(cands)
            for mu in args.mu:
                chosen = [
                    c[int(np.argmax(s + mu * np.asarray([lp for _, lp in c])))][0] for c, s in zip(cands, consensus)
                ]
                row(f"beam {width}: consensus, k {k}, mu {mu} (CIDEr-D {scoring_ms:.2f} ms / image)", chosen)
    print(
        f"\nmachine: {machine()}; model {contents.model_id}; dev {len(items)} images, float32 maps; "
        f"nearest training images (pooling, cosine, sort; all dev at once): {knn_ms:.2f} ms / image\n"
    )
    print(table(["choice", *COLUMNS, *HELD_OUT], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
