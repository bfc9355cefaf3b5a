"""serving.cache: the LRU bounded in bytes, and /v1/generate answering repeated (model file, class,
seed, psi, format, size) requests from it without running the generator; counters in /metrics and
the v2 statistics; `--cache-mb 0` turns it off."""

from __future__ import annotations

import re

import pytest

from serving.core.cache import ENTRY_OVERHEAD_BYTES, CachedResponse, CacheKey, ResponseCache

pytestmark = pytest.mark.serving


def _key(seed: int, model: str = "m", sha: str = "a" * 64) -> CacheKey:
    return CacheKey(sha, model, 0, seed, 1.0, "png", 1, None)


def _response(n_bytes: int) -> CachedResponse:
    return CachedResponse(b"x" * n_bytes, "image/png", {"X-Seed": "0"})


def test_lru_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    size = 1000 + ENTRY_OVERHEAD_BYTES
    cache = ResponseCache(3 * size)
    for seed in range(3):
        cache.put(_key(seed), _response(1000))
    assert len(cache) == 3 and cache.bytes == 3 * size
    assert cache.get(_key(0)) is not None  # 0 is now the most recently used
    cache.put(_key(3), _response(1000))  # over budget: evicts 1, the least recently used
    assert cache.get(_key(1)) is None and cache.get(_key(0)) is not None
    assert len(cache) == 3 and cache.bytes == 3 * size
    cache.put(_key(4), _response(2500))  # a large one pushes out as many as it needs
    assert cache.bytes <= cache.max_bytes and cache.get(_key(4)) is not None
    cache.put(_key(5), _response(4 * size))  # larger than the whole budget: not kept
    assert cache.get(_key(5)) is None and cache.get(_key(4)) is not None
    cache.put(_key(4), _response(10))  # replacing an entry re-counts its bytes
    assert cache.bytes == sum(r.size for r in cache._entries.values())


def test_hits_and_misses_are_counted_per_model_and_keys_differ_by_file():
    cache = ResponseCache(1 << 20)
    cache.put(_key(0, "a"), _response(10))
    assert cache.get(_key(0, "a")) is not None and cache.get(_key(1, "a")) is None
    assert cache.get(_key(0, "a", sha="b" * 64)) is None  # same name, another file
    assert cache.hits == {"a": 1} and cache.misses == {"a": 2}
    with pytest.raises(ValueError, match="max_bytes=0"):
        ResponseCache(0)


# --- through the app ----------------------------------------------------------------------------

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")


def _app_client(model, cache_mb):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.core.engine import Engine, EngineConfig

    return TestClient(create_app(Engine(model, EngineConfig(max_batch=8)), max_images=16,
                                 cache_mb=cache_mb))


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("fmt", ["png", "npy", "json"])
def test_a_repeated_request_is_answered_from_the_cache_without_a_run(tiny_onnx, fmt):
    with _app_client(tiny_onnx, cache_mb=4) as client:
        body = {"class": 2, "n": 3, "seed": 11, "truncation": 0.7, "format": fmt}
        first = client.post("/v1/generate", json=body)
        images_total = 'bigan_images_generated_total{model="model"}'
        images = _metric(client.get("/metrics").text, images_total)
        second = client.post("/v1/generate", json=body)
        assert first.status_code == second.status_code == 200
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert second.content == first.content
        for header in ("content-type", "x-seed", "x-truncation", "x-class-id"):
            assert second.headers[header] == first.headers[header]
        text = client.get("/metrics").text
        assert _metric(text, images_total) == images == 3  # no second run
        assert _metric(text, 'bigan_cache_hits_total{model="model"}') == 1
        assert _metric(text, 'bigan_cache_misses_total{model="model"}') == 1
        assert _metric(text, "bigan_cache_entries") == 1
        assert _metric(text, "bigan_cache_bytes") >= len(first.content)
        stats = client.get("/v2/models/model/stats").json()["model_stats"][0]["inference_stats"]
        assert stats["cache_hit"]["count"] == 1 and stats["cache_miss"]["count"] == 1


def test_each_part_of_the_key_makes_another_entry(tiny_onnx):
    with _app_client(tiny_onnx, cache_mb=4) as client:
        base = {"class": 1, "n": 2, "seed": 5, "truncation": 0.8, "format": "npy"}
        variants = [{}, {"class": 2}, {"seed": 6}, {"truncation": 0.9}, {"truncation": None},
                    {"format": "png"}, {"n": 1}, {"format": "png", "columns": 1}]
        answers = [client.post("/v1/generate", json={**base, **v}) for v in variants]
        assert [a.headers["x-cache"] for a in answers] == ["miss"] * len(variants)
        assert client.post("/v1/generate", json=base).headers["x-cache"] == "hit"
        # A random seed is drawn per request: not cached, not counted.
        drawn = client.post("/v1/generate", json={"class": 1, "format": "npy"})
        assert drawn.status_code == 200 and "x-cache" not in drawn.headers
        text = client.get("/metrics").text
        assert _metric(text, "bigan_cache_entries") == len(variants)
        assert _metric(text, 'bigan_cache_misses_total{model="model"}') == len(variants)


def test_a_replaced_model_file_is_never_answered_from_the_old_files_entries(tiny_onnx, tmp_path):
    from serving.core.engine import Engine

    import onnx

    model = onnx.load(str(tiny_onnx))  # same graph and name, another export time: other bytes
    for prop in model.metadata_props:
        if prop.key == "exported_at":
            prop.value = "2000-01-01T00:00:00+00:00"
    other = tmp_path / "model.onnx"
    onnx.save(model, str(other))
    old, new = Engine(tiny_onnx), Engine(other)
    assert old.name == new.name and old.sha256 != new.sha256
    assert _key(0, sha=old.sha256) != _key(0, sha=new.sha256)


def test_cache_mb_0_turns_the_cache_off(tiny_onnx):
    with _app_client(tiny_onnx, cache_mb=0) as client:
        body = {"class": 0, "seed": 1, "format": "npy"}
        answers = [client.post("/v1/generate", json=body) for _ in range(2)]
        assert all(a.status_code == 200 and "x-cache" not in a.headers for a in answers)
        text = client.get("/metrics").text
        assert "bigan_cache" not in text
        assert _metric(text, 'bigan_images_generated_total{model="model"}') == 2
    with pytest.raises(ValueError, match="cache_mb=-1"):
        _app_client(tiny_onnx, cache_mb=-1)


def test_serve_command_has_cache_mb(capsys):
    from bigan.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--cache-mb" in capsys.readouterr().out
    assert main(["serve", "x.onnx", "--cache-mb", "-2"]) == 2
    assert "cache_mb=-2.0 must be >= 0" in capsys.readouterr().err
