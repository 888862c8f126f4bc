"""fastdeit._env: one cache folder for everything fastdeit caches (before: FASTDEIT_CACHE for the digits dataset,
XDG_CACHE_HOME for the batch sizes), and the progress-bar rule."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fastdeit._env import cache_dir, show_progress
from fastdeit.batch_size import default_cache_path
from fastdeit.data.digits import prepare_digits


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("FASTDEIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return monkeypatch


def test_cache_dir_rule(clean_env, tmp_path):
    assert cache_dir() == Path.home() / ".cache" / "fastdeit"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fastdeit"
    clean_env.setenv("FASTDEIT_CACHE_DIR", str(tmp_path / "mine"))  # the explicit setting wins
    assert cache_dir() == tmp_path / "mine"
    clean_env.setenv("FASTDEIT_CACHE_DIR", "")  # empty means unset
    assert cache_dir() == tmp_path / "xdg" / "fastdeit"


def test_every_cache_follows_the_one_rule(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path().parent == tmp_path / "fastdeit"
    assert prepare_digits(size=8) == tmp_path / "fastdeit" / "digits" / "8px"


def test_progress_only_on_a_terminal_unless_asked(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not show_progress(None) and show_progress(True)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert show_progress(None) and not show_progress(False)
