"""Train the coupling-prior Argmax Flow (:mod:`.argmax_coupling`) on text8, and export weights.

    python -m amdcompress.models.argmax_coupling.train --minutes 45 --threads 1
    python -m amdcompress.models.argmax_coupling.train --resume runs/argmax_coupling/last.pt --minutes 60
    python -m amdcompress.models.argmax_coupling.train --export runs/argmax_coupling/best.pt
        # -> models/weights/argmax-coupling-v1.{pt,json}

Training: negative ELBO in bits per character (one reparameterized q sample),
on ``--batch`` chunks of ``--chunk`` characters taken at random offsets of the
training text, a share ``--partial`` of them cut to a random shorter length
(padded, as the coder's warm-up and last chunks are). Adam, linear warmup, cosine decay over the ``--minutes`` budget
(wall clock, including resumed time, so a run ends on time). Every
``--eval-minutes`` the held-out ELBO on the first ``--eval-chars`` of valid.txt
(cut into chunks as the coder cuts them) is logged, and ``OUT/best.pt`` kept;
every ``--ckpt-minutes`` ``OUT/last.pt`` is written (the loop is
:class:`.training.BudgetedTraining`). ``--resume`` takes a checkpoint or the
shipped weights file.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from .network import ArgmaxCouplingFlow, CouplingConfig, chunked_nelbo_bits, count_params
from ..training import (BudgetedTraining, load_text_symbols, save_weights, start_from, text_trainer_parser,
                       text_weights_record, write_record)

MODULE = "python -m amdcompress.models.argmax_coupling.train"


def evaluate(model: ArgmaxCouplingFlow, sym: np.ndarray, seed: int = 1234) -> dict:
    """Held-out negative ELBO, bits per character, under the coder's chunking."""
    return {"elbo_bpc": chunked_nelbo_bits(model, sym, seed=seed) / max(1, len(sym)), "chars": int(len(sym))}


def load_symbols(path: Path, limit: int | None = None) -> np.ndarray:
    return load_text_symbols(path, limit, np.int64)


def train(args) -> dict:
    """Run one training (see the module docstring); returns the final held-out evaluation."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_sym = torch.from_numpy(load_symbols(Path(args.data)))
    valid_sym = load_symbols(Path(args.valid), args.eval_chars)
    ck = start_from(args.resume) if args.resume else None
    config = CouplingConfig.from_dict(ck[0]) if ck else CouplingConfig(
        chunk=args.chunk, layers=args.layers, hidden=args.hidden, kernel=args.kernel, mixtures=args.mixtures,
        delta_bits=args.delta_bits)
    model = ArgmaxCouplingFlow(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    loop = BudgetedTraining(args, model, opt, kind="argmax-coupling-checkpoint", metric="elbo_bpc", resumed=ck)
    loop.log(f"train {len(train_sym)} chars, held-out {len(valid_sym)} chars; config {config.to_dict()} "
             f"params {count_params(model)} threads {args.threads}")
    rng = np.random.default_rng(args.seed + loop.step)
    L, B = config.chunk, args.batch

    def step_loss() -> torch.Tensor:
        offs = torch.from_numpy(rng.integers(0, len(train_sym) - L, B))
        x = train_sym[offs[:, None] + torch.arange(L)[None, :]]
        nv = np.where(rng.random(B) < args.partial, rng.integers(1, L, B), L)
        valid = torch.arange(L)[None, :] < torch.from_numpy(nv)[:, None]
        return model(x, valid).sum() / valid.sum()

    return loop.run(step_loss, lambda: evaluate(model, valid_sym))


def export(args) -> None:
    """Checkpoint -> weights file (config, float32 state dict, q coding tables)
    + JSON record (provenance, held-out ELBO, sha256)."""
    from .coding import build_tables

    torch.set_num_threads(args.threads)
    ck = torch.load(args.export, map_location="cpu", weights_only=False)
    config = CouplingConfig.from_dict(ck["config"])
    model = ArgmaxCouplingFlow(config)
    model.load_state_dict(ck["model"])
    model.eval()
    t0 = time.time()
    ev = evaluate(model, load_symbols(Path(args.valid), args.export_valid_chars or None))
    tr = evaluate(model, load_symbols(Path(args.data), 100_000))
    print(f"export: valid ({ev['chars']} chars) elbo {ev['elbo_bpc']:.4f}; train[:100k] elbo {tr['elbo_bpc']:.4f} "
        f"({time.time() - t0:.0f} s)")
    tables = build_tables(model)
    pt = Path(args.weights_out)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    sha = save_weights(pt, {"kind": "argmax-coupling-weights", "config": config.to_dict(), "state_dict": sd,
                            "coding": {k: torch.as_tensor(v) for k, v in tables.items()}})
    rec = text_weights_record(
        "argmax-coupling", pt, sha, model, ck, args,
        coding={"delta_bits": int(tables["delta_bits"]), "window": int(tables["window"])}, chunk=config.chunk,
        final_train_elbo_bpc=ck.get("train_elbo_bpc"), train_100k_elbo_bpc=tr["elbo_bpc"],
        valid_elbo_bpc=ev["elbo_bpc"], valid_chars=ev["chars"],
        valid_eval=f"one q sample per char, chunks of {config.chunk} as the coder cuts them")
    write_record(rec, pt.with_suffix(".json"))
    print(f"wrote {pt} ({pt.stat().st_size} bytes, sha256 {sha})")


def main(argv=None):
    p = text_trainer_parser(__doc__.split("\n")[0], out="runs/argmax_coupling", weights="argmax-coupling-v1.pt",
                            minutes=45.0, ckpt_minutes=3.0, log_every=50)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--mixtures", type=int, default=4)
    p.add_argument("--delta-bits", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--partial", type=float, default=0.25,
                   help="share of training chunks cut short (padded), as the coder's warm-up and last chunks are")
    args = p.parse_args(argv)
    args.command = " ".join([MODULE] + (list(argv) if argv is not None else sys.argv[1:]))
    if args.export:
        return export(args)
    return train(args)


if __name__ == "__main__":
    main()
