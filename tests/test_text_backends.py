"""What the learned backend promises for every text model in the registry
(:class:`amdcompress.learned.LearnedBackend`), pinned once for all of them:
checked weights, any bytes round-trip with the shipped model, and one-line
errors for bad weights and bad payloads."""
from __future__ import annotations


import numpy as np
import pytest

from amdcompress import api, backends
from amdcompress.codecs.errors import AmdError
from amdcompress.formats import BYTES, IMAGE_PNM, Data
from amdcompress.codecs.textstream import ALPHABET
from amdcompress.learned import LearnedBackend
from amdcompress.models import registry
from conftest import backend_for

TEXT_BACKENDS = [b for b in backends.all_backends() if b.learned and b.entry.data == "text"]
IDS = [b.name for b in TEXT_BACKENDS]
SAMPLE = b"the cat sat on the mat. Then: 42 dogs \xe2\x80\x94 caf\xc3\xa9!\n"


def data(raw: bytes) -> Data:
    return Data(BYTES, np.frombuffer(raw, dtype=np.uint8))


def test_every_text_model_is_covered():
    assert {"argmax", "argmax-coupling", "discrete-flow", "diffusion"} <= set(IDS)


@pytest.mark.parametrize("backend", TEXT_BACKENDS, ids=IDS)
def test_missing_weights_one_line_error(backend, tmp_path):
    b = LearnedBackend(backend.entry, weights_dir=tmp_path)
    assert not b.available() and not b.accepts(data(b"abc"))
    with pytest.raises(AmdError, match="not installed") as e:
        b.encode(data(b"abc"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend", TEXT_BACKENDS, ids=IDS)
def test_hash_mismatch_refused(backend, tmp_path):
    if not backend.available():
        pytest.skip(f"{backend.name} weights not installed")
    name = backend.newest.name
    bad = registry.weights_path(name, tmp_path)
    bad.write_bytes(registry.weights_path(name).read_bytes()[:-1] + b"!")
    with pytest.raises(AmdError, match="corrupt or replaced: sha256") as e:
        LearnedBackend(backend.entry, weights_dir=tmp_path).encode(data(b"abc"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend", TEXT_BACKENDS, ids=IDS)
def test_junk_weights_file_refused(backend, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a weights file")
    with pytest.raises(AmdError, match="weights") as e:
        backend_for(backend.name, junk).encode(data(b"abc"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend", TEXT_BACKENDS, ids=IDS)
def test_shipped_model_round_trips_and_rejects_bad_payloads(backend, monkeypatch):
    if not backend.available():
        pytest.skip(f"{backend.name} weights not installed")
    monkeypatch.setenv("AMDCOMPRESS_DIFFUSION_STEPS", "10")  # a short chain: same code path, 10x faster
    for raw in (b"", b"a", SAMPLE):
        blob = api.compress(raw, model=backend.name)
        assert api.decompress(blob) == raw
        assert api.info(blob).as_dict()["model"] == backend.name
    details = api.info(api.compress(SAMPLE, model=backend.name)).details
    assert details["escaped_input_bytes"] == sum(b not in ALPHABET for b in SAMPLE) > 0
    assert details["model_stream_bytes"] > 0 and details["escape_bytes"] > 0
    if backend.name == "diffusion":
        assert details["chain_steps"] == 10
    payload = backend.encode(data(SAMPLE))
    n = (len(SAMPLE),)
    for bad in (payload[: len(payload) // 2], payload[:-3], b"\xff" * len(payload), b""):
        try:  # a backend may decode a damaged payload to something; the container's CRC judges it
            backend.decode(bad, BYTES, n)
        except AmdError as e:
            assert "\n" not in str(e)
    blob = api.compress(SAMPLE, model=backend.name)
    for i in range(len(blob) - 1, len(blob) - 40, -3):  # damage the payload byte by byte
        hurt = bytearray(blob)
        hurt[i] ^= 0x5A
        try:
            assert api.decompress(bytes(hurt)) == SAMPLE
        except AmdError as e:
            assert "\n" not in str(e)
    with pytest.raises(AmdError, match="bytes only"):
        backend.decode(payload, IMAGE_PNM, (2, 2, 3))
    with pytest.raises(AmdError):
        backend.encode(Data(IMAGE_PNM, np.zeros((2, 2, 3), dtype=np.uint8)))


def test_info_shows_escapes_on_the_command_line(tmp_path, capsys):
    from amdcompress.cli import main

    backend = next((b for b in TEXT_BACKENDS if b.available()), None)
    if backend is None:
        pytest.skip("no text model installed")
    src = tmp_path / "t.txt"
    src.write_bytes(SAMPLE)
    assert main(["encode", "-q", "-m", backend.name, str(src), "-o", str(tmp_path / "t.amd")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "t.amd")]) == 0
    out = capsys.readouterr().out
    assert f"model:       {backend.name}" in out
    assert f"escaped input bytes: {sum(b not in ALPHABET for b in SAMPLE)}" in out
