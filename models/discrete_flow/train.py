"""Train the Discrete Flow text model (:mod:`.discrete_flow`) on text8, and export weights.

    python -m amdcompress.models.discrete_flow.train --minutes 40 --threads 1 --base ar --layers 2
    python -m amdcompress.models.discrete_flow.train --resume runs/discrete_flow/last.pt --minutes 50
    python -m amdcompress.models.discrete_flow.train --export runs/discrete_flow/best.pt  # -> models/weights/discrete-flow-v1.{pt,json}

Training: exact -log2 P(x) in bits per character (no bound: the flow is a
bijection), straight-through gradients for the flow. ``--batch`` contiguous
streams of the training text are read in chunks of ``--chunk`` characters (the
flow's D), chunk-aligned; the AR base carries its LSTM state from chunk to
chunk (a stream restarts from a zero state and the start token with
probability ``--reset`` per chunk, as the coder's lanes do). Adam, linear
warmup, cosine decay over the ``--minutes`` budget (wall clock, so a run ends
on time). Every ``--eval-minutes`` the held-out bpc on the first
``--eval-chars`` of valid.txt (integer path, the coder's computation) is
logged; every ``--ckpt-minutes`` ``OUT/last.pt`` is written (``OUT/best.pt``
when the held-out bpc improved); the loop is :class:`.training.BudgetedTraining`.
``--resume`` continues a checkpoint or the shipped weights file.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from .network import DiscreteFlow, DiscreteFlowConfig, count_params
from ..training import (BudgetedTraining, load_text_symbols, save_weights, start_from, text_trainer_parser,
                       text_weights_record, write_record)



@torch.no_grad()
def evaluate(model: DiscreteFlow, sym: np.ndarray, streams: int = 4) -> dict:
    """Held-out exact -log2 P(x) in bits per character (integer path), over
    ``streams`` contiguous parts read chunk by chunk with carried base state."""
    was = model.training
    model.eval()
    d = model.config.chunk
    per = (len(sym) // streams // d) * d
    n = per * streams
    if per == 0:
        raise ValueError("held-out text shorter than streams x chunk")
    x = torch.from_numpy(sym[:n].reshape(streams, per))
    tot, state, prev = 0.0, None, None
    for s in range(0, per, d):
        xc = x[:, s : s + d]
        bits, state = model.nll_bits(xc, state, prev)
        prev = model.flow_forward(xc)[:, -1]
        tot += float(bits.sum())
    model.train(was)
    return {"bpc": tot / n, "chars": n}


def load_symbols(path: Path, limit: int | None = None) -> np.ndarray:
    return load_text_symbols(path, limit, np.int64)


def train(args) -> dict:
    """Run one training (see the module docstring); returns the final held-out evaluation."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_sym = load_symbols(Path(args.data))
    valid_sym = load_symbols(Path(args.valid), args.eval_chars)
    ck = start_from(args.resume) if args.resume else None
    config = DiscreteFlowConfig.from_dict(ck[0]) if ck else DiscreteFlowConfig(
        chunk=args.chunk, layers=args.layers, net_hidden=args.net_hidden, net_depth=args.net_depth,
        kernel=args.kernel, temperature=args.temperature, base=args.base, hidden=args.hidden, emb=args.emb)
    model = DiscreteFlow(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    loop = BudgetedTraining(args, model, opt, kind="discrete-flow-checkpoint", metric="bpc", resumed=ck)
    loop.log(f"train {len(train_sym)} chars, held-out {len(valid_sym)} chars; config {config.to_dict()} "
             f"params {count_params(model)} threads {args.threads}")
    rng = np.random.default_rng(args.seed + loop.step)
    B, D = args.batch, config.chunk
    span = (len(train_sym) // B // D) * D
    ptr = loop.saved.get("ptr")
    ptr = np.asarray(ptr, dtype=np.int64) if ptr is not None and len(ptr) == B else np.arange(B, dtype=np.int64) * span
    data = torch.from_numpy(train_sym)
    carry = {"state": None, "prev": None}  # the AR base's LSTM state and last latent, stream by stream

    def step_loss() -> torch.Tensor:
        wrap = ptr + D > (np.arange(B) + 1) * span
        ptr[wrap] = np.arange(B)[wrap] * span
        x = data[torch.from_numpy(ptr)[:, None] + torch.arange(D)[None, :]]
        reset = torch.from_numpy((rng.random(B) < args.reset) | wrap)
        state, prev = carry["state"], carry["prev"]
        if config.base == "ar" and state is not None:
            keep = (~reset).float()[None, :, None]
            state = tuple(s.detach() * keep for s in state)
            prev = torch.where(reset, torch.full_like(prev, config.k), prev)
        bits, state, z = model(x, state, prev)
        carry["state"], carry["prev"] = state, z[:, -1]
        ptr[:] += D  # in place: the closure keeps the checkpointed array
        return bits.mean()

    ev = loop.run(step_loss, lambda: evaluate(model, valid_sym), extra=lambda: {"ptr": ptr.tolist()})
    return {"valid_bpc": ev["bpc"], "valid_chars": ev["chars"], "train_bpc": loop.train_avg, "steps": ev["steps"],
            "minutes": ev["minutes"]}


def export(args) -> None:
    """Checkpoint -> ``--weights-out`` (config + float16 state dict) and a JSON
    record beside it (provenance, held-out bpc of the *shipped* float16 weights,
    sha256)."""
    from amdcompress.models.registry import compact_state_dict, read_weights

    from .coding import load

    torch.set_num_threads(args.threads)
    ck = torch.load(args.export, map_location="cpu", weights_only=False)
    config = DiscreteFlowConfig.from_dict(ck["config"])
    model = DiscreteFlow(config)
    model.load_state_dict(ck["model"])
    pt = Path(args.weights_out)
    sha = save_weights(pt, {"kind": "discrete-flow-weights", "config": config.to_dict(),
                            "state_dict": compact_state_dict(model.state_dict())})
    shipped = load(read_weights(pt))          # what the coder will use (float16 -> float32)
    t0 = time.time()
    ev = evaluate(shipped, load_symbols(Path(args.valid), args.export_valid_chars or None))
    tr = evaluate(shipped, load_symbols(Path(args.data), 100_000))
    print(f"export: valid ({ev['chars']} chars) bpc {ev['bpc']:.4f}; train[:100k] bpc {tr['bpc']:.4f} "
          f"({time.time() - t0:.0f} s)")
    rec = text_weights_record(
        "discrete-flow", pt, sha, model, ck, args,
        variant=("discrete autoregressive flow: bipartite layers over an LSTM base" if config.base == "ar"
                 else "bipartite discrete flow over a factorized base"),
        final_train_bpc=ck.get("train_bpc"), train_100k_bpc=tr["bpc"], valid_bpc=ev["bpc"], valid_chars=ev["chars"],
        valid_eval="exact -log2 P(x) of the float16-rounded shipped weights, 4 streams with carried state")
    write_record(rec, pt.with_suffix(".json"))
    print(f"wrote {pt} ({pt.stat().st_size} bytes, sha256 {sha})")


def parser():
    p = text_trainer_parser(__doc__.split("\n")[0], out="runs/discrete_flow", weights="discrete-flow-v1.pt",
                            minutes=40.0, ckpt_minutes=4.0, log_every=50)
    p.add_argument("--base", choices=("ar", "factorized"), default="ar")
    p.add_argument("--layers", type=int, default=2, help="coupling layers")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--net-hidden", type=int, default=96)
    p.add_argument("--net-depth", type=int, default=3)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reset", type=float, default=0.03)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    args.command = " ".join(["python -m amdcompress.models.discrete_flow.train"]
                            + (list(argv) if argv is not None else sys.argv[1:]))
    if args.export:
        return export(args)
    return train(args)


if __name__ == "__main__":
    main()
