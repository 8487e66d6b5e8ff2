"""Train the Discrete Flow text model (:mod:`.network`) on text8, and export weights.

    python -m amdcompress.models.discrete_flow.train --minutes 40 --threads 1 --base ar --layers 2
    python -m amdcompress.models.discrete_flow.train --resume runs/discrete_flow/last.pt --minutes 50
    python -m amdcompress.models.discrete_flow.train --export runs/discrete_flow/best.pt \
        --weights-name discrete-flow-v2

Training: exact -log2 P(x) in bits per character (no bound: the flow is a
bijection), straight-through gradients for the flow. ``--batch`` contiguous
streams of the training text are read in chunks of ``--chunk`` characters (the
flow's D), chunk-aligned; the AR base carries its LSTM state from chunk to
chunk (a stream restarts from a zero state and the start token with
probability ``--reset`` per chunk, as the coder's lanes do). Adam, linear
warm-up, cosine decay over the run. The loop, checkpoints (with the streams'
positions), the held-out bpc on the first ``--eval-chars`` of valid.txt
(integer path, the coder's computation) and the export (config + float16
weights, evaluated as shipped) are :mod:`..training`'s.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .. import training
from .network import DiscreteFlow, DiscreteFlowConfig


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
    return training.load_text_symbols(path, limit, np.int64)


class DiscreteFlowTrainer(training.TextTrainer):
    kind, weights_name, weights_format = "discrete-flow", "discrete-flow-v1", "discrete-flow-weights"
    metric, record_metric = "bpc", "valid_bpc"
    config_class, model_class = DiscreteFlowConfig, DiscreteFlow
    defaults = dict(minutes=40.0, batch=32, ckpt_minutes=4.0, log_every=50)
    options = dict(base=("ar", "factorized"), layers=2, chunk=128, net_hidden=96, net_depth=3, kernel=5,
                   temperature=0.1, hidden=512, emb=64, reset=0.03)
    helps = dict(layers="coupling layers", reset="chance per chunk that a stream restarts from a zero state")

    def export_fields(self, model, args, start, payload) -> dict:
        ev, tr = self.export_evals(model, args, evaluate)
        return {"variant": ("discrete autoregressive flow: bipartite layers over an LSTM base"
                            if model.config.base == "ar" else "bipartite discrete flow over a factorized base"),
                "train_100k_bpc": tr["bpc"], "valid_bpc": ev["bpc"], "valid_chars": ev["chars"],
                "valid_eval": "exact -log2 P(x) of the float16-rounded shipped weights, 4 streams with carried state"}

    def prepare(self, args, model, loop):
        train, valid = self.text_data(args, loop)
        cfg = model.config
        streams = training.Streams(torch.from_numpy(train), args.batch, cfg.chunk, args.reset,
                                   np.random.default_rng(args.seed + loop.step), loop.saved.get("ptr"),
                                   align=cfg.chunk)
        carry = {"state": None, "prev": None}  # the AR base's LSTM state and last latent, stream by stream

        def step_loss():
            x, reset = streams.next()
            state, prev = carry["state"], carry["prev"]
            if cfg.base == "ar" and state is not None:
                state = training.carried(state, reset)
                prev = torch.where(reset, torch.full_like(prev, cfg.k), prev)
            bits, carry["state"], z = model(x, state, prev)
            carry["prev"] = z[:, -1]
            return bits.mean(), x.numel()

        return step_loss, lambda: evaluate(model, valid), lambda: {"ptr": streams.ptr.tolist()}


TRAINER = DiscreteFlowTrainer()
main = TRAINER.main  # main(argv=None) -> int

if __name__ == "__main__":
    sys.exit(main())
