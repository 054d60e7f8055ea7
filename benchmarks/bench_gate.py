"""Power of the promotion gate (training/gate.py) with controlled candidates on the simulated brand.

    .venv/bin/python benchmarks/bench_gate.py --seeds 20 --decisions 100000

For every seed a fresh brand is simulated (nexttouch/simulate.py; its logging policy explores 30 %
of decisions) until it has ``--decisions`` logged decisions, and the simulator's truth gives every
action's true net value at every decision. The champion's value estimates are the truth plus an
error (a part fixed per customer and action, a part per decision), so it is a decent but imperfect
policy. Candidates are built from the same error:

- better:    truth + (1 - l) x error, l found so the candidate's TRUE value is the champion's + gap;
- worse:     truth + (1 + l) x error, true value = the champion's - gap;
- identical: the champion itself;
- equal:     truth + an independent error, scaled so its true value equals the champion's (other
             decisions, same value: only noise can tell them apart);
- better / worse, own errors: the same independent error scaled to the champion's value +/- gap.
  They differ from the champion on about a third of the decisions instead of a few percent, so
  the same gap is spread thin and the paired interval is wider: the harder case.

Each candidate meets the champion in the gate exactly as in the nightly job: the paired doubly
robust difference on the logged decisions, the candidate's values as the reward model, bootstrap
clustered by customer, tolerance ``--tolerance`` (the settings default). The table gives, per kind,
the share of seeds promoted, refused, and refused as "worse" (the whole interval below zero).
Targets: better promoted in >= 80 % of seeds, worse refused in >= 95 %, identical never "worse".
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from nexttouch.catalog import NO_ACTION, Catalog, load_catalog
from nexttouch.engine.choice import net_values
from nexttouch.schemas import ACTION, CUSTOMER_ID, OUTCOME, PROPENSITY
from nexttouch.settings import Settings
from nexttouch.simulate import simulate
from training.gate import N_BOOT, Paired, compare
from training.ope import greedy

KINDS = ("better", "worse", "identical", "equal", "better, own errors", "worse, own errors")
DECISION_RATE = 0.25
DAYS = 30
CUSTOMER_ERROR = 2.0  # the champion's error: per customer and action (it persists) ...
DECISION_ERROR = 1.0  # ... and per decision


@dataclass(frozen=True)
class World:
    """One simulated log: what the gate sees (logged action, propensity, reward, customers) and the truth."""

    logged: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    customers: np.ndarray
    eligible: np.ndarray
    true_nv: np.ndarray  # (decisions, actions)


def simulated_world(catalog: Catalog, decisions: int, seed: int) -> World:
    customers = int(np.ceil(decisions / (DAYS * DECISION_RATE) * 1.05))
    brand = simulate(catalog, customers, DAYS, datetime(2026, 11, 1, tzinfo=UTC), seed, decision_rate=DECISION_RATE)
    d = brand.decisions.head(decisions)
    truth = brand.decision_truth.head(decisions)
    logged = pd.Index(catalog.names).get_indexer(d[ACTION].astype(object))
    value = np.array([a.value_of_success for a in catalog.actions])
    cost = np.array([a.cost for a in catalog.actions])
    return World(
        logged=logged,
        propensity=d[PROPENSITY].to_numpy(float),
        reward=d[OUTCOME].to_numpy(float) * value[logged] - cost[logged],
        customers=d[CUSTOMER_ID].astype(str).to_numpy(),
        eligible=truth[[f"eligible_{a}" for a in catalog.names]].to_numpy(bool),
        true_nv=net_values(catalog, truth[[f"p_{a}" for a in catalog.names]].to_numpy()),
    )


def model_error(world: World, rng: np.random.Generator) -> np.ndarray:
    """An estimation error like a model's: fixed per customer and action, plus noise per decision."""
    codes, per_customer = np.unique(world.customers, return_inverse=True)
    k = world.true_nv.shape[1]
    fixed = rng.normal(0, CUSTOMER_ERROR, (len(codes), k))[per_customer.ravel()]
    return fixed + rng.normal(0, DECISION_ERROR, world.true_nv.shape)


def true_value(world: World, q: np.ndarray, none: int) -> float:
    pi = greedy(q, world.eligible, prefer=none)
    return float((pi * world.true_nv).sum(axis=1).mean())


