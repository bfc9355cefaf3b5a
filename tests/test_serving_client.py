"""`python -m serving.client --start MODEL`: the smoke run `make demo` ends with (a real server
process on a free loopback port, one grid over HTTP, the server stopped)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.serving, pytest.mark.slow]


def test_client_starts_a_server_fetches_a_grid_and_stops_it(tiny_onnx, tmp_path):
    out = tmp_path / "served.png"
    done = subprocess.run([sys.executable, "-m", "serving.client", "--start", str(tiny_onnx),
                           "--class", "1", "--n", "4", "--seed", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 images of class 1" in done.stdout
    grid = np.asarray(Image.open(io.BytesIO(out.read_bytes())).convert("RGB"))
    assert grid.shape[0] >= 32 and grid.shape[1] >= 64 and grid.std() > 0  # 4 tiles of 32 px


def test_client_reports_a_bad_class_as_the_servers_message(tiny_onnx, tmp_path):
    done = subprocess.run([sys.executable, "-m", "serving.client", "--start", str(tiny_onnx),
                           "--class", "no-such-class", "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1
    error = next(line for line in done.stderr.splitlines() if line.startswith("serving.client: error:"))
    assert error.startswith("serving.client: error: 4") and "no-such-class" in error
    assert not (tmp_path / "x.png").exists()
