"""Train the multinomial text diffusion model on text8 (27 symbols).

    python -m amdcompress.models.diffusion.train --minutes 60                       # new run, CPU, 1 thread
    python -m amdcompress.models.diffusion.train --resume runs/diffusion/last.pt --minutes 60
    python -m amdcompress.models.diffusion.train --resume models/weights/diffusion-v1.pt --minutes 60
    python -m amdcompress.models.diffusion.train --device cuda --threads 4 --batch 64 --minutes 120
    python -m amdcompress.models.diffusion.train --resume runs/diffusion/last.pt --export --weights-name diffusion-v2

Loss: the negative ELBO in bits per char (KL terms, reconstruction term and the
prior KL at T), one chain step per example, sampled uniformly or by importance
(p(i) oc sqrt(E[L_i^2]), the default), weighted by 1/p(i): an unbiased estimate
of the full T-step bound. AdamW with linear warm-up and a half-life decay, an
EMA of the weights for evaluation and shipping, gradient clipping. The loop,
checkpoints (with the step sampler's state), the held-out ELBO of the EMA
weights on a prefix of valid.txt (``--eval-chars``) every ``--eval-minutes``,
and the export (config + float16 EMA weights + the float64 schedule, with the
held-out ELBO on ``--export-eval-chars`` of valid.txt, default all of it) are
:mod:`..training`'s.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from .. import training
from .network import CHUNK, WEIGHTS_NAME, Denoiser, StepSampler, elbo_bpc, make_config, training_loss

CODING_STEPS = (25, 50, 100)  # chain lengths whose held-out ELBO the export records


def chunks_of(symbols: np.ndarray, limit: int = 0) -> torch.Tensor:
    """Whole 256-char chunks of the first ``limit`` symbols (0: all)."""
    s = symbols[:limit] if limit else symbols
    n = (len(s) // CHUNK) * CHUNK
    return torch.from_numpy(s[:n].astype(np.int64).reshape(-1, CHUNK))


def evaluate(model: Denoiser, valid: torch.Tensor, steps_list=(None,), samples: int = 1) -> dict:
    """Held-out negative ELBO (bits/char) for each chain length (None: all T,
    key ``T``); lengths the model cannot run (more than its T steps) are left out."""
    return {"T" if s is None else str(s): elbo_bpc(model, valid, steps=s, samples=samples, seed=1234)
            for s in steps_list if s is None or s <= model.T}


class DiffusionTrainer(training.TextTrainer):
    kind, weights_name, weights_format = "diffusion", WEIGHTS_NAME, "amdcompress-diffusion"
    metric, record_metric = "elbo_bpc", "valid_elbo_bpc"
    ema_frozen = ("alpha_bar",)
    symbol_dtype = np.uint8
    defaults = dict(minutes=60.0, device="auto", batch=32, lr=1e-3, schedule="exp", warmup=500, half_life=50000.0,
                    min_lr=5e-5, ema=0.999, eval_minutes=10.0, eval_chars=65536, log_every=200)

    options = dict(config="{}", weight_decay=0.0, step_sampling=("importance", "uniform"), loss_steps=0, aux_ce=0.0,
                   eval_steps=100)
    helps = dict(config="JSON overrides of the model config (new runs only)",
                 loss_steps="train the bound of a coarser chain of this many steps (0: all T)",
                 aux_ce="weight of an auxiliary cross-entropy on x0hat (0: the pure ELBO of the paper)",
                 eval_steps="also evaluate this coarser chain (0: skip)")

    def new_config(self, args) -> dict:
        return make_config(**json.loads(args.config))

    def build(self, config, args=None) -> Denoiser:
        return Denoiser(config)

    def optimizer(self, params, args):
        return torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)

    def prepare(self, args, model, loop):
        if loop.device.type == "cuda":  # training only: coding always runs float32 on CPU
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        train, valid_sym = self.text_data(args, loop)
        valid = chunks_of(valid_sym).to(loop.device)
        sampler = StepSampler(args.loss_steps or model.T, args.step_sampling)
        if loop.saved.get("sampler") is not None:
            sampler.load_state_dict(loop.saved["sampler"])
        rng = np.random.default_rng(args.seed + loop.step)
        window = np.arange(CHUNK)[None, :]

        def step_loss():
            off = rng.integers(0, len(train) - CHUNK, args.batch)
            x0 = torch.from_numpy(train[off[:, None] + window].astype(np.int64)).to(loop.device)
            loss, bpc = training_loss(model, x0, sampler, rng, args.loss_steps or None, args.aux_ce)
            return loss, x0.numel(), float(bpc.mean())

        def held_out() -> dict:
            res = evaluate(model, valid, (None, args.eval_steps) if args.eval_steps else (None,))
            return {"elbo_bpc": res.pop("T"), **{f"elbo_bpc_{k}": v for k, v in res.items()}, "chars": valid.numel()}

        return step_loss, held_out, lambda: {"sampler": sampler.state_dict()}

    def export_fields(self, model, args, start, payload) -> dict:
        valid = chunks_of(self.symbols(args.valid, args.export_eval_chars))
        t0 = time.time()
        bpc = evaluate(model, valid, (None,) + CODING_STEPS)
        minutes = round(start.elapsed / 60, 2)
        note = (f"valid ELBO {bpc['T']:.3f} bpc after {minutes} min of training"
                + (" (far from converged: bzip2 gets 2.193 bpc on this text; the paper's model 1.72 after full "
                   "training)" if bpc["T"] > 2.193 else ""))
        return {
            "arch": "multinomial-diffusion",
            "valid_chars": int(valid.numel()),
            "valid_elbo_bpc": round(bpc["T"], 4),
            "valid_elbo_bpc_is": (f"negative ELBO of the full T={model.T}-step chain, bits/char, EMA weights as "
                                  "shipped, one stratified step sample per 256-char chunk of valid.txt (unbiased)"),
            "valid_elbo_bpc_by_coding_steps": {k: round(v, 4) for k, v in bpc.items() if k != "T"},
            "eval_seconds": round(time.time() - t0, 1),
            "note": (args.note + " " if args.note else "") + note,
        }


TRAINER = DiffusionTrainer()
main = TRAINER.main  # main(argv=None) -> int

if __name__ == "__main__":
    sys.exit(main())
