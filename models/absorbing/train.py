"""Train the absorbing-state diffusion text model (OA-ARDM, :mod:`.network`) on text8, and export weights.

    python -m amdcompress.models.absorbing.train --minutes 90 --threads 2
    python -m amdcompress.models.absorbing.train --resume runs/absorbing/last.pt --minutes 120 --threads 2
    python -m amdcompress.models.absorbing.train --resume models/weights/absorbing-diffusion-v1.pt --minutes 60
    python -m amdcompress.models.absorbing.train --export runs/absorbing/best.pt --threads 2
        # -> models/weights/absorbing-diffusion-v1.{pt,json}

Training: the ARDM bound in bits per char (:func:`.network.ardm_loss`):
``--batch`` rows, each ``--chunks`` chunks of the training text at a random
place plus the network's receptive field of context on each side, as the
coder sees them; each row at its own uniform t, each chunk with its own order
from the model's family (``--order``). Adam, linear warm-up, cosine
decay over the ``--minutes`` budget (wall clock, resumed time included), an
EMA of the weights (``--ema``) that is what gets evaluated, kept in
``best.pt`` and exported. Every ``--eval-minutes`` the EMA model's held-out
bound on the first ``--eval-chars`` of valid.txt (rows of 4 chunks,
stratified t) is logged; the loop is :class:`.training.BudgetedTraining`.
``--resume`` takes a checkpoint (model, EMA, optimizer, schedule) or a
shipped weights file (weights and EMA restart from it, fresh optimizer).

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

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import registry
from ..training import (EMA, BudgetedTraining, load_text_symbols, save_weights, start_from, text_trainer_parser,
                        text_weights_record, write_record)
from .network import (ORDERS, AbsorbingConfig, AbsorbingDenoiser, ardm_loss, count_params, order_classes,
                      row_width, window_bpc)

WEIGHTS_NAME = "absorbing-diffusion-v1"
BUDGETS = "8,16,32,64,128"


def load_symbols(path, limit: int | None = None) -> np.ndarray:
    return load_text_symbols(path, limit, np.int64)


def _config_from_args(args) -> AbsorbingConfig:
    return AbsorbingConfig(length=args.length, d=args.d, ff=args.ff, kernel=args.kernel,
                           dilations=[int(v) for v in args.dilations.split(",") if v], act=args.act,
                           order=args.order)


def train(args) -> dict:
    """Run one training (see the module docstring); returns the final held-out evaluation."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_sym = load_symbols(Path(args.data), args.train_chars or None)
    valid_sym = load_symbols(Path(args.valid), args.eval_chars)
    ck = start_from(args.resume) if args.resume else None
    config = AbsorbingConfig.from_dict(ck[0]) if ck else _config_from_args(args)
    model = AbsorbingDenoiser(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    loop = BudgetedTraining(args, model, opt, kind="absorbing-checkpoint", metric="bpc", resumed=ck)
    width = row_width(model, args.chunks)
    loop.log(f"train {len(train_sym)} chars, held-out {len(valid_sym)} chars; config {config.to_dict()} "
             f"params {count_params(model)} radius {model.radius()} threads {args.threads} "
             f"batch {args.batch} rows x {args.chunks} chunks ({width} positions with context)")
    ema = EMA(model, args.ema) if args.ema > 0 else None
    if ema is not None and "ema" in loop.saved:
        ema.shadow = {k: v.clone() for k, v in loop.saved["ema"].items()}
    eval_model = copy.deepcopy(model)
    rng = np.random.default_rng(args.seed + loop.step)
    gen = torch.Generator().manual_seed(args.seed + loop.step)
    data = torch.from_numpy(train_sym)
    offsets = torch.arange(width)
    seen = {"ema_step": loop.step}

    def step_loss() -> torch.Tensor:
        if ema is not None and loop.step > seen["ema_step"]:  # the optimizer step just taken
            ema.update(model, loop.step)
            seen["ema_step"] = loop.step
        starts = torch.from_numpy(rng.integers(0, len(train_sym) - width + 1, args.batch))
        x = data[starts[:, None] + offsets[None, :]]
        loss, _ = ardm_loss(model, x, gen)
        return loss

    def evaluate() -> dict:
        eval_model.load_state_dict(ema.shadow if ema is not None else model.state_dict())
        return window_bpc(eval_model, valid_sym)

    def extra() -> dict:
        return {"ema": ema.shadow} if ema is not None else {}

    return loop.run(step_loss, evaluate, extra=extra)


def _export_state(ck: dict) -> tuple[dict, dict]:
    """(config, float32 weights to ship) of a checkpoint (its EMA when it has
    one) or of a weights file."""
    if "state_dict" in ck:
        sd = ck["state_dict"]
    else:
        sd = ck.get("ema") or ck["model"]
    return ck["config"], {k: v.detach().float().clone() for k, v in sd.items()}


def export(args) -> dict:
    """Checkpoint -> weights file (float16 EMA weights, loss curve, default
    budget) + JSON record (see the module docstring)."""
    from . import coding

    torch.set_num_threads(args.threads)
    ck = torch.load(args.export, map_location="cpu", weights_only=False)
    cfg, sd = _export_state(ck)
    config = AbsorbingConfig.from_dict(cfg)
    shipped = registry.compact_state_dict(sd)  # float16: evaluate exactly what the coder will load
    model = AbsorbingDenoiser(config)
    model.load_state_dict({k: v.float() for k, v in shipped.items()})
    model.eval()
    t0 = time.time()
    table_text = load_symbols(Path(args.valid), args.table_chars or None)
    stride = max(1, args.table_stride)
    reveal = np.unique(np.concatenate([np.arange(0, config.length, stride), [config.length - 1]]))
    cost_bits = coding.loss_table(model, table_text, reveal=reveal)
    costs = coding.quantize_costs(cost_bits)
    seq = cost_bits[np.arange(config.length), order_classes(config.order, config.length, config.length)]
    print(f"export: loss table on {len(table_text)} chars ({len(reveal)} reveal counts, {time.time() - t0:.0f} s): "
          f"one at a time (the full order) {seq.mean():.4f} bpc; first {seq[0]:.3f}, middle "
          f"{seq[config.length // 2]:.3f}, last {seq[-1]:.3f} bits", flush=True)
    valid = load_symbols(Path(args.valid), args.export_valid_chars or None)
    t0 = time.time()
    full = window_bpc(model, valid)
    print(f"export: held-out full-order bound {full['bpc']:.4f} bpc on {full['chars']} chars "
          f"({time.time() - t0:.0f} s)", flush=True)
    state = coding.make_state(model, costs, args.default_steps)
    budget_text = valid[: args.budget_chars] if args.budget_chars else valid
    budgets = sorted({int(v) for v in args.budgets.split(",") if v} | {config.length})
    by_steps, plans = {}, {}
    for S in budgets:
        t0 = time.time()
        bits = coding.plan_bits(state, budget_text, S, threads=args.threads)
        by_steps[str(S)] = round(bits / len(budget_text), 5)
        plans[str(S)] = state.plan(config.length, S).tolist()
        dt = time.time() - t0
        print(f"export: {S:4d} steps: {by_steps[str(S)]:.4f} bpc on {len(budget_text)} chars "
              f"({dt:.0f} s, {S * len(budget_text) / max(dt, 1e-9):.0f} positions/s)", flush=True)
    pt = Path(args.weights_out)
    sha = save_weights(pt, {"kind": "absorbing-weights", "config": config.to_dict(), "state_dict": shipped,
                            "costs": torch.from_numpy(costs), "cost_bits": torch.from_numpy(cost_bits),
                            "default_steps": int(args.default_steps)})
    cargs = ck.get("args", {})
    rec = text_weights_record(
        "absorbing-diffusion", pt, sha, model, ck, args,
        rows=f"{cargs.get('batch')} x {cargs.get('chunks')} chunks", ema=cargs.get("ema"),
        final_train_bpc=ck.get("train_bpc"),
        valid_full_order_bpc=round(full["bpc"], 5), valid_full_order_chars=full["chars"],
        valid_full_order_eval=("the ARDM bound of coding one position at a time: one t per row of 4 chunks "
                               "(stratified), one order per chunk from the model's family, float weights, "
                               "no tables"),
        default_steps=int(args.default_steps),
        valid_bpc_by_steps=by_steps, valid_bpc_by_steps_chars=len(budget_text),
        valid_bpc_by_steps_eval=("exact: the information content of the coder's own tables (plan, orders, rows, "
                                 "rounded logits, 24-bit quantization), the ANS overhead and headers aside; "
                                 f"steps = {config.length} is the full order"),
        step_plans=plans,
        loss_table_chars=len(table_text), loss_table_reveal_counts=len(reveal),
        loss_table_sequential_bpc=round(float(seq.mean()), 5))
    write_record(rec, pt.with_suffix(".json"))
    print(f"wrote {pt} ({pt.stat().st_size} bytes, sha256 {sha})")
    return rec


def main(argv=None) -> int:
    p = text_trainer_parser(__doc__.split("\n")[0], out="runs/absorbing", weights=f"{WEIGHTS_NAME}.pt",
                            minutes=90.0, ckpt_minutes=5.0, log_every=50)
    p.add_argument("--train-chars", type=int, default=0, help="use only this prefix of the training text (0: all)")
    p.add_argument("--batch", type=int, default=16, help="rows per step")
    p.add_argument("--chunks", type=int, default=2, help="chunks per row (plus context on each side)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0: off)")
    p.add_argument("--length", type=int, default=256, help="chunk length L (new runs)")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--ff", type=int, default=256)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--dilations", default="1,2,4,8,16,32,1,2", help="one block per dilation")
    p.add_argument("--act", default="relu", choices=("relu", "gelu"))
    p.add_argument("--order", default="spread", choices=ORDERS, help="order family (new runs)")
    p.add_argument("--default-steps", type=int, default=32, help="export: the step budget new files use")
    p.add_argument("--budgets", default=BUDGETS, help="export: budgets whose exact bpc the record holds")
    p.add_argument("--budget-chars", type=int, default=65536, help="export: valid.txt chars for the budgets (0: all)")
    p.add_argument("--table-chars", type=int, default=32768, help="export: valid.txt chars for the loss table")
    p.add_argument("--table-stride", type=int, default=2, help="export: measure the loss table every this many reveals")
    args = p.parse_args(argv)
    args.command = " ".join(["python -m amdcompress.models.absorbing.train"]
                            + list(argv if argv is not None else sys.argv[1:]))
    if args.export:
        export(args)
        return 0
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
