"""Point-cloud models: inference and training throughput in shapes/s on the Shapes test split.

Inference: forward in eval mode without gradients, batches of ``--batch-size``
test shapes at the model's own point count and Shapes variant. Training: forward,
the model's loss (cross-entropy on classes or parts, plus PaRot's auxiliary
disentanglement loss when the model has one), backward and an Adam step, in
train mode, on the same batches. Medians over ``--repeats`` timed passes after
one warm-up. Models: shipped names or checkpoint paths.

Usage: python benchmarks/shapes_throughput.py tinvnn-shapes parot-shapes ... [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch
from torch_geometric.data import Batch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from timing import timed  # noqa: E402

from geo3d.data.shapes import Shapes  # noqa: E402
from geo3d.data.transforms import RandomRotate  # noqa: E402
from geo3d.registry import load_model  # noqa: E402
from geo3d.train.pointcloud_task import SEG_ARCHS, with_aux_loss  # noqa: E402


def measure(name: str, batch_size: int, repeats: int) -> dict[str, float | str]:
    model = load_model(name)
    ckpt = model.geo3d_checkpoint
    config, seg = ckpt["config"], ckpt.get("arch") in SEG_ARCHS
    n = int(config.get("num_points", 1024))
    test = Shapes(
        "test",
        2,
        n,
        transform=RandomRotate("so3", torch.Generator().manual_seed(0)),
        difficulty=config.get("difficulty", "standard"),
    )
    batch = Batch.from_data_list([test[k % len(test)] for k in range(batch_size)])

    model.eval()

    def infer() -> None:
        with torch.no_grad():
            model(batch)

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        model.train()
        opt.zero_grad()
        logits = model(batch)
        loss = torch.nn.functional.cross_entropy(logits, batch.part if seg else batch.y)
        loss, _ = with_aux_loss(model, loss, {})
        loss.backward()
        opt.step()

    t_inf = timed(infer, repeats)
    t_train = timed(step, repeats)
    return {
        "model": name,
        "points": n,
        "params": sum(p.numel() for p in model.parameters()),
        "infer": batch_size / t_inf,
        "train": batch_size / t_train,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="append the table to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure(m, args.batch_size, args.repeats) for m in args.models]
    lines = [
        f"\n### Point-cloud throughput (`python benchmarks/shapes_throughput.py {' '.join(args.models)}`)\n",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), torch {torch.__version__}; batch {args.batch_size}, SO(3)-rotated test shapes\n",
        "| model | points | parameters | inference shapes/s | training shapes/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['points']} | {r['params']:,} | {r['infer']:.1f} | {r['train']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
