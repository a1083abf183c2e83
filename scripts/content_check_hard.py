"""How the training-time content check behaves on scenes that are learned slowly.

Trains the same model on `dataset=synthetic_hard` (grey textures, no colour code: content
is learned slowly, as on real photos) twice per seed, once with aligned pairs (a clean
pipeline) and once with every training mask on another scene's image (a broken one), in a
plain PyTorch loop, and runs `ContentMonitor.measure` at each check step. Each check is
written as one CSV row: the step, how much of what location explains the model explains
(`location_part`), the content information with its interval, the noise-retained share,
the own image's help over another image's pixels and its gain since the check at half the
step, which flags the audit's rules raise, and which the training-time rule raises.
`--dataset synthetic` trains on the colour scenes instead, where the broken pipeline's
shared crop leaves the own image a sliver of help.

The summary gives, per pipeline and step, the share of seeds flagged under each rule with
a Clopper-Pearson 95% interval, and per run the first step at which the location is
learned, the own image surely helps, no audit flag is up, and a flag counts in training.
`--summarise CSV...` prints the same for rows written before.

    python scripts/content_check_hard.py --seeds 4 --steps 25,50,100,200,400,800
    python scripts/content_check_hard.py --seeds 2 --steps 800,1600,3200 --out long.csv
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import beta
from torch.utils.data import DataLoader

from segaudit.core.config import compose, load_group_option
from segaudit.data import build_dataset, prepare_dataset
from segaudit.integrations.content_check import ContentMonitor, location_carries, training_flags
from segaudit.models.build import build_model


def flag_kinds(result, flags: list[str]) -> str:
    """The kinds (`prior`, `shuffled`, `noise`) of `flags`, one of a check's flag lists."""
    return ",".join(kind for kind, text in result.findings.flag_kinds.items() if text in flags)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def run(dcfg, model_name: str, pipeline: str, seed: int, steps: list[int], batch: int, lr: float) -> list[dict]:
    torch.manual_seed(seed)
    condition = load_group_option("condition", "shuffled" if pipeline == "broken" else "real")
    train = build_dataset(dcfg, "train", train=True, condition=condition)
    loader = DataLoader(
        train, batch_size=batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    val = build_dataset(dcfg, "val", train=False)
    plain = build_dataset(dcfg, "train", train=False, condition=condition)
    monitor = ContentMonitor.from_batches(
        DataLoader(val, batch_size=16),
        (plain[i][1] for i in range(len(plain))),
        int(dcfg.num_classes),
        mean=dcfg.transform.mean,
        std=dcfg.transform.std,
    )
    model = build_model(compose([f"model={model_name}"]).model, int(dcfg.num_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    rows, step, t0 = [], 0, time.perf_counter()
    while step < steps[-1]:
        for images, masks in loader:
            loss = F.cross_entropy(model(images), masks, ignore_index=int(dcfg.ignore_index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step in steps:
                result = monitor.measure(model, step)
                rows.append(row_of(result, pipeline, seed, step, time.perf_counter() - t0))
                print(
                    " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()),
                    flush=True,
                )
            if step >= steps[-1]:
                break
    return rows


def row_of(result, pipeline: str, seed: int, step: int, seconds: float) -> dict:
    evidence = result.findings.evidence
    content = evidence["information"]["content"]
    kept = evidence["noise_retained"]
    return {
        "pipeline": pipeline,
        "seed": seed,
        "step": step,
        "seconds": round(seconds, 1),
        "location_part": round(result.location_part, 3),
        "state": result.state,
        "rise": None if result.rise is None else result.rise.bits.value,
        "rise_low": None if result.rise is None else result.rise.bits.low,
        "rise_high": None if result.rise is None else result.rise.bits.high,
        "rise_miou": None if result.rise is None else result.rise.miou.value,
        "rise_miou_low": None if result.rise is None else result.rise.miou.low,
        "content_share": evidence["information"]["content_share"]["value"],
        "content": content["value"],
        "content_low": content["low"],
        "content_high": content["high"],
        "versus_shuffled": evidence["versus"]["shuffled"]["bits"]["value"],
        "versus_shuffled_low": evidence["versus"]["shuffled"]["bits"]["low"],
        "versus_shuffled_high": evidence["versus"]["shuffled"]["bits"]["high"],
        "own_image_gain": None if result.own_image_gain is None else result.own_image_gain.value,
        "own_image_gain_low": None if result.own_image_gain is None else result.own_image_gain.low,
        "own_image_gain_high": None if result.own_image_gain is None else result.own_image_gain.high,
        "noise_retained": kept["value"],
        "noise_retained_low": kept["low"],
        "noise_retained_high": kept["high"],
        "miou_real": result.findings.miou["real"],
        "miou_prior": result.findings.prior_miou,
        "audit_flags": flag_kinds(result, result.findings.red_flags),
        "training_flags": flag_kinds(result, result.flags),
        "held_flags": flag_kinds(result, result.held),
    }


def summary(table: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (pipeline, step), group in table.groupby(["pipeline", "step"]):
        line = {"pipeline": pipeline, "step": step, "runs": len(group)}
        for rule in ("audit_flags", "training_flags"):
            k = int((group[rule].fillna("") != "").sum())
            low, high = clopper_pearson(k, len(group))
            line[rule.split("_")[0] + "_flagged"] = f"{k}/{len(group)} [{low:.2f}, {high:.2f}]"
        line["location_part"] = f"{group.location_part.median():.2f}"
        line["content_low>0"] = f"{int((group.content_low > 0).sum())}/{len(group)}"
        out.append(line)
    return pd.DataFrame(out)


def recount(
    table: pd.DataFrame, fault_doublings: int, learned_at: float = 0.9, min_content_bits: float = 0.03
) -> pd.DataFrame:
    """`training_flags` applied again to recorded checks (their flag kinds, location part,
    learning state and the own image's gain), so a change of the rule is measured without
    training again."""
    out = []
    for _, run in table.sort_values("step").groupby(["pipeline", "seed"]):
        rows = run.to_dict("records")
        kinds_of = [{k: k for k in str(r["audit_flags"] or "").split(",") if k and k != "nan"} for r in rows]
        learned = [r["step"] for r in rows if r["location_part"] >= learned_at]
        for i, row in enumerate(rows):
            first = learned[0] if learned and learned[0] <= row["step"] else None
            since = math.log2(row["step"] / first) if first else 0.0
            half = [j for j in range(i) if rows[j]["step"] <= row["step"] / 2]
            before = bool(half) and first is not None and location_carries(kinds_of[half[-1]], rows[half[-1]]["state"])
            stalled = bool(row.get("own_image_gain_high", math.inf) < min_content_bits)
            flags = training_flags(
                kinds_of[i], first is not None, row["state"], since, fault_doublings, before, stalled
            )
            out.append({**row, "training_flags": ",".join(flags)})
    return pd.DataFrame(out)


def first_steps(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: the first step the location is learned, the first the own image surely
    helps (versus another image's pixels), the first with no audit flag, the first whose
    flags count in training."""

    def first(group, mask):
        steps = group.step[mask]
        return int(steps.iloc[0]) if len(steps) else None

    out = []
    for (pipeline, seed), group in table.sort_values("step").groupby(["pipeline", "seed"]):
        out.append(
            {
                "pipeline": pipeline,
                "seed": seed,
                "last_step": int(group.step.max()),
                "location_learned": first(group, group.location_part >= 0.9),
                "own_image_helps": first(group, group.versus_shuffled_low > 0),
                "no_audit_flag": first(group, group.audit_flags.fillna("") == ""),
                "training_flag": first(group, group.training_flags.fillna("") != ""),
            }
        )
    return pd.DataFrame(out)


def verdict_lines(runs: pd.DataFrame) -> list[str]:
    """Per pipeline: the runs a flag counted in at any check, with a Clopper-Pearson 95%
    interval (clean: false alarms; broken: detections)."""
    lines = []
    for pipeline, group in runs.groupby("pipeline"):
        k, n = int(group.training_flag.notna().sum()), len(group)
        low, high = clopper_pearson(k, n)
        steps = sorted(int(s) for s in group.training_flag.dropna())
        lines.append(f"{pipeline}: flagged in {k}/{n} runs [{low:.2f}, {high:.2f}], at steps {steps}")
    return lines


def report(table: pd.DataFrame) -> None:
    runs = first_steps(table)
    print(summary(table).to_string(index=False))
    print(runs.to_string(index=False))
    print("\n".join(verdict_lines(runs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", default="25,50,100,200,400,800")
    parser.add_argument("--model", default="deeplabv3plus")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pipelines", default="clean,broken")
    parser.add_argument("--dataset", default="synthetic_hard", help="synthetic: the colour scenes, for contrast")
    parser.add_argument("--out", default="content_check_hard.csv")
    parser.add_argument("--summarise", nargs="+", help="only summarise these CSVs")
    parser.add_argument(
        "--fault-doublings", type=int, help="with --summarise: count the flags again with this gate.evidence key"
    )
    args = parser.parse_args()
    if args.summarise:
        flags = dict.fromkeys(("audit_flags", "training_flags", "held_flags"), str)  # "" when none
        table = pd.concat([pd.read_csv(path, converters=flags) for path in args.summarise], ignore_index=True)
        report(table if args.fault_doublings is None else recount(table, args.fault_doublings))
        return
    steps = sorted(int(s) for s in args.steps.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        dcfg = prepare_dataset(compose([f"paths.cache={cache}", f"dataset={args.dataset}"]).dataset, cache)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for pipeline in args.pipelines.split(","):
                rows += run(dcfg, args.model, pipeline, seed, steps, args.batch, args.lr)
                pd.DataFrame(rows).to_csv(args.out, index=False)
    report(pd.DataFrame(rows))


if __name__ == "__main__":
    main()
