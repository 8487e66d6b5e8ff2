"""Train the Argmax Flow text model (:mod:`.argmax`) on text8, and export weights.

    python -m amdcompress.models.argmax.train --minutes 100 --threads 1
    python -m amdcompress.models.argmax.train --resume runs/argmax/last.pt --minutes 160
    python -m amdcompress.models.argmax.train --export runs/argmax/best.pt   # -> models/weights/argmax-v1.{pt,json}

Training: negative ELBO in bits per character, one reparameterized sample of
``q``; ``--batch`` contiguous streams of the training text read in BPTT chunks
of ``--bptt`` characters with the LSTM state carried from chunk to chunk (each
stream restarts from a zero state and the start token with probability
``--reset`` per chunk, as the coder's lanes do). Adam, linear warmup, cosine
decay over the ``--minutes`` budget (wall clock, so a run ends on time).
Every ``--eval-minutes`` the held-out ELBO on the first ``--eval-chars`` of
valid.txt is logged; every ``--ckpt-minutes`` ``OUT/last.pt`` is written (and
``OUT/best.pt`` when the held-out ELBO improved); the loop is
:class:`.training.BudgetedTraining`. ``--resume`` takes a checkpoint (model,
optimizer, schedule, data position) or a shipped weights file (model, with its
steps and minutes; fresh optimizer).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from .network import ArgmaxConfig, ArgmaxFlow, START, count_params
from ..training import (BudgetedTraining, load_text_symbols, save_weights, start_from, text_trainer_parser,
                       text_weights_record, write_record)



def load_symbols(path: Path, limit: int | None = None) -> np.ndarray:
    return load_text_symbols(path, limit, np.int64)


@torch.no_grad()
def evaluate(model: ArgmaxFlow, sym: np.ndarray, streams: int = 4, chunk: int = 512, exact: bool = True,
             seed: int = 1234) -> dict:
    """Held-out negative ELBO (one q sample, fixed seed) and exact -log2 P(x),
    bits per character, over ``streams`` contiguous parts with carried state."""
    model.eval()
    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    n = (len(sym) // streams) * streams
    x = torch.from_numpy(sym[:n].reshape(streams, -1))
    tot_e = tot_x = 0.0
    st_e = st_x = None
    prev = torch.full((streams, 1), START, dtype=torch.long)
    for s in range(0, x.shape[1], chunk):
        xc = x[:, s : s + chunk]
        tok = torch.cat([prev, xc[:, :-1]], 1)
        e, st_e = model(xc, st_e, tokens=tok)
        tot_e += float(e.sum())
        if exact:
            nll, st_x = model.exact_nll_bits(xc, st_x, tokens=tok)
            tot_x += float(nll.sum())
        prev = xc[:, -1:]
    torch.random.set_rng_state(g)
    model.train()
    out = {"elbo_bpc": tot_e / n, "chars": n}
    if exact:
        out["nll_bpc"] = tot_x / n
    return out


def train(args) -> dict:
    """Run one training (see the module docstring); returns the final held-out evaluation."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_sym = load_symbols(Path(args.data))
    valid_sym = load_symbols(Path(args.valid), args.eval_chars)
    ck = start_from(args.resume) if args.resume else None
    if ck is not None and args.fresh_schedule:
        ck = (ck[0], ck[1], None, 0, 0.0, {})
    config = ArgmaxConfig.from_dict(ck[0]) if ck else ArgmaxConfig(
        hidden=args.hidden, emb=args.emb, head=args.head, mixtures=args.mixtures)
    model = ArgmaxFlow(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    loop = BudgetedTraining(args, model, opt, kind="argmax-checkpoint", metric="elbo_bpc", resumed=ck)
    loop.log(f"train {len(train_sym)} chars, held-out {len(valid_sym)} chars; config {config.to_dict()} "
             f"params {count_params(model)} threads {args.threads}")
    rng = np.random.default_rng(args.seed + loop.step)
    B, T = args.batch, args.bptt
    span = len(train_sym) // B
    ptr = loop.saved.get("ptr")
    ptr = np.asarray(ptr, dtype=np.int64) if ptr is not None and len(ptr) == B else np.arange(B, dtype=np.int64) * span
    data = torch.from_numpy(train_sym)
    carry = {"state": None, "prev": torch.full((B, 1), START, dtype=torch.long)}  # LSTM state, last char

    def step_loss() -> torch.Tensor:
        wrap = ptr + T + 1 > np.minimum(np.arange(1, B + 1) * span, len(train_sym))  # streams at their span's end
        ptr[wrap] = np.arange(B)[wrap] * span
        x = data[torch.from_numpy(ptr)[:, None] + torch.arange(T)[None, :]]
        reset = torch.from_numpy(rng.random(B) < args.reset) | torch.from_numpy(wrap)
        state, prev = carry["state"], carry["prev"]
        if state is not None:
            keep = (~reset).float()[None, :, None]
            state = tuple(s.detach() * keep for s in state)
        prev = torch.where(reset[:, None], torch.full_like(prev, START), prev)
        loss_c, state = model(x, state, tokens=torch.cat([prev, x[:, :-1]], 1))
        carry["state"], carry["prev"] = state, x[:, -1:]
        ptr[:] += T  # in place: the closure keeps the checkpointed array
        return loss_c.mean()

    return loop.run(step_loss, lambda: evaluate(model, valid_sym), extra=lambda: {"ptr": ptr.tolist()})


def export(args) -> None:
    """Checkpoint -> models/weights/argmax-v1.pt (config, float32 state dict,
    coding tables) + argmax-v1.json (provenance, full valid ELBO, sha256)."""
    from .coding import build_coding_tables

    torch.set_num_threads(args.threads)
    ck = torch.load(args.export, map_location="cpu", weights_only=False)
    config = ArgmaxConfig.from_dict(ck["config"])
    model = ArgmaxFlow(config)
    model.load_state_dict(ck["model"] if "model" in ck else ck["state_dict"])
    model.eval()
    t0 = time.time()
    valid = load_symbols(Path(args.valid), args.export_valid_chars or None)
    ev = evaluate(model, valid, streams=8)
    tr = evaluate(model, load_symbols(Path(args.data), 100_000), streams=4)
    print(f"export: valid ({ev['chars']} chars) elbo {ev['elbo_bpc']:.4f} nll {ev['nll_bpc']:.4f}; "
        f"train[:100k] elbo {tr['elbo_bpc']:.4f} ({time.time() - t0:.0f} s)")
    tables = build_coding_tables(model, delta_bits=args.delta_bits, window=args.window)
    pt = Path(args.weights_out)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    sha = save_weights(pt, {"kind": "argmax-weights", "config": config.to_dict(), "state_dict": state,
                            "coding": {k: torch.as_tensor(v) for k, v in tables.items()}})
    rec = text_weights_record(
        "argmax", pt, sha, model, ck, args,
        coding={"delta_bits": int(tables["delta_bits"]), "window": int(tables["window"])},
        bptt=ck.get("args", {}).get("bptt"),
        final_train_elbo_bpc=ck.get("train_elbo_bpc"), train_100k_elbo_bpc=tr["elbo_bpc"],
        valid_elbo_bpc=ev["elbo_bpc"], valid_nll_bpc=ev["nll_bpc"], valid_chars=ev["chars"],
        valid_eval="one q sample per char, 8 streams with carried state")
    write_record(rec, pt.with_suffix(".json"))
    print(f"wrote {pt} ({pt.stat().st_size} bytes, sha256 {sha})")


def main(argv=None):
    p = text_trainer_parser(__doc__.split("\n")[0], out="runs/argmax", weights="argmax-v1.pt",
                            minutes=100.0, ckpt_minutes=5.0, log_every=20)
    p.add_argument("--fresh-schedule", action="store_true", help="with --resume: keep weights only")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--head", type=int, default=384)
    p.add_argument("--mixtures", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bptt", type=int, default=256)
    p.add_argument("--reset", type=float, default=0.03)
    p.add_argument("--delta-bits", type=int, default=0, help="coding grid 2**-b (0: chosen from q)")
    p.add_argument("--window", type=int, default=32, help="grid bins per coded magnitude (the grid step 2**-b is "
                   "the finest that fits q in the window)")
    args = p.parse_args(argv)
    args.command = " ".join(["python -m amdcompress.models.argmax.train"] + (argv if argv is not None else sys.argv[1:]))
    if args.export:
        return export(args)
    return train(args)


if __name__ == "__main__":
    main()
