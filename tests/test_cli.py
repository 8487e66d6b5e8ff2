"""The command line: gzip/zstd conventions, one-line errors, no partial or
overwritten files. Most tests call ``main(argv)``; one spawns the installed
console script the way a user would."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from amdcompress.cli import main


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"the quick brown fox jumps over the lazy dog " * 200)
    return p


@pytest.mark.slow
def test_encode_decode_default_names(tmp_path, text_file):
    assert main(["encode", "-q", str(text_file)]) == 0
    amd = tmp_path / "a.txt.amd"
    assert amd.exists()
    original = text_file.read_bytes()
    text_file.unlink()
    assert main(["decode", "-q", str(amd)]) == 0
    assert text_file.read_bytes() == original


@pytest.mark.slow
def test_refuses_overwrite_without_force(tmp_path, text_file, capsys):
    out = tmp_path / "x.amd"
    out.write_bytes(b"keep me")
    assert main(["encode", str(text_file), "-o", str(out)]) == 1
    assert out.read_bytes() == b"keep me"
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    assert main(["encode", "-q", "-f", str(text_file), "-o", str(out)]) == 0
    assert out.read_bytes()[:3] == b"AMD"


@pytest.mark.slow
def test_never_overwrites_input(tmp_path, text_file):
    before = text_file.read_bytes()
    assert main(["encode", "-f", str(text_file), "-o", str(text_file)]) == 1
    assert text_file.read_bytes() == before


@pytest.mark.parametrize("content,msg", [
    (b"", "bad magic"), (b"GIF89a....", "bad magic"), (b"AMD\x01", "truncated"),
])
def test_bad_amd_files_fail_cleanly(tmp_path, capsys, content, msg):
    bad = tmp_path / "bad.amd"
    bad.write_bytes(content)
    assert main(["decode", str(bad)]) == 1
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.amd"]  # no temp file left behind


@pytest.mark.slow
def test_corrupt_payload_leaves_no_output(tmp_path, text_file):
    amd = tmp_path / "a.amd"
    assert main(["encode", "-q", str(text_file), "-o", str(amd)]) == 0
    b = bytearray(amd.read_bytes())
    b[-5] ^= 0xFF
    amd.write_bytes(bytes(b))
    assert main(["decode", str(amd), "-o", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_missing_input_and_unknown_model(tmp_path, text_file, capsys):
    assert main(["encode", str(tmp_path / "nope")]) == 1
    assert main(["encode", "--model", "nope", str(text_file)]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "unknown model" in err


def test_decode_needs_amd_suffix_or_output(tmp_path, text_file, capsys):
    assert main(["decode", str(text_file)]) == 1
    assert "suffix" in capsys.readouterr().err


def test_info_json_and_models(tmp_path, capsys):
    img = tmp_path / "g.png"
    Image.fromarray(np.arange(23 * 37, dtype=np.uint8).reshape(23, 37) % 251, mode="L").save(img)
    assert main(["encode", "-q", str(img)]) == 0
    capsys.readouterr()
    assert main(["info", "--json", str(img) + ".amd"]) == 0
    i = json.loads(capsys.readouterr().out)
    assert i["kind"] == "png" and i["shape"] == [23, 37, 1] and i["bits_per_dim"] > 0
    assert main(["models", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"store", "lzma", "jxl"} <= names
    assert main(["test", str(img) + ".amd"]) == 0


@pytest.mark.slow
def test_stdin_stdout_through_installed_script(tmp_path):
    exe = shutil.which("amdcompress")
    if exe is None:
        pytest.skip("console script not installed")
    raw = bytes(range(256)) * 40
    enc = subprocess.run([exe, "encode", "-"], input=raw, capture_output=True, check=True)
    assert enc.stdout[:3] == b"AMD"
    dec = subprocess.run([exe, "decode", "-"], input=enc.stdout, capture_output=True, check=True)
    assert dec.stdout == raw
    bad = subprocess.run([exe, "decode", "-"], input=b"garbage", capture_output=True)
    assert bad.returncode == 1 and bad.stdout == b"" and bad.stderr.count(b"\n") == 1


@pytest.mark.slow
def test_python_dash_m_entry(tmp_path, text_file):
    r = subprocess.run([sys.executable, "-m", "amdcompress", "encode", "-q", str(text_file)], capture_output=True)
    assert r.returncode == 0, r.stderr
