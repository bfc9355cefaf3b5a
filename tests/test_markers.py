"""The group rules of tests/conftest.py, run on throwaway test files by pytest's own `pytester`:
a test without exactly one group marker fails collection with its id named, even when `-m`
would have deselected it, and a `gpu` test is skipped with the reason exactly when CUDA is
missing."""

from __future__ import annotations

import pytest
import torch

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.unit

CONFTEST = "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"


def test_a_test_without_exactly_one_group_fails_collection_naming_it(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_groups="""
        import pytest

        def test_plain():
            pass

        @pytest.mark.unit
        @pytest.mark.e2e
        def test_two_groups():
            pass

        @pytest.mark.unit
        def test_marked():
            pass
    """)
    result = pytester.runpytest("-m", "unit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*every test needs exactly one group marker*",
                                 "*test_groups.py::test_plain: no group marker",
                                 "*test_groups.py::test_two_groups: e2e, unit"])
    assert "test_marked" not in result.stderr.str()


def test_one_group_per_test_collects(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_groups="""
        import pytest

        pytestmark = pytest.mark.dist

        def test_a():
            pass
    """)
    assert pytester.runpytest().ret == pytest.ExitCode.OK


@pytest.mark.parametrize("cuda", [False, True])
def test_gpu_tests_skip_with_the_reason_only_without_cuda(pytester, monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gpu="""
        import pytest

        @pytest.mark.unit
        @pytest.mark.gpu
        def test_on_cuda():
            pass
    """)
    result = pytester.runpytest("-rs")
    if cuda:
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*needs a CUDA GPU (marked gpu)*is False here*"])
