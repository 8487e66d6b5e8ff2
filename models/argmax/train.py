"""Train the Argmax Flow text model (:mod:`.network`) on text8, and export weights.

    python -m amdcompress.models.argmax.train --minutes 100 --threads 1
    python -m amdcompress.models.argmax.train --resume runs/argmax/last.pt --minutes 60
    python -m amdcompress.models.argmax.train --export runs/argmax/best.pt --weights-name argmax-v2

Training: negative ELBO in bits per character, one reparameterized sample of
``q``; ``--batch`` contiguous streams of the training text read in BPTT chunks
of ``--bptt`` characters with the LSTM state carried from chunk to chunk (each
stream restarts from a zero state and the start token with probability
``--reset`` per chunk, as the coder's lanes do). Adam, linear warm-up, cosine
decay over the run. The loop, checkpoints (with the streams' positions), the
held-out ELBO on the first ``--eval-chars`` of valid.txt and the export
(config, float32 weights and the coding tables) are :mod:`..training`'s.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from .. import training
from .network import START, ArgmaxConfig, ArgmaxFlow


@torch.no_grad()
def evaluate(model: ArgmaxFlow, sym: np.ndarray, streams: int = 4, chunk: int = 512, exact: bool = True,
             seed: int = 1234) -> dict:
    """Held-out negative ELBO (one q sample, fixed seed) and exact -log2 P(x),
    bits per character, over ``streams`` contiguous parts with carried state."""
    was = model.training
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
    model.train(was)
    out = {"elbo_bpc": tot_e / n, "chars": n}
    if exact:
        out["nll_bpc"] = tot_x / n
    return out


class ArgmaxTrainer(training.TextTrainer):
    kind, weights_name, weights_format = "argmax", "argmax-v1", "argmax-weights"
    metric, record_metric = "elbo_bpc", "valid_elbo_bpc"
    config_class, model_class = ArgmaxConfig, ArgmaxFlow
    defaults = dict(minutes=100.0, batch=64, log_every=20)
    options = dict(hidden=512, emb=64, head=384, mixtures=4, bptt=256, reset=0.03, delta_bits=0, window=32)
    helps = dict(reset="chance per chunk that a stream restarts from a zero state, as the coder's lanes do",
                 delta_bits="coding grid 2**-b (0: chosen from q)",
                 window="grid bins per coded magnitude (the grid step 2**-b is the finest that fits q in the window)")

    def prepare(self, args, model, loop):
        train, valid = self.text_data(args, loop)
        streams = training.Streams(torch.from_numpy(train), args.batch, args.bptt, args.reset,
                                   np.random.default_rng(args.seed + loop.step), loop.saved.get("ptr"), lookahead=1)
        carry = {"state": None, "prev": torch.full((args.batch, 1), START, dtype=torch.long)}

        def step_loss():
            x, reset = streams.next()
            prev = torch.where(reset[:, None], torch.full_like(carry["prev"], START), carry["prev"])
            loss, carry["state"] = model(x, training.carried(carry["state"], reset),
                                         tokens=torch.cat([prev, x[:, :-1]], 1))
            carry["prev"] = x[:, -1:]
            return loss.mean(), x.numel()

        return step_loss, lambda: evaluate(model, valid), lambda: {"ptr": streams.ptr.tolist()}

    def export_fields(self, model, args, start, payload) -> dict:
        ev, tr = self.export_evals(model, args, evaluate, streams=8)
        return {"coding": {k: int(payload["coding"][k]) for k in ("delta_bits", "window")},
                "bptt": (start.args or {}).get("bptt"), "train_100k_elbo_bpc": tr["elbo_bpc"],
                "valid_elbo_bpc": ev["elbo_bpc"], "valid_nll_bpc": ev["nll_bpc"], "valid_chars": ev["chars"],
                "valid_eval": "one q sample per char, 8 streams with carried state"}


    def weights(self, state, model, args) -> dict:
        from .coding import build_coding_tables

        tables = build_coding_tables(model, delta_bits=args.delta_bits, window=args.window)
        return {"state_dict": {k: v.float() for k, v in state.items()},
                "coding": {k: torch.as_tensor(v) for k, v in tables.items()}}

TRAINER = ArgmaxTrainer()
main = TRAINER.main  # main(argv=None) -> int

if __name__ == "__main__":
    sys.exit(main())
