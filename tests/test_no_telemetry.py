"""The model core keeps OpenVINO's converter and NNCF from sending usage telemetry (they would
start a child process that posts to Google Analytics on every graph conversion)."""

from __future__ import annotations

import subprocess
import sys


def test_openvino_converter_and_nncf_use_their_no_op_telemetry_stubs():
    code = (
        "import model\n"
        "import openvino.tools.ovc.telemetry_utils as ovc\n"
        "from nncf.telemetry import wrapper\n"
        "print(ovc.tm.__name__, isinstance(wrapper.telemetry, wrapper.NNCFTelemetry))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "False"]
