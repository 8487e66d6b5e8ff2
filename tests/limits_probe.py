"""Crafted headers that claim huge sizes, decoded with time and memory measured.

Run as a script (``python tests/limits_probe.py``): it warms every codec up
(models loaded), resets the process's peak RSS, then decodes, for every codec,
files whose header claims 2**30 and 2**40 symbols (bytes) or subpixels
(images) around a 10-byte payload (for the text models: a stream head that
claims the same count, then filler), with the default ``max_size`` and with
no limit at all, and prints one JSON object: per case the seconds and the
error, and the peak-RSS growth over the whole run. ``tests/test_limits.py``
runs it in a fresh process and checks the numbers.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import amd_samples  # noqa: E402
import rss  # noqa: E402
import amdcompress  # noqa: E402
from amdcompress import AmdError, backends, container, formats  # noqa: E402
from amdcompress.codecs.varint import write_varint  # noqa: E402

CLAIMS = (1 << 30, 1 << 40)


def _image_shape(n: int) -> tuple[int, int, int]:
    w = 1 << 15
    return (max(1, n // (3 * w)), w, 3)


def _payload(codec: str, n: int, size: int) -> bytes:
    """``size`` bytes; for a text codec, a model stream whose own head claims
    ``n`` symbols, then filler (the textstream framing around it)."""
    from amdcompress.codecs import textstream

    filler = bytes((37 * i + 11) & 0xFF for i in range(size))
    heads = {
        "argmax": bytes([1]) + write_varint(n) + write_varint(256),
        "argmax-coupling": bytes([1]) + write_varint(n),
        "discrete-flow": bytes([2]) + write_varint(n),
        "diffusion": bytes([1, 4, 64]) + write_varint(n) + write_varint(1) + write_varint(n),
    }
    if codec not in heads:
        return filler
    body = (heads[codec] + filler)[: size - 1]
    return textstream.pack(body, b"")


def crafted(codec: str, n: int, payload_len: int = 10) -> bytes:
    """A version-3 file of ``codec`` (installed weights tag) declaring ``n``
    bytes of data around a ``payload_len``-byte payload."""
    s = amd_samples.sample(codec)
    h = container.unpack(s.blob)[0]
    kind = h.kind
    shape = _image_shape(n) if kind != formats.BYTES else (n,)
    payload = _payload(codec, n, payload_len)
    in_payload = h.checksum_in_payload
    crc = container.checksum(0, container.covered_bytes(h.codec_id, h.weights_tag, kind, shape, in_payload))
    return container.pack(container.Header(h.codec_id, h.weights_tag, kind, shape, None if in_payload else crc, 0),
                          payload)


def main() -> dict:
    codecs = sorted(amd_samples.all_samples())  # builds and decodes every sample: models loaded
    for c in codecs:
        backends.by_name(c)
    base = rss.reset_peak()  # from here on, the peak of the crafted cases alone
    cases = []
    for codec in codecs:
        for n in CLAIMS:
            for max_size in ("default", None):
                for plen in (10, 200):
                    blob = crafted(codec, n, plen)
                    kw = {} if max_size == "default" else {"max_size": None}
                    t = time.perf_counter()
                    try:
                        amdcompress.decompress(blob, **kw)
                        err = None
                    except AmdError as e:
                        err = str(e)
                    except BaseException as e:  # noqa: BLE001 - reported, and fails the test
                        err = f"FOREIGN {type(e).__name__}: {e}"
                    cases.append({"codec": codec, "claim": f"2^{int(math.log2(n))}", "max_size": max_size,
                                  "payload_bytes": len(container.unpack(blob)[1]), "file_bytes": len(blob),
                                  "seconds": round(time.perf_counter() - t, 4), "error": err})
    return {"baseline_rss_mb": round(base, 1), "peak_rss_mb": round(rss.peak_mb(), 1),
            "rss_growth_mb": round(rss.peak_mb() - base, 1), "cases": cases}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
