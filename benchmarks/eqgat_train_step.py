"""One EQGAT-diff training step: where the time goes, and float32 against bfloat16 autocast.

Builds the shipped CPU config (``configs/eqgat_diff_qm9_cpu.yaml``: 5 layers,
128/32/32) or any other denoiser size on real QM9 batches, and times a full
training step (loss, backward, AdamW step) in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (positions, the loss and the
optimizer stay float32; see ``train.precision``). On Intel CPUs with AMX
(``lscpu | grep amx``) the bf16 matrix products run on the tile unit; elsewhere
bf16 is emulated through AVX-512/AVX2 and may be slower. ``--profile`` prints the
top operators of one step of each precision (torch.profiler, self CPU time).

Usage: python benchmarks/eqgat_train_step.py [--layers 5 --s-dim 128 --v-dim 32 --e-dim 32]
       [--batch 64] [--steps 10] [--threads 1] [--profile] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from report import write_section  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from geo3d.data.marginals import molecule_marginals  # noqa: E402
from geo3d.data.qm9 import QM9  # noqa: E402
from geo3d.diffusion.eqgat_diff import EQGATDiffusion  # noqa: E402
from geo3d.train.precision import autocast_context  # noqa: E402

FUSED = True  # the trainer's optimizer (fused AdamW on the CPU)


def build(args: argparse.Namespace, train_set) -> EQGATDiffusion:
    stats = molecule_marginals(train_set)
    return EQGATDiffusion(
        {
            "denoiser": {
                "num_layers": args.layers,
                "s_dim": args.s_dim,
                "v_dim": args.v_dim,
                "e_dim": args.e_dim,
            },
            "priors": {
                "atoms": stats.atom_type_count.tolist(),
                "charges": stats.charge_count.tolist(),
                "bonds": stats.bond_type_count.tolist(),
                "num_atoms": stats.num_atoms_count.tolist(),
            },
        }
    )


def step_times(model, batches, precision: str, profile: bool) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True, fused=FUSED)
    gen = torch.Generator().manual_seed(0)
    times = []

    def one(batch) -> None:
        with autocast_context(precision):
            loss, _ = model.loss(batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    one(batches[0])  # warm-up (allocator, oneDNN kernel selection)
    for batch in batches[1:]:
        t0 = time.perf_counter()
        one(batch)
        times.append(time.perf_counter() - t0)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            one(batches[1])
        print(f"--- {precision}: top operators of one step (self CPU time)")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    return times


def agreement(batches) -> str:
    """bf16 against float32 on the shipped model: loss and gradient of the same noised batches."""
    from geo3d.registry import load_model

    model = load_model("eqgat-qm9").train()
    rel, cos = [], []
    for batch in batches[:4]:
        grads = {}
        for precision in ("float32", "bfloat16"):
            model.zero_grad(set_to_none=True)
            with autocast_context(precision):
                loss, _ = model.loss(batch, torch.Generator().manual_seed(1))
            loss.backward()
            grads[precision] = (float(loss), torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        (l32, g32), (l16, g16) = grads["float32"], grads["bfloat16"]
        rel.append(abs(l16 - l32) / abs(l32))
        cos.append(float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)))
    return (
        f"bf16 vs float32 on eqgat-qm9, 4 batches: loss relative difference median {statistics.median(rel):.2e} "
        f"(max {max(rel):.2e}), gradient cosine similarity min {min(cos):.4f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--s-dim", type=int, default=128)
    ap.add_argument("--v-dim", type=int, default=32)
    ap.add_argument("--e-dim", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--agreement", action="store_true", help="also compare bf16 with float32 losses/gradients"
    )
    ap.add_argument("--out", type=Path, help="write the section into this markdown page (its markers)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_set = QM9("train", limit=args.batch * (args.steps + 2))
    loader = DataLoader(train_set, batch_size=args.batch, shuffle=False)
    batches = list(loader)[: args.steps + 1]
    rows = []
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = build(args, train_set)
        times = step_times(model, batches, precision, args.profile)
        med = statistics.median(times)
        rows.append((precision, med, args.batch / med))
    n_params = sum(p.numel() for p in model.parameters())
    amx = "amx_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    lines = [
        f"EQGAT-diff training step, {args.layers} layers {args.s_dim}/{args.v_dim}/{args.e_dim} "
        f"({n_params / 1e6:.2f} M parameters), batch {args.batch} QM9 molecules, {args.threads} thread(s), "
        f"median of {args.steps} steps; {platform.processor() or platform.machine()}, AMX: {amx}, "
        f"torch {torch.__version__}, {datetime.date.today()}",
        "",
        "| precision | s / step | molecules / s | vs float32 |",
        "|---|---|---|---|",
    ]
    for precision, med, rate in rows:
        lines.append(f"| {precision} | {med:.3f} | {rate:.1f} | {rows[0][1] / med:.2f}x |")
    if args.agreement:
        lines += ["", agreement(batches)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_section(args.out, text, "eqgat-train-step")


if __name__ == "__main__":
    main()
