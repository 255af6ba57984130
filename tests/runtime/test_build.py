"""The native build: clear errors without a compiler or headers, and one compile when many ask at once."""

import threading
import time

import pytest

from mlprune_fx.runtime import build


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler found.*Install g\\+\\+"):
        build._compiler()


def test_missing_or_wrong_headers_say_how_to_supply_them(tmp_path, monkeypatch):
    with pytest.raises(build.BuildError, match="--ort-include=.*does not hold.*MLPRUNE_ORT_INCLUDE"):
        build.find_ort_include(str(tmp_path))
    monkeypatch.delenv("MLPRUNE_ORT_INCLUDE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(build.BuildError, match="headers not found.*--ort-include"):
        build.find_ort_include(fetch=False)


def test_concurrent_builds_compile_once(tmp_path, monkeypatch):
    """Test workers or ranks that all find the libraries stale: the first compiles, the rest wait for it."""
    source = tmp_path / "kernel.cpp"
    source.write_text("")
    monkeypatch.setattr(build, "output_dir", lambda sanitize=False: tmp_path / "out")
    monkeypatch.setattr(build, "_sources", lambda: [source])
    compiled = []

    def fake_compile(out, ort_include, quiet, sanitize):
        compiled.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other callers to reach the lock
        for lib in (build.TORCH_LIB, build.ORT_LIB):
            (out / lib.name).write_text("")
        return build.BuildResult(out / build.TORCH_LIB.name, out / build.ORT_LIB.name, rebuilt=True)

    monkeypatch.setattr(build, "_compile_and_link", fake_compile)
    results = []
    threads = [threading.Thread(target=lambda: results.append(build.build(quiet=True))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(compiled) == 1
    assert sorted(r.rebuilt for r in results) == [False, False, True]
