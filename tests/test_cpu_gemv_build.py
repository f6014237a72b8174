"""The C++ CPU kernel says when it compiles (about 30 s) and how long it took, and says nothing when it is already built.

A newcomer's first load_model() must not sit silent for most of a minute; a notebook whose kernel is already built
must not grow an output. Nothing is compiled here: torch.utils.cpp_extension.load is replaced by a stand-in.
"""
from __future__ import annotations

import os

import pytest
from torch.utils import cpp_extension

from kvlab.kernels import cpu_gemv


@pytest.fixture
def build_dir(tmp_path, monkeypatch):
    """An empty extensions folder, and a load() that 'compiles' by writing the library there."""
    monkeypatch.setattr(cpu_gemv, "built_library", lambda name: tmp_path / name / f"{name}.so")
    compiled = []

    def fake_load(name, sources, **kwargs):
        library = tmp_path / name / f"{name}.so"
        library.parent.mkdir(exist_ok=True)
        library.write_bytes(b"")
        compiled.append(name)
        return str(library)  # what load(is_python_module=False) returns

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    return compiled


def test_a_first_build_is_announced_before_and_timed_after(build_dir, capsys):
    module = cpu_gemv.build_gemv()
    assert module.name == build_dir[0]  # the namespace the library registers its operators in
    out = capsys.readouterr().out
    assert out.startswith(cpu_gemv.BUILDING + " ")
    assert out.rstrip().endswith(" s") and "built in " in out


def test_loading_a_build_already_there_prints_nothing(build_dir, capsys):
    cpu_gemv.build_gemv()
    capsys.readouterr()
    cpu_gemv.build_gemv()
    assert capsys.readouterr().out == ""


def test_a_source_newer_than_the_build_is_announced_again(build_dir, capsys):
    cpu_gemv.build_gemv()
    capsys.readouterr()
    library = cpu_gemv.built_library(build_dir[0])
    oldest_source = min(source.stat().st_mtime for source in cpu_gemv.SOURCES)
    os.utime(library, (oldest_source - 60, oldest_source - 60))
    cpu_gemv.build_gemv()
    assert capsys.readouterr().out.startswith(cpu_gemv.BUILDING)


def test_a_failed_build_ends_its_line_and_the_lab_falls_back_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cpu_gemv, "built_library", lambda name: tmp_path / f"{name}.so")

    def no_compiler(name, sources, **kwargs):
        raise RuntimeError("Error building extension: c++ not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(cpu_gemv, "_loaded", {})
    monkeypatch.setenv("KVLAB_CPU_GEMV", "1")
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert cpu_gemv.load_gemv() is None
    assert capsys.readouterr().out == cpu_gemv.BUILDING + " failed\n"


def test_the_install_step_says_already_built_when_it_is(build_dir, monkeypatch, capsys):
    monkeypatch.setenv("KVLAB_CPU_GEMV", "1")
    cpu_gemv.build_gemv()
    capsys.readouterr()
    cpu_gemv.build_for_install()
    assert capsys.readouterr().out.startswith("kvlab's C++ CPU kernel: already built (")


def test_a_build_leaves_the_flags_that_name_the_next_build_unchanged(monkeypatch):
    """torch's loader appends to the flag lists it is given: kvlab must hand it copies, or each later build (the
    test suite's instruction-set variants) gets a new name and compiles again."""
    from torch.utils import cpp_extension

    def load(name, sources, extra_cflags, extra_ldflags, is_python_module, verbose):
        extra_cflags.append("-DMUTATED")  # what torch does to extra_ldflags
        extra_ldflags.append("-L/torch/lib")
        return f"/ext/{name}.so"

    monkeypatch.setattr(cpp_extension, "load", load)
    names = [cpu_gemv._build_name(cpu_gemv.COMPILE_FLAGS + ["-mno-avx512f"])]
    cpu_gemv.build_gemv(("-mno-avx512f",))
    names.append(cpu_gemv._build_name(cpu_gemv.COMPILE_FLAGS + ["-mno-avx512f"]))
    assert names[0] == names[1] and "-L/torch/lib" not in cpu_gemv.LINK_FLAGS
