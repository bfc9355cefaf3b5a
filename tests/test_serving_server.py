"""`serving.server`: `bigan serve` refuses an address it cannot listen on with one line and exit 2
(issue 33): a host that resolves but is not this machine's, a port another process holds. Before,
the models loaded first and uvicorn then exited 3 with its own lines. Real `bigan serve`
processes, real sockets."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.serving

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")

# Documentation ranges (RFC 5737): they resolve, being numbers, and are rarely a local address;
# the test uses the first one this machine cannot bind (192.0.2.2 is this container's own).
CANDIDATES = ["192.0.2.1", "198.51.100.7", "203.0.113.9"]


def _foreign_address() -> str:
    for address in CANDIDATES:
        with socket.socket() as sock:
            try:
                sock.bind((address, 0))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    return address
    pytest.skip(f"every one of {CANDIDATES} is an address of this machine")


def _serve(model, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigan.cli", "serve", str(model), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_host_that_resolves_but_is_not_this_machines_gets_one_line(tiny_onnx):
    address = _foreign_address()
    done = _serve(tiny_onnx, "--host", address, "--port", "8123")
    assert done.returncode == 2, done.stderr  # the CLI's exit code for a bad argument
    assert done.stderr.count("\n") == 1, done.stderr  # one line: no model-loading log, no uvicorn
    assert done.stderr.startswith(f"bigan serve: error: --host {address}: cannot listen on this "
                                  "address"), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_port_in_use_gets_one_line(tiny_onnx):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _serve(tiny_onnx, "--host", "127.0.0.1", "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"bigan serve: error: --port {port}: already in use on "
                                  "127.0.0.1"), done.stderr


def test_a_bindable_address_passes():
    from serving.server import BindError, check_bindable

    check_bindable("127.0.0.1", 0)
    check_bindable("localhost", 0)
    with pytest.raises(BindError, match=r"^--host 192\.0\.2\.|^--host 198|^--host 203"):
        check_bindable(_foreign_address(), 0)
