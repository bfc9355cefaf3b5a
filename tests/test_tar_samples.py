"""Reading samples out of tar shards (bigan/data/tar_samples.py): the formats other tools
write, and damaged or cut archives ending cleanly with a status."""

from __future__ import annotations

import io
import tarfile

import pytest

from bigan.data.tar_samples import TarStatus, tar_samples
from tests.helpers import png_bytes, write_tar

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_handles_long_names_prefixes_and_other_members(tmp_path, fmt):
    deep = "d" * 120 + "/sub"  # > 100 chars: ustar prefix, GNU long name or pax path
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in ((f"{deep}/k1.cls", b"1"), (f"{deep}/k1.PNG", b"png"),
                           ("__meta__.json", b"{}"), ("k2.cls", b"2"), ("k2.jpg", b"j"),
                           ("k2.jpg", b"dup"), ("noext", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    status = TarStatus()
    samples = list(tar_samples(str(path), status))
    assert status.clean and not status.error
    assert samples == [{"__key__": f"{deep}/k1", "cls": b"1", "png": b"png"},
                       {"__key__": "k2", "cls": b"2", "jpg": b"j"}]


def test_tar_reader_stops_cleanly_on_damage(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, [(f"k{i}", {"cls": b"0", "png": png_bytes(i)}) for i in range(3)])
    raw = path.read_bytes()
    second = raw.find(b"k1.cls")
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]
        end_of_data = last.offset_data + -(-last.size // 512) * 512
    for cut, n, dropped in ((end_of_data, 3, False),  # no end-of-archive marker: all there
                            (raw.find(b"k1.png") + 512 + 30, 1, True),  # inside k1's image
                            (second, 1, False)):  # exactly between samples
        path.write_bytes(raw[:cut])
        status = TarStatus()
        assert len(list(tar_samples(str(path), status))) == n
        assert not status.clean and status.error and status.dropped_partial == dropped
    damaged = bytearray(raw)
    damaged[second + 130] ^= 0x55  # inside k1.cls's header: checksum fails
    path.write_bytes(bytes(damaged))
    status = TarStatus()
    assert len(list(tar_samples(str(path), status))) == 1 and "checksum" in status.error
