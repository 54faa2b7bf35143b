"""``edge-agent`` command line: one thin verb per library entry point."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_agent.config import ConfigError, apply_overrides, load_yaml

DEFAULT_MODEL = "engines/mcsdr_default"
DEFAULT_AGENT_CONFIG = "configs/default.yaml"


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


def _agent_config(args: argparse.Namespace):
    from edge_agent.agent import load_agent_config

    path = args.config
    if path is None:
        # The shipped default config, found from the current directory or the checkout.
        for candidate in (
            Path(DEFAULT_AGENT_CONFIG),
            Path(__file__).resolve().parents[1] / DEFAULT_AGENT_CONFIG,
        ):
            if candidate.exists():
                path = candidate
                break
    return load_agent_config(path, args.set, sources=getattr(args, "source", None))


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from edge_agent.agent import Agent

    cfg = _agent_config(args)
    logging.basicConfig(
        level=cfg.supervisor.log_level, format="%(asctime)s supervisor %(levelname)s %(message)s"
    )
    agent = Agent(cfg)
    print(f"edge-agent: publishing on {agent.endpoints['publish']} (Ctrl-C stops)", file=sys.stderr)
    agent.run(duration_s=args.seconds)
    left = agent.leftovers()
    if left["processes"] or left["rings"]:
        print(f"edge-agent: left behind after stop: {left}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from edge_agent.demo import run_demo

    args.set = [f"transport.publish={args.publish}", f"supervisor.log_level={args.log_level}", *args.set]
    cfg = _agent_config(args)
    logging.basicConfig(
        level=cfg.supervisor.log_level, format="%(asctime)s supervisor %(levelname)s %(message)s"
    )
    summary = run_demo(cfg, args.seconds, json_path=args.json)
    keys = (
        "n_estimates",
        "mae_vs_truth",
        "beat_mae_vs_truth",
        "latency_ms",
        "latency_from_ready_ms",
        "windows_dropped",
        "beats_missed",
        "beats_missed_at_patient_change",
        "leftovers",
    )
    print(json.dumps({k: summary[k] for k in keys}))
    return 0 if not (summary["leftovers"]["processes"] or summary["leftovers"]["rings"]) else 1


def cmd_monitor(args: argparse.Namespace) -> int:
    from edge_agent.monitor import run_monitor

    run_monitor(args.connect, stale_after_s=args.stale_after, duration_s=args.seconds)
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    from edge_agent.monitor import subscribe_json

    subscribe_json(args.connect, count=args.count, timeout=args.timeout)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from edge_agent.agent import remote_worker

    remote_worker(_agent_config(args), args.connect)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edge_agent.export import ExportRequest, export

    paths = export(ExportRequest(model=args.model, out=args.out, k=args.k, opset=args.opset))
    for name, path in paths.items():
        print(f"{name}: {path} (+ {path.name}.json)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.bench import QUICK, bench_config, plot_report, report_markdown, run_bench

    data, source = _config(args.config, args.set)
    cfg, agent_overrides = bench_config(data, source, quick=args.quick)
    result = run_bench(cfg, agent_overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = report_markdown(result)
    (out / "report.md").write_text(report)
    plots = plot_report(result, out)
    json_path = Path(args.json) if args.json else out / "bench.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(report)
    print(f"wrote {out / 'report.md'}, {json_path} and {', '.join(str(p) for p in plots)}")
    if args.quick:
        print(f"(--quick: {QUICK}; smoke figures, not for publishing)")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from edge_agent.engine_build import EngineBuildError, build_engine_cli

    try:
        return build_engine_cli(
            args.onnx,
            precision=args.precision,
            max_batch=args.max_batch,
            dla_core=args.dla_core,
            calibration_cache=args.calibration_cache,
            workspace_mb=args.workspace_mb,
            force=args.force,
        )
    except EngineBuildError as e:
        print(f"edge-agent: engine build failed: {e}", file=sys.stderr)
        return 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edge_agent.calibrate import CalibrationError, run_calibration

    try:
        result = run_calibration(
            n=args.n, recordings=args.recordings, out=args.out, model=args.model, force=args.force
        )
    except CalibrationError as e:
        print(f"edge-agent: calibration failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
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

    def agent_options(a: argparse.ArgumentParser) -> None:
        a.add_argument(
            "--config", help=f"agent YAML (default: {DEFAULT_AGENT_CONFIG}, else built-in defaults)"
        )
        a.add_argument(
            "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key"
        )

    r = sub.add_parser("run", help="run the live agent: captures, windowers, workers, hub (Ctrl-C stops)")
    agent_options(r)
    r.add_argument(
        "--source", action="append", metavar="URI", help="replace the configured streams (repeatable)"
    )
    r.add_argument("--seconds", type=float, help="stop after this many seconds (default: run until stopped)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="run the agent and the bedside monitor together, then print a summary")
    agent_options(d)
    d.add_argument("--seconds", type=float, default=30.0)
    d.add_argument(
        "--source", action="append", metavar="URI", help="replace the configured streams (repeatable)"
    )
    d.add_argument("--json", help="write the summary JSON here")
    d.add_argument("--publish", default="ipc://{run}/publish", help="publish endpoint (default: private ipc)")
    d.add_argument("--log-level", default="WARNING", help="agent log level (the monitor owns the terminal)")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("monitor", help="live bedside view of a running agent")
    m.add_argument(
        "--connect", action="append", required=True, metavar="ENDPOINT", help="e.g. tcp://127.0.0.1:5556"
    )
    m.add_argument("--stale-after", type=float, default=5.0, help="s without an estimate before STALE")
    m.add_argument("--seconds", type=float, help="exit after this many seconds")
    m.set_defaults(func=cmd_monitor)

    b = sub.add_parser("subscribe", help="print every published message as one JSON line")
    b.add_argument("--connect", action="append", required=True, metavar="ENDPOINT")
    b.add_argument(
        "--json", action="store_true", default=True, help="one JSON object per line (the only format)"
    )
    b.add_argument("--count", type=int, help="exit after this many messages")
    b.add_argument("--timeout", type=float, help="exit when nothing arrives for this many seconds")
    b.set_defaults(func=cmd_subscribe)

    x = sub.add_parser("export", help="export the model to ONNX: the fused posterior graph and its parts")
    x.add_argument("--model", default=DEFAULT_MODEL + ".pt", help="checkpoint with its sidecar JSON")
    x.add_argument("--out", help="output path stem (default: next to the model)")
    x.add_argument("--k", type=int, default=40, help="posterior samples per window (static in the graph)")
    x.add_argument("--opset", type=int, default=17)
    x.set_defaults(func=cmd_export)

    eb = sub.add_parser(
        "build-engine", help="build (or reuse) a TensorRT engine from the exported ONNX, on the target"
    )
    eb.add_argument("--onnx", default=DEFAULT_MODEL + ".onnx")
    eb.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    eb.add_argument("--max-batch", type=int, default=8, help="largest batch of windows per call")
    eb.add_argument("--dla-core", type=int, help="Jetson Orin: build for this DLA core, with GPU fallback")
    eb.add_argument("--calibration-cache", help="TensorRT 10.x INT8 calibration cache")
    eb.add_argument("--workspace-mb", type=int, default=1024)
    eb.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")
    eb.set_defaults(func=cmd_build_engine)

    cb = sub.add_parser(
        "calibrate", help="INT8: calibration windows, quantised ONNX models, their evaluation"
    )
    cb.add_argument("--n", type=int, default=12, help="windows to draw from the simulator")
    cb.add_argument("--recordings", nargs="*", default=[], metavar="PATH", help="videos or DICOM cines too")
    cb.add_argument("--out", default="calibration", help="folder for the windows and their manifest")
    cb.add_argument("--model", default=DEFAULT_MODEL + ".onnx", help="the fp32 fused graph")
    cb.add_argument("--force", action="store_true", help="redraw and requantise even when cached")
    cb.set_defaults(func=cmd_calibrate)

    bn = sub.add_parser(
        "bench", help="latency benchmark: scenarios, backends side by side, live agent, telemetry"
    )
    bn.add_argument(
        "--config", help="YAML with sections bench, worker, telemetry (e.g. configs/bench_jetson.yaml)"
    )
    bn.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key")
    bn.add_argument("--quick", action="store_true", help="a smoke run: short durations, few samples")
    bn.add_argument("--out", default="runs/bench", help="folder for report.md, bench.json and the plots")
    bn.add_argument("--json", help="write the JSON here instead of OUT/bench.json")
    bn.set_defaults(func=cmd_bench)

    w = sub.add_parser("worker", help="run one inference worker against a hub on another host")
    agent_options(w)
    w.add_argument(
        "--connect", required=True, metavar="ENDPOINT", help="the hub's workers endpoint, tcp://host:port"
    )
    w.set_defaults(func=cmd_worker)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"edge-agent: configuration error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from edge_agent.agent import AgentError  # imported late: most verbs never start an agent

        if not isinstance(e, AgentError):
            raise
        print(f"edge-agent: the agent stopped: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
