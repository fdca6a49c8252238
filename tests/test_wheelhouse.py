"""scripts/gpu/wheelhouse.sh's pip commands (the download itself, about 4 GB, ran by hand: README)."""

from __future__ import annotations

import os
import sys
import subprocess

from conftest import REPO


def test_wheelhouse_builds_the_sdists_once_and_downloads_for_the_node(tmp_path):
    """DeepSpeed and pylatexenc have only sdists on PyPI: their wheels are built (once) and seen by the
    resolver; everything else is downloaded as Python 3.12 manylinux wheels, for every glibc tag up to
    2.35 (torch 2.11 needs nvidia-nccl-cu13 2.28.9, whose only wheel is manylinux_2_18)."""
    log, bin_, out = tmp_path / "log", tmp_path / "bin", tmp_path / "wh"
    bin_.mkdir()
    # a stand-in python3: logs each pip command; `pip wheel NAME==V -w DIR` leaves NAME-V-py3-none-any.whl
    (bin_ / "python3").write_text(f'''#!/bin/sh
echo "$*" >> {log}
if [ "$3" = wheel ]; then
  for a in "$@"; do case "$a" in *==*) spec="$a";; esac; done
  dir=$(echo "$*" | sed 's/.* -w //')
  touch "$dir/$(echo "$spec" | sed 's/==/-/')-py3-none-any.whl"
fi
''')
    (bin_ / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    for _ in range(2):
        r = subprocess.run(["bash", str(REPO / "scripts/gpu/wheelhouse.sh"), str(out)], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    builds = [c for c in calls if " wheel " in f" {c} "]
    assert builds == [f"-m pip wheel -q --no-deps deepspeed==0.19.6 -w {out}",
                      f"-m pip wheel -q --no-deps pylatexenc==2.10 -w {out}"]  # the second run reuses them
    downloads = [c.split() for c in calls if " download " in f" {c} "]
    assert len(downloads) == 4
    for d in downloads:
        assert d[d.index("--python-version") + 1] == "3.12" and "--only-binary=:all:" in d
        platforms = {d[i + 1] for i, a in enumerate(d) if a == "--platform"}
        assert {"manylinux2014_x86_64", "manylinux_2_18_x86_64", "manylinux_2_35_x86_64"} <= platforms
        assert "manylinux_2_36_x86_64" not in platforms
    assert all(d[d.index("-d") + 1] == str(out) for d in downloads)
    reqs, orlhf = downloads[:2]  # each run: the requirements (the built wheels found), then OpenRLHF alone
    assert reqs[-2:] == ["-r", "requirements-gpu.txt"] and reqs[reqs.index("--find-links") + 1] == str(out)
    assert orlhf[-1] == "openrlhf==0.11.2" and "--no-deps" in orlhf


def test_wheelhouse_with_have_downloads_only_what_the_node_lacks(tmp_path):
    """--have FILE: the whole set is resolved (pip's report), and only the packages FILE does not name
    (a * matches any part of a name; `pip freeze` lines work) are downloaded, the built wheels among
    them found locally."""
    import json

    log, bin_, out = tmp_path / "log", tmp_path / "bin", tmp_path / "wh"
    bin_.mkdir()
    report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in (
        ("torch", "2.11.0"), ("nvidia-cublas", "13.1.0.3"), ("nvidia-ml-py", "13.615.71"), ("vllm", "0.24.0"),
        ("Jinja2", "3.1.6"), ("deepspeed", "0.19.6"), ("apache_tvm_ffi", "0.1.9"))]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    # a stand-in python3: logs pip commands, writes the report asked for, runs the script's Python part
    (bin_ / "python3").write_text(f'''#!/bin/sh
if [ "$1" = - ]; then exec {sys.executable} "$@"; fi
echo "$*" >> {log}
case "$*" in *--report*) cp {tmp_path}/report.json "$(echo "$*" | sed 's/.*--report \\([^ ]*\\).*/\\1/')";; esac
if [ "$3" = wheel ]; then
  for a in "$@"; do case "$a" in *==*) spec="$a";; esac; done
  touch "$(echo "$*" | sed 's/.* -w //')/$(echo "$spec" | sed 's/==/-/')-py3-none-any.whl"
fi
''')
    (bin_ / "python3").chmod(0o755)
    (tmp_path / "have.txt").write_text("# the node\ntorch==2.11.0\nnvidia-cu*\njinja2 @ file:///x\n")
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(REPO / "scripts/gpu/wheelhouse.sh"), str(out), "--have", str(tmp_path / "have.txt")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    downloads = [c.split() for c in log.read_text().splitlines() if " download " in f" {c} "]
    assert downloads[0][-4:] == ["nvidia-ml-py==13.615.71", "vllm==0.24.0", "deepspeed==0.19.6", "apache_tvm_ffi==0.1.9"]
    assert "--no-deps" in downloads[0] and downloads[0][downloads[0].index("--find-links") + 1] == str(out)
    assert not (out / ".report.json").exists()
    bad = subprocess.run(["bash", str(REPO / "scripts/gpu/wheelhouse.sh"), str(out), "--have", str(tmp_path / "nope")],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: usage: wheelhouse.sh DIR [--have FILE]")
