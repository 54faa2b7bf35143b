"""``edge-agent`` command line: one thin verb per library entry point."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_agent.config import ConfigError, apply_overrides, load_yaml

DEFAULT_MODEL = "engines/mcsdr_default"


def _config(path: str | None, overrides: list[str]) -> tuple[dict, str]:
    data = load_yaml(path) if path else {}
    return apply_overrides(data, overrides), path or "defaults"


def cmd_train(args: argparse.Namespace) -> int:
    from edge_agent.train import parse_config, train

    data, source = _config(args.config, args.set)
    path = train(parse_config(data, source), resume=not args.restart)
    print(f"saved {path} and {path.with_suffix('.json')}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from edge_agent.simulate import write_dataset

    out = write_dataset(
        Path(args.out), n=args.n, seed=args.seed, fmt=args.format, n_beats=args.beats, workers=args.workers
    )
    print(f"wrote {args.n} clips to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edge_agent.evaluate import EvalRequest, run_evaluation

    req = EvalRequest(
        model=args.model,
        data=args.data,
        format=args.format,
        split=args.split,
        synthetic=args.synthetic,
        n=args.n,
        seed=args.seed,
        k=args.k,
        baselines=args.baselines,
        out=args.out,
        json_path=args.json,
        record=args.record,
    )
    result = run_evaluation(req)
    print(json.dumps({k: result["raw"][k] for k in ("n", "mae", "rmse", "crps", "picp90")}, indent=None))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from edge_agent.simulate import simulator_stats_table

    print(simulator_stats_table(n=args.n, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train MCSDR (and the two baselines) from a YAML config")
    t.add_argument("--config", default="configs/train_synthetic.yaml")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in train.out")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("simulate", help="write a simulated dataset in EchoNet-Dynamic or -Pediatric format")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["echonet", "pediatric"], default="echonet")
    s.add_argument("--beats", type=float, default=3.0, help="beats per clip (random start phase)")
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_simulate)

    e = sub.add_parser("evaluate", help="evaluate a model: Markdown table, JSON and plots")
    e.add_argument("--model", default=DEFAULT_MODEL)
    e.add_argument("--data", help="dataset folder (with --format)")
    e.add_argument("--format", choices=["echonet", "pediatric", "camus"], default="echonet")
    e.add_argument("--split", default="TEST")
    e.add_argument("--synthetic", action="store_true", help="fresh simulator clips instead of a dataset")
    e.add_argument("--n", type=int, default=500, help="number of simulated clips (--synthetic)")
    e.add_argument("--seed", type=int, default=3, help="simulator seed (--synthetic); training uses 1 and 2")
    e.add_argument("--k", type=int, default=40, help="posterior samples per clip")
    e.add_argument("--baselines", action="store_true", help="also evaluate the regression and Gaussian heads")
    e.add_argument("--out", default="runs/eval", help="folder for report.md, metrics.json and plots")
    e.add_argument("--json", help="also write the metrics JSON here")
    e.add_argument("--record", action="store_true", help="store the figures in the model's sidecar JSON")
    e.set_defaults(func=cmd_evaluate)

    st = sub.add_parser("sim-stats", help="image statistics of simulated clips next to real EchoNet clips")
    st.add_argument("--n", type=int, default=24)
    st.add_argument("--seed", type=int, default=11)
    st.set_defaults(func=cmd_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"edge-agent: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
