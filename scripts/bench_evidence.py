"""What the information evidence adds to an evaluation pass: per-image log-likelihood and
class counts (`segaudit.measure.information`), and the bootstrap over val images
(`segaudit.measure.evidence`).

Two measurements, in one run, alternating so that the machine's drift hits both sides:

1. One evaluation pass of a trained model over the val split, with and without the
   per-image scores (`evaluate(..., scores=ImageScores)` against the plain confusion
   matrix). Reported: the median time ratio with its range over the repeats.
2. The evidence of one diagnose stage (`evidence.diagnose_evidence`: decomposition,
   paired comparisons, the curve, 2000 resamples) against the same plain pass. The
   resample counts are drawn once per diagnose, so not in the timing; the prior's
   resampled sums are reused by every stage, so only the first repeat pays for them.

The target is under 5% for both (`docs`/README "Speed").

    python scripts/bench_evidence.py                          # CPU, 64 px scenes, 5 repeats
    python scripts/bench_evidence.py --size 512 --n-val 8     # bigger images, fewer of them
    python scripts/bench_evidence.py --device cuda --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from segaudit.core.config import compose
from segaudit.core.devices import amp_dtype
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.measure.evaluation import evaluate
from segaudit.measure.evidence import Bootstrap, diagnose_evidence
from segaudit.measure.information import ImageScores
from segaudit.measure.prior import analytic_prior
from segaudit.models.checkpoints import load_for_eval
from segaudit.train.engine import train


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=64, help="scene height and width in pixels")
    parser.add_argument("--n-val", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-evidence-"))
    overrides = [
        f"paths.runs={work / 'runs'}",
        f"paths.cache={work / 'cache'}",
        f"device={args.device}",
        "train.progress=false",
        f"dataset.generate.size={args.size}",
        f"dataset.generate.n_val={args.n_val}",
        "dataset.generate.n_train=20",
        f"dataset.transform.crop=[{args.size},{args.size}]",
    ]
    cfg = compose([*overrides, "run_id=model", "train.iters=2"])
    cfg.dataset = prepare_dataset(cfg.dataset, cfg.paths.cache)  # generation is not part of either side
    train(cfg)
    device = torch.device(args.device)
    model = load_for_eval(cfg, "model", device).model
    dcfg = cfg.dataset
    k, ignore = int(dcfg.num_classes), int(dcfg.ignore_index)
    loader = eval_loader(build_dataset(dcfg, "val", train=False), int(cfg.train.eval_batch_size))
    dtype = amp_dtype(str(cfg.train.amp), device)
    prior = analytic_prior(dcfg)

    def plain():
        return evaluate(model, loader, k, ignore, device, dtype)

    def with_scores():
        scores = ImageScores(k, ignore, len(loader.dataset))
        evaluate(model, loader, k, ignore, device, dtype, scores=scores)
        return scores.compute()

    plain()  # warm-up: first-call allocations are on neither side
    boot = Bootstrap(len(loader.dataset))  # drawn once per diagnose, shared by its stages
    ratios, evidence_ratios = [], []
    for _ in range(args.repeats):
        base, _ = timed(plain)
        ours, per_image = timed(with_scores)
        steps = {100: per_image, 200: per_image}
        spent, _ = timed(
            lambda steps=steps: diagnose_evidence(
                prior.reference["location"], prior.reference["global"], steps, steps, steps, 200, boot
            )
        )
        ratios.append(ours / base)
        evidence_ratios.append(spent / base)
    print(
        f"device {args.device}; {args.n_val} val images of {args.size} px; {args.repeats} repeats; "
        f"one plain pass {1000 * base:.0f} ms"
    )
    for name, values in (
        ("evaluation with per-image scores / plain", ratios),
        ("one stage's evidence (2000 resamples) / one plain pass", evidence_ratios),
    ):
        print(f"  {name}: median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
