"""Train the coupling-prior Argmax Flow (:mod:`.network`) on text8, and export weights.

    python -m amdcompress.models.argmax_coupling.train --minutes 45 --threads 1
    python -m amdcompress.models.argmax_coupling.train --resume runs/argmax_coupling/last.pt --minutes 60
    python -m amdcompress.models.argmax_coupling.train --export runs/argmax_coupling/best.pt \
        --weights-name argmax-coupling-v2

Training: negative ELBO in bits per character (one reparameterized q sample),
on ``--batch`` chunks of ``--chunk`` characters taken at random offsets of the
training text, a share ``--partial`` of them cut to a random shorter length
(padded, as the coder's warm-up and last chunks are). Adam, linear warm-up,
cosine decay over the run. The loop, checkpoints, the held-out ELBO on the
first ``--eval-chars`` of valid.txt (cut into chunks as the coder cuts them)
and the export (config, float32 weights, q's coding tables) are
:mod:`..training`'s.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from .. import training
from .network import ArgmaxCouplingFlow, CouplingConfig, chunked_nelbo_bits


def evaluate(model: ArgmaxCouplingFlow, sym: np.ndarray, seed: int = 1234) -> dict:
    """Held-out negative ELBO, bits per character, under the coder's chunking."""
    return {"elbo_bpc": chunked_nelbo_bits(model, sym, seed=seed) / max(1, len(sym)), "chars": int(len(sym))}


class CouplingTrainer(training.TextTrainer):
    kind, weights_name, weights_format = "argmax-coupling", "argmax-coupling-v1", "argmax-coupling-weights"
    metric, record_metric = "elbo_bpc", "valid_elbo_bpc"
    config_class, model_class = CouplingConfig, ArgmaxCouplingFlow
    defaults = dict(minutes=45.0, batch=32, ckpt_minutes=3.0, log_every=50)
    options = dict(chunk=128, layers=8, hidden=96, kernel=5, mixtures=4, delta_bits=3, partial=0.25)
    helps = dict(partial="share of training chunks cut short (padded), as the coder's warm-up and last chunks are")

    def prepare(self, args, model, loop):
        train, valid = self.text_data(args, loop)
        train = torch.from_numpy(train)
        rng = np.random.default_rng(args.seed + loop.step)
        L, B = model.config.chunk, args.batch

        def step_loss():
            offs = torch.from_numpy(rng.integers(0, len(train) - L, B))
            x = train[offs[:, None] + torch.arange(L)[None, :]]
            nv = np.where(rng.random(B) < args.partial, rng.integers(1, L, B), L)
            valid_mask = torch.arange(L)[None, :] < torch.from_numpy(nv)[:, None]
            return model(x, valid_mask).sum() / valid_mask.sum(), int(nv.sum())

        return step_loss, lambda: evaluate(model, valid), dict

    def weights(self, state, model, args) -> dict:
        from .coding import build_tables

        return {"state_dict": {k: v.float() for k, v in state.items()},
                "coding": {k: torch.as_tensor(v) for k, v in build_tables(model).items()}}

    def export_fields(self, model, args, start, payload) -> dict:
        ev, tr = self.export_evals(model, args, evaluate)
        return {"coding": {k: int(payload["coding"][k]) for k in ("delta_bits", "window")},
                "chunk": model.config.chunk, "train_100k_elbo_bpc": tr["elbo_bpc"], "valid_elbo_bpc": ev["elbo_bpc"],
                "valid_chars": ev["chars"],
                "valid_eval": f"one q sample per char, chunks of {model.config.chunk} as the coder cuts them"}


TRAINER = CouplingTrainer()
main = TRAINER.main  # main(argv=None) -> int

if __name__ == "__main__":
    sys.exit(main())
