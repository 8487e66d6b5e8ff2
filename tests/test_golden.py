"""Golden streams: the .amd format, frozen as files (tests/golden/, made and
checked by tests/golden/make_golden.py; manifest.json says how each was made).

For every golden file: (a) it still decodes to its original input (bytes:
byte for byte; PNG: identical pixels, mode and size, what the API guarantees);
(b) compressing the input again with the same model and settings gives exactly
the committed bytes. (b) is the format freeze: a change to table quantization,
det_exp, a model's coding order, a stream head or the container fails it. If
the change is meant, the golden files must be remade on purpose
(``python tests/golden/make_golden.py --write``) and files made before it are
no longer readable unless the old path is kept: say so in the commit.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import amdcompress
from amdcompress import backends, container, formats

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
ENTRIES = MANIFEST["entries"]
CURRENT = [e for e in ENTRIES if not e["legacy"]]


def _decode_params():
    for e in ENTRIES:
        yield pytest.param(e, id=e["file"])


def _read(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def _same_content(original: bytes, decoded: bytes) -> None:
    """The API's guarantee: byte-identical, except PNG (identical pixels, mode and size)."""
    if formats.sniff(original).kind != formats.IMAGE_PNG:
        assert decoded == original
        return
    a, b = Image.open(io.BytesIO(original)), Image.open(io.BytesIO(decoded))
    assert (b.format, b.mode, b.size) == ("PNG", a.mode, a.size)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def _installed_weights(model: str) -> dict | None:
    from amdcompress.models import registry

    b = backends.by_name(model)
    if not b.learned:
        return None
    w = b.newest
    rec = json.loads(registry.record_path(w.name).read_text())
    assert rec["sha256"] == w.sha256 == registry.sha256_file(registry.weights_path(w.name))
    return {"name": w.name, "sha256": w.sha256, "tag": b.weights_tag()[:2].hex()}


def _set_env(monkeypatch, env: dict) -> None:
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)


def _first_difference(a: bytes, b: bytes) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    header = len(a) - len(container.unpack(a)[1])
    return f"first difference at byte {n} ({'header' if n < header else 'payload'}; header is {header} bytes)"


def test_manifest_covers_every_codec_and_file():
    models = {b.name for b in backends.all_backends() if not b.learned or b.available()}
    assert models <= {e["model"] for e in CURRENT}, "a codec without golden files: run make_golden.py --write"
    on_disk = {p.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("*.amd")}
    assert on_disk == {e["file"] for e in ENTRIES}
    for e in ENTRIES:
        assert hashlib.sha256(_read(e["input"])).hexdigest() == e["input_sha256"], e["input"]


@pytest.mark.parametrize("entry", list(_decode_params()))
def test_golden_file_decodes_to_its_input(entry):
    blob = _read(entry["file"])
    assert hashlib.sha256(blob).hexdigest() == entry["sha256"], "golden file changed without its manifest entry"
    header, _ = container.unpack(blob)
    assert header.codec_id == entry["codec_id"]
    assert formats.KIND_NAMES[header.kind] == entry["kind"] and list(header.shape) == entry["shape"]
    assert header.weights_tag.hex() == (entry["weights"]["tag"] if entry["weights"] else "0000")
    _same_content(_read(entry["input"]), amdcompress.decompress(blob))
    if entry["model"] == "diffusion":
        assert amdcompress.info(blob).details["chain_steps"] == entry["settings"]["diffusion_steps"]


def test_diffusion_default_chain_length_is_frozen(monkeypatch):
    """New files use the default chain length when AMDCOMPRESS_DIFFUSION_STEPS
    is unset; the golden diffusion files were made that way."""
    from amdcompress.models.diffusion import coding as diffusion_coding

    frozen = {e["settings"]["diffusion_steps"] for e in CURRENT if e["model"] == "diffusion"}
    monkeypatch.delenv(diffusion_coding.ENV_STEPS, raising=False)
    assert frozen == {diffusion_coding.default_steps()[0]} == {100}
    assert diffusion_coding.ENV_STEPS == "AMDCOMPRESS_DIFFUSION_STEPS"


@pytest.mark.parametrize("entry", [pytest.param(e, id=e["file"]) for e in CURRENT])
def test_encoding_gives_the_golden_bytes(entry, monkeypatch):
    model = entry["model"]
    installed = _installed_weights(model)
    if entry["weights"]:
        assert (installed["name"], installed["sha256"]) == (entry["weights"]["name"], entry["weights"]["sha256"]), (
            f"{model} weights changed ({entry['weights']['name']} -> {installed['name']}): keep the old weights "
            "readable, then make_golden.py --write --allow-new-weights")
    if model == "jxl":
        import imagecodecs

        if imagecodecs.jpegxl_version() != entry["versions"]["libjxl"]:
            pytest.skip(f"libjxl's encoder is not ours: made with {entry['versions']['libjxl']}, "
                        f"installed {imagecodecs.jpegxl_version()} (decoding is still checked)")
    _set_env(monkeypatch, entry["env"])
    if model == "diffusion":
        from amdcompress.models.diffusion import coding as diffusion_coding

        assert diffusion_coding.default_steps() == (entry["settings"]["diffusion_steps"],
                                                    entry["settings"]["diffusion_steps_source"])
    golden = _read(entry["file"])
    blob = amdcompress.compress(_read(entry["input"]), model=model)
    assert blob == golden, (f"{entry['file']}: {model} now writes {len(blob)} bytes, the golden file has "
                            f"{len(golden)}; {_first_difference(blob, golden)}")
