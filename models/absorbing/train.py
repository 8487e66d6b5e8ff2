"""Train the absorbing-state diffusion text model (OA-ARDM, :mod:`.network`) on text8, and export weights.

    python -m amdcompress.models.absorbing.train --minutes 90 --threads 2
    python -m amdcompress.models.absorbing.train --resume runs/absorbing/last.pt --minutes 120 --threads 2
    python -m amdcompress.models.absorbing.train --resume models/weights/absorbing-diffusion-v1.pt --minutes 60
    python -m amdcompress.models.absorbing.train --export runs/absorbing/best.pt --threads 2 \
        --weights-name absorbing-diffusion-v1   # -> models/weights/absorbing-diffusion-v1.{pt,json}

Training: the ARDM bound in bits per char of the coder's order family
(:func:`.network.ardm_loss`; ``--others`` adds a weighted term for the
masked positions the next step cannot reveal):
``--batch`` rows, each ``--chunks`` chunks of the training text at a random
place plus the network's receptive field of context on each side, as the
coder sees them; each row at its own uniform t, each chunk with its own order
from the model's family (``--order``). The loop, schedule, EMA (``--ema``,
what gets evaluated and exported), checkpoints, resume and export records
are :mod:`..training`'s; every ``--eval-minutes`` the EMA model's held-out
bound on the first ``--eval-chars`` of valid.txt (rows of 4 chunks,
stratified t) is logged.

Export: the EMA weights as float16 (what the coder loads), the loss table
C[a, class] measured in the coder's layout on the first ``--table-chars`` of
valid.txt (:func:`.coding.loss_table`; stored as float64 bits and as the
quantized non-increasing integer table the step plans are computed from),
the default step budget ``--default-steps``, and a JSON record with the
held-out bound of the full order on ``--export-valid-chars`` of valid.txt
(default all) and the exact coded bits per char of each budget in
``--budgets`` and of the full order (L steps) on the first
``--budget-chars``.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .. import training
from .network import ORDERS, AbsorbingConfig, AbsorbingDenoiser, ardm_loss, order_classes, row_width, window_bpc

BUDGETS = "8,16,32,64,128"
# Held-out evaluations of the shipped lineage up to this step averaged -log2 p
# over every masked position (an estimate that does not match spread orders);
# from it on, over the positions the next step may reveal (the exact bound).
HELDOUT_ESTIMATOR_FROM_STEP = 2060


class AbsorbingTrainer(training.TextTrainer):
    kind, weights_name, weights_format = "absorbing-diffusion", "absorbing-diffusion-v1", "absorbing-weights"
    metric, record_metric = "bpc", "valid_full_order_bpc"
    config_class, model_class = AbsorbingConfig, AbsorbingDenoiser
    defaults = dict(minutes=90.0, batch=16, ema=0.999, log_every=50, ckpt_minutes=5.0, eval_chars=100_000)
    options = dict(train_chars=0, chunks=2, length=256, d=128, ff=256, kernel=3, dilations="1,2,4,8,16,32,1,2",
                   act=("relu", "gelu"), order=ORDERS, default_steps=32, budgets=BUDGETS, budget_chars=65536,
                   table_chars=32768, table_stride=2, others=0.0, reorder=("keep", *ORDERS))
    helps = dict(train_chars="use only this prefix of the training text (0: all)",
                 chunks="chunks per row (plus context on each side)", length="chunk length L (new runs)",
                 dilations="one block per dilation", order="order family (new runs)",
                 reorder="a resumed run: train on this order family from now on (the network carries over)",
                 default_steps="export: the step budget new files use",
                 budgets="export: budgets whose exact bpc the record holds",
                 budget_chars="export: valid.txt chars for the budgets (0: all)",
                 table_chars="export: valid.txt chars for the loss table",
                 table_stride="export: measure the loss table every this many reveals",
                 others=("weight of the masked positions step t cannot reveal (finer levels) in the loss: "
                         "a regulariser outside the bound (0: the exact objective)"))

    def new_config(self, args) -> dict:
        return AbsorbingConfig(length=args.length, d=args.d, ff=args.ff, kernel=args.kernel,
                               dilations=[int(v) for v in str(args.dilations).split(",") if v], act=args.act,
                               order=args.order).to_dict()

    def config(self, args, start) -> dict:
        config = super().config(args, start)
        if start is not None and args.reorder != "keep":
            config = AbsorbingConfig.from_dict({**config, "order": args.reorder}).to_dict()
        return config

    def prepare(self, args, model, loop):
        train = self.symbols(args.data, args.train_chars or None)
        valid = self.symbols(args.valid, args.eval_chars)
        loop.describe_data(train=args.data, train_chars=len(train), valid=args.valid, eval_chars=len(valid))
        width = row_width(model, args.chunks)
        rng = np.random.default_rng(args.seed + loop.step)
        gen = torch.Generator().manual_seed(args.seed + loop.step)
        data, offsets = torch.from_numpy(train), torch.arange(width)

        def step_loss():
            starts = torch.from_numpy(rng.integers(0, len(train) - width + 1, args.batch))
            x = data[starts[:, None] + offsets[None, :]]
            loss, _ = ardm_loss(model, x, gen, others=args.others)
            return loss, args.batch * args.chunks * model.length

        return step_loss, lambda: window_bpc(model, valid), dict

    def weights(self, state, model, args) -> dict:
        """float16 weights plus the loss table the step plans are computed from
        (measured in the coder's layout on valid.txt) and the default budget."""
        from . import coding
        from ..registry import compact_state_dict

        shipped = compact_state_dict(state)
        model.load_state_dict({k: v.float() for k, v in shipped.items()})  # measure exactly what ships
        model.eval()
        c = model.config
        table_text = self.symbols(args.valid, args.table_chars or None)
        reveal = np.unique(np.concatenate([np.arange(0, c.length, max(1, args.table_stride)), [c.length - 1]]))
        t0 = time.time()
        cost_bits = coding.loss_table(model, table_text, reveal=reveal)
        print(f"export: loss table on {len(table_text)} chars ({len(reveal)} reveal counts, {time.time() - t0:.0f} s)",
              flush=True)
        self._table = (len(table_text), len(reveal), cost_bits)
        return {"state_dict": shipped, "costs": torch.from_numpy(coding.quantize_costs(cost_bits)),
                "cost_bits": torch.from_numpy(cost_bits), "default_steps": int(args.default_steps)}

    def export_fields(self, model, args, start, payload) -> dict:
        from . import coding

        c = model.config
        table_chars, reveals, cost_bits = self._table
        seq = cost_bits[np.arange(c.length), order_classes(c.order, c.length, c.length)]
        valid = self.symbols(args.valid, args.export_eval_chars or None)
        full = window_bpc(model, valid)
        state = coding.make_state(model, payload["costs"].numpy(), args.default_steps)
        budget_text = valid[: args.budget_chars] if args.budget_chars else valid
        by_steps, plans = {}, {}
        for S in sorted({int(v) for v in str(args.budgets).split(",") if v} | {c.length}):
            t0 = time.time()
            by_steps[str(S)] = round(coding.plan_bits(state, budget_text, S, threads=args.threads) / len(budget_text), 5)
            plans[str(S)] = state.plan(c.length, S).tolist()
            print(f"export: {S:4d} steps: {by_steps[str(S)]:.4f} bpc on {len(budget_text)} chars "
                  f"({time.time() - t0:.0f} s)", flush=True)
        return {
            "valid_full_order_bpc": round(full["bpc"], 5), "valid_full_order_chars": full["chars"],
            "valid_full_order_eval": ("the ARDM bound of coding one position at a time in the coder's order "
                                      "family: one t per row of 4 chunks (stratified), one order per chunk, "
                                      "-log2 p averaged over the positions step t may reveal, float16 weights, "
                                      "no tables"),
            "heldout_estimator_from_step": HELDOUT_ESTIMATOR_FROM_STEP,
            "default_steps": int(args.default_steps),
            "valid_bpc_by_steps": by_steps, "valid_bpc_by_steps_chars": len(budget_text),
            "valid_bpc_by_steps_eval": ("exact: the information content of the coder's own tables (plan, orders, "
                                        "rows, rounded logits, 24-bit quantization), the ANS overhead and headers "
                                        f"aside; steps = {c.length} is the full order"),
            "step_plans": plans, "loss_table_chars": table_chars, "loss_table_reveal_counts": reveals,
            "loss_table_sequential_bpc": round(float(seq.mean()), 5),
            "loss_table_by_class": by_class(c.order, c.length, seq)}


def by_class(order: str, length: int, seq: np.ndarray) -> list[dict]:
    """Where the bits of the full order go: per rank class (the level, for
    spread orders), its positions per chunk, their mean -log2 p and their
    share of the bits per char (from the loss table's sequential costs)."""
    classes = order_classes(order, length, length)
    return [{"class": int(j), "positions": int((classes == j).sum()),
             "bits_per_position": round(float(seq[classes == j].mean()), 4),
             "bpc_share": round(float(seq[classes == j].sum()) / length, 4)} for j in np.unique(classes)]


TRAINER = AbsorbingTrainer()
main = TRAINER.main  # main(argv=None) -> int

if __name__ == "__main__":
    sys.exit(main())
