"""Fast start: with the OpenVINO graphs in the cache, a whole pipeline run (driver checks, model
load, captioning) imports neither TensorFlow nor Keras (seconds of start-up); the first run,
which converts the graphs, still does. Measured by bench/bench_startup.py (docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
from beam_pipeline.pipeline import run
summary = run(sys.argv[1:])
print(json.dumps({"captioned": summary["captioned"],
                  "imported": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


def _run(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("artifact", ["tiny_artifact", "tiny_attention_artifact"])
def test_a_run_with_cached_graphs_imports_no_tensorflow(artifact, tmp_path, request):
    from tests.factories import write_jpeg

    tiny_artifact = request.getfixturevalue(artifact)  # merge decoders, or attention decoders over the map

    for i in range(3):
        write_jpeg(tmp_path / "images" / f"img{i}.jpg", size=(64, 64), seed=i)
    common = [
        "--input",
        f"{tmp_path}/images/*.jpg",
        "--model",
        tiny_artifact,
        "--encoder_runtime",
        "openvino",
        "--model_cache_dir",
        str(tmp_path / "cache"),
        "--progress_seconds",
        "0",
    ]
    first = _run(common + ["--output", str(tmp_path / "out1")])
    assert first == {"captioned": 3, "imported": ["keras", "tensorflow"]}  # converting the graphs needs them
    second = _run(common + ["--output", str(tmp_path / "out2")])
    assert second == {"captioned": 3, "imported": []}