def calibrate(value_at: Callable[[float], float], target: float, low: float, high: float, steps: int = 40) -> float:
    """The ``l`` in [low, high] whose value is closest to ``target``, by bisection (value increasing in l)."""
    for _ in range(steps):
        mid = (low + high) / 2
        if value_at(mid) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def candidates(
    world: World, gap: float, rng: np.random.Generator, none: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(champion's values, {kind: candidate's values}) with the candidates' true gaps set as ``KINDS`` says."""
    truth, error = world.true_nv, model_error(world, rng)
    base = true_value(world, truth + error, none)
    better = calibrate(lambda lam: true_value(world, truth + (1 - lam) * error, none), base + gap, 0.0, 1.0)
    worse = calibrate(lambda lam: -true_value(world, truth + (1 + lam) * error, none), -(base - gap), 0.0, 20.0)
    other = model_error(world, rng)

    def scaled(target: float) -> np.ndarray:
        return truth + calibrate(lambda s: -true_value(world, truth + s * other, none), -target, 0.0, 20.0) * other

    return truth + error, {
        "better": truth + (1 - better) * error,
        "worse": truth + (1 + worse) * error,
        "identical": truth + error,
        "equal": scaled(base),
        "better, own errors": scaled(base + gap),
        "worse, own errors": scaled(base - gap),
    }


def run_seed(catalog: Catalog, decisions: int, seed: int, gap: float, n_boot: int) -> list[dict[str, object]]:
    """Each kind of candidate against the champion on one simulated log: its true gap and the gate's reading."""
    none = catalog.names.index(NO_ACTION)
    world = simulated_world(catalog, decisions, seed)
    champion_q, kinds = candidates(world, gap, np.random.default_rng(seed + 10_000), none)
    champion = greedy(champion_q, world.eligible, prefer=none)
    base = float((champion * world.true_nv).sum(axis=1).mean())
    rows = []
    for kind, q in kinds.items():
        pi = greedy(q, world.eligible, prefer=none)
        paired = compare(pi, champion, world.logged, world.propensity, world.reward, q, world.customers, n_boot, seed)
        true_gap = float((pi * world.true_nv).sum(axis=1).mean()) - base
        rows.append({"seed": seed, "kind": kind, "true_gap": true_gap, "paired": paired})
    return rows


def table(rows: list[dict[str, object]], tolerance: float) -> pd.DataFrame:
    out = []
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        pairs: list[Paired] = [r["paired"] for r in mine]  # type: ignore[misc]
        outcomes = [p.outcome(tolerance) for p in pairs]
        out.append(
            {
                "candidate": kind,
                "seeds": len(mine),
                "true gap": np.mean([r["true_gap"] for r in mine]),
                "paired DR diff": np.mean([p.diff for p in pairs]),
                "95% CI width": np.mean([p.high - p.low for p in pairs]),
                "decisions that differ": np.mean([p.differ for p in pairs]),
                "CI covers true gap": np.mean(
                    [p.low <= r["true_gap"] <= p.high for p, r in zip(pairs, mine, strict=True)]
                ),
                "promoted": np.mean([o == "better" for o in outcomes]),
                "refused": np.mean([o != "better" for o in outcomes]),
                "refused as worse": np.mean([o == "worse" for o in outcomes]),
            }
        )
    return pd.DataFrame(out)


def markdown(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = [
            row[0],
            f"{row[1]}",
            f"{row[2]:+.3f}",
            f"{row[3]:+.3f}",
            f"{row[4]:.3f}",
            f"{row[5]:.1%}",
            f"{row[6]:.0%}",
        ]
        body.append("| " + " | ".join([*cells, *(f"{v:.0%}" for v in row[7:])]) + " |")
    return "\n".join([head, rule, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="simulated brands (one log each)")
    parser.add_argument("--decisions", type=int, default=100_000, help="logged decisions the gate sees per seed")
    parser.add_argument("--gap", type=float, default=0.15, help="true value gap per decision of better/worse")
    parser.add_argument(
        "--tolerance", help="gate tolerance (default: the settings default); a comma list adds a trade-off table"
    )
    parser.add_argument("--boot", type=int, default=N_BOOT, help="bootstrap resamples")
    args = parser.parse_args()
    default = Settings.model_fields["gate_tolerance"].default
    tolerances = [float(t) for t in args.tolerance.split(",")] if args.tolerance else [default]
    tolerance = tolerances[0]
    catalog = load_catalog()
    rows: list[dict[str, object]] = []
    start = time.monotonic()
    for seed in range(args.seeds):
        rows += run_seed(catalog, args.decisions, seed, args.gap, args.boot)
        print(f"seed {seed}: {time.monotonic() - start:.0f}s", flush=True)
    print(f"\n{args.decisions:,} decisions per seed, {args.seeds} seeds, tolerance {tolerance}, gap {args.gap}\n")
    print(markdown(table(rows, tolerance)))
    if len(tolerances) > 1:
        print("\nShare of seeds promoted, by tolerance:\n")
        print("| candidate | " + " | ".join(f"tolerance {t:g}" for t in tolerances) + " |")
        print("|---|" + "---|" * len(tolerances))
        shares = [table(rows, t).set_index("candidate")["promoted"] for t in tolerances]
        for kind in KINDS:
            print(f"| {kind} | " + " | ".join(f"{share[kind]:.0%}" for share in shares) + " |")


if __name__ == "__main__":
    main()
