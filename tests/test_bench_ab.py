"""The A/B harness passes the same run_pipeline.py arguments to both builds.

``--extra`` was once ``nargs="*"``: ``--extra=--model --extra=DIR`` kept only ``DIR`` (a stray
positional the pipeline ignored), so each build captioned with its own default model and the A/B
timed two models instead of two builds."""

from bench.bench_ab import build_parser


def test_repeated_extra_keeps_every_argument_in_order():
    args = build_parser().parse_args(
        ["--baseline", "/tmp/a", "--extra=--model", "--extra=/m/dir", "--extra=--read_concurrency", "--extra=1"]
    )
    assert args.extra == ["--model", "/m/dir", "--read_concurrency", "1"]


def test_no_extra_means_no_arguments():
    assert build_parser().parse_args(["--baseline", "/tmp/a"]).extra == []
