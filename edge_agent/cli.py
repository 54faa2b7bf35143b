"""``edge-agent`` command line: one thin verb per library entry point."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, NoReturn

from edge_agent.config import ConfigError, load_yaml, parse_with_overrides, to_mapping
from edge_agent.core.shipped import resolve

DEFAULT_MODEL = "engines/mcsdr_default"
DEFAULT_AGENT_CONFIG = "configs/default.yaml"

# Packages the runtime install leaves out, and the extra that brings each (pyproject.toml).
EXTRAS = {"torch": "train", "matplotlib": "train", "onnx": "train", "nibabel": "train"}
EXTRAS |= {"tensorrt": "tensorrt-cu12", "cuda": "tensorrt-cu12"}

Command = Callable[[argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows an option's default where it says something. Unlike
    ArgumentDefaultsHelpFormatter it also shows it for options without help text, and leaves out
    None, an empty list, a flag's True/False and defaults the help text already explains."""

    def _format_action(self, action: argparse.Action) -> str:
        if _shows_default(action):
            action = copy.copy(action)  # the parser's own action keeps its help
            action.help = " ".join(filter(None, (action.help, "(default: %(default)s)")))
        return super()._format_action(action)


def _shows_default(action: argparse.Action) -> bool:
    return (
        bool(action.option_strings)
        and action.nargs != 0  # a flag: its presence is the setting
        and action.default not in (None, argparse.SUPPRESS, [])
        and "default" not in (action.help or "")
    )


@dataclass(frozen=True)
class Verb:
    """One ``edge-agent NAME``: its line in the top-level help, its options and the command run."""

    name: str
    summary: str
    add_arguments: AddArguments
    run: Command


# In registration order, which is the order of the top-level help.
VERBS: list[Verb] = []


def verb(name: str, summary: str, add_arguments: AddArguments) -> Callable[[Command], Command]:
    """Register the decorated command as ``edge-agent NAME`` with the options add_arguments adds."""

    def register(run: Command) -> Command:
        VERBS.append(Verb(name, summary, add_arguments, run))
        return run

    return register


def _number(kind: type, lo: float, what: str, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) >= lo (> lo when strict)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < lo or (strict and value == lo):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


SECONDS = _number(float, 0.0, "a number of seconds > 0", strict=True)
SECONDS_OR_0 = _number(float, 0.0, "a number of seconds >= 0")
COUNT = _number(int, 1, "an integer >= 1")
INDEX = _number(int, 0, "an integer >= 0")


def endpoint_arg(text: str) -> str:
    """An argparse type: a ZeroMQ endpoint (ZeroMQ itself only says 'Invalid argument')."""
    if not re.fullmatch(r"(tcp|ipc|inproc)://\S+", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a ZeroMQ endpoint such as tcp://127.0.0.1:5556 or ipc:///run/agent/publish"
        )
    return text


# Options several verbs share.


def _set_option(p: argparse.ArgumentParser, what: str = "a key") -> None:
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=f"override {what}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level_option(p: argparse.ArgumentParser, default: str | None, what: str = "log level") -> None:
    p.add_argument("--log-level", choices=LOG_LEVELS, default=default, help=what)


MODEL_HELP = "the model artefact: its stem or any of its files (.pt, .onnx)"


def _agent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=_shipped_path,
        help=f"agent YAML (default: {DEFAULT_AGENT_CONFIG}, else built-in defaults)",
    )
    _set_option(p)


def _source_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", action="append", metavar="URI", help="replace the configured streams (repeatable)"
    )


def _curve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curve-server-key", metavar="PATH", help="the agent's public key (NAME.key)")
    p.add_argument("--curve-client-key", metavar="PATH", help="this client's secret key (NAME.key_secret)")


def _publish_endpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect",
        action="append",
        metavar="ENDPOINT",
        help="publish endpoint (repeatable; default tcp://127.0.0.1:5556, the agent's default)",
    )


def _config(path: str | None, overrides: list[str], parse: Callable[[dict, str], Any]) -> Any:
    """``parse`` of the YAML at ``path`` (None: the built-in defaults) with the --set overrides."""
    return parse_with_overrides(parse, load_yaml(path) if path else {}, overrides, path or "defaults")


def _log_to_stderr(level: str, who: str) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s {who} %(levelname)s %(message)s")


def _shipped_path(text: str) -> str:
    """A path option: as given from the current directory, else the shipped file of that name
    (``engines/mcsdr_default.pt`` works from any directory, in a checkout or an installed wheel)."""
    return str(resolve(text))


# The verbs: each one's options, then its command.


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=_shipped_path,
        default="configs/train.yaml",
        help="the shipped model's recipe by default",
    )
    _set_option(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in train.out")
    p.add_argument(
        "--refit-ood",
        action="store_true",
        help="do not train: refit the out-of-distribution score of the trained train.artefact on the "
        "config's data (then re-export and recalibrate its engines)",
    )


@verb("train", "train MCSDR (and the two baselines) from a YAML config", _train_arguments)
def cmd_train(args: argparse.Namespace) -> int:
    from edge_agent.ml.train import parse_config, refit_ood, train

    sections = _config(args.config, args.set, parse_config)
    path = refit_ood(sections) if args.refit_ood else train(sections, resume=not args.restart)
    print(f"saved {path} and {path.with_suffix('.json')}")
    return 0


def _generation_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generation", type=int, choices=[1, 2], default=1, help="simulator generation")


def _simulate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=COUNT, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["echonet", "pediatric"], default="echonet")
    p.add_argument("--beats", type=SECONDS, default=3.0, help="beats per clip (random start phase)")
    p.add_argument("--workers", type=int, default=2)
    _generation_option(p)


@verb("simulate", "write a simulated dataset in EchoNet-Dynamic or -Pediatric format", _simulate_arguments)
def cmd_simulate(args: argparse.Namespace) -> int:
    from edge_agent.ml.simulate import write_dataset

    out = write_dataset(
        Path(args.out),
        n=args.n,
        seed=args.seed,
        fmt=args.format,
        n_beats=args.beats,
        workers=args.workers,
        generation=args.generation,
    )
    print(f"wrote {args.n} clips to {out}")
    return 0


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_shipped_path, default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--data", help="dataset folder (with --format)")
    p.add_argument("--format", choices=["echonet", "pediatric", "camus"], default="echonet")
    p.add_argument("--split", default="TEST")
    p.add_argument("--synthetic", action="store_true", help="fresh simulator clips instead of a dataset")
    p.add_argument("--n", type=COUNT, default=500, help="number of simulated clips (--synthetic)")
    p.add_argument(
        "--seed",
        type=int,
        default=6,
        help="simulator seed (--synthetic); training uses 1, 2 and 3 (generation 1)",
    )
    p.add_argument(
        "--generation",
        type=int,
        choices=[1, 2],
        default=None,
        help="simulator generation (--synthetic; default: the model's training data's)",
    )
    p.add_argument("--k", type=COUNT, default=40, help="posterior samples per clip")
    p.add_argument("--baselines", action="store_true", help="also evaluate the regression and Gaussian heads")
    p.add_argument("--out", default="runs/eval", help="folder for report.md, metrics.json and plots")
    p.add_argument("--json", help="also write the metrics JSON here")
    p.add_argument("--record", action="store_true", help="store the figures in the model's sidecar JSON")
    p.add_argument(
        "--beats",
        choices=["traced", "detector"],
        default="traced",
        help="traced: the dataset's ED frame; detector: the live agent's windows, pooled per clip",
    )


@verb("evaluate", "evaluate a model: Markdown table, JSON and plots", _evaluate_arguments)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from edge_agent.ml.evaluate import EvalRequest, run_evaluation

    req = EvalRequest(
        model=args.model,
        data=args.data,
        format=args.format,
        split=args.split,
        synthetic=args.synthetic,
        n=args.n,
        seed=args.seed,
        generation=args.generation,
        k=args.k,
        baselines=args.baselines,
        out=args.out,
        json_path=args.json,
        record=args.record,
        beats=args.beats,
    )
    result = run_evaluation(req)
    print(json.dumps({k: result["raw"][k] for k in ("n", "mae", "rmse", "crps", "picp90")}, indent=None))
    return 0


def _stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--seed", type=int, default=11)
    _generation_option(p)


@verb("sim-stats", "image statistics of simulated clips next to real EchoNet clips", _stats_arguments)
def cmd_stats(args: argparse.Namespace) -> int:
    from edge_agent.ml.simulate import simulator_stats_table

    print(simulator_stats_table(n=args.n, seed=args.seed, generation=args.generation))
    return 0


def _robustness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_shipped_path, default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--n", type=COUNT, default=500, help="simulated cines (equal parts good/medium/poor)")
    p.add_argument("--seed", type=int, default=4242, help="simulator seed, never one used in training")
    p.add_argument("--k", type=COUNT, default=40, help="posterior samples per window")
    p.add_argument("--phases", type=COUNT, default=8, help="window start phases per beat")
    _generation_option(p)
    p.add_argument(
        "--real",
        action="append",
        default=[],
        metavar="FILE",
        help="a recording (DICOM cine, video) whose live-cut windows join the OOD table; repeatable",
    )
    p.add_argument("--out", default="runs/robustness", help="folder for report.md, robustness.json, plot")


@verb(
    "robustness",
    "posterior under misaligned windows and other views (phase, period, zoom, aspect, rotation, gain), "
    "and the OOD score on corrupted and real inputs",
    _robustness_arguments,
)
def cmd_robustness(args: argparse.Namespace) -> int:
    from edge_agent.ml.robustness import RobustnessRequest, run_robustness

    req = RobustnessRequest(
        model=args.model,
        n=args.n,
        seed=args.seed,
        k=args.k,
        phases=args.phases,
        out=args.out,
        generation=args.generation,
        real=tuple(args.real),
    )
    result = run_robustness(req)
    print(json.dumps({t["metric"] + " " + t["target"]: t["value"] for t in result["targets"]}))
    return 0


FPS = _number(float, 0.0, "a frame rate > 0", strict=True)


def _cycles_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="video files or DICOM cines, played once each")
    p.add_argument(
        "--fps",
        type=FPS,
        help="the true frame rate, when the file's header is wrong (EchoNet AVIs say 30 for 50)",
    )
    p.add_argument(
        "--out", default="runs/cycles-check", help="folder for cycles_check.md/.json and one plot per file"
    )
    _agent_options(p)  # the detector is the agent's section cycles (e.g. --set cycles.weights=…)


@verb(
    "cycles-check",
    "label-free checks of the cycle detector on any cine: heart rate vs the cine's own period, alignment, "
    "fallbacks (exit 1 when a file's heart rates disagree)",
    _cycles_check_arguments,
)
def cmd_cycles_check(args: argparse.Namespace) -> int:
    from edge_agent.ml.cycles_check import run, table

    results = run(args.files, Path(args.out), fps=args.fps, cycles=_agent_config(args).cycles)
    print(table(results))
    print(f"\nwritten to {args.out}/ (cycles_check.md, cycles_check.json, one PNG per file)")
    return 0 if all(r.checks["hr_agrees"] for r in results) else 1


def _cycles_table_arguments(p: argparse.ArgumentParser) -> None:
    from edge_agent.sim.phantom import QUALITIES

    p.add_argument("--seed", type=int, default=0, help="the patients' seed (take a fresh one to test)")
    p.add_argument("--patients", type=COUNT, default=20, help="simulated patients per cell")
    p.add_argument("--seconds", type=SECONDS, default=25.0, help="each patient's stream length")
    p.add_argument("--generation", type=int, nargs="+", choices=(1, 2), default=[1, 2], help="simulators")
    p.add_argument("--fps", type=FPS, nargs="+", default=[50.0, 30.0], help="frame rates")
    p.add_argument("--quality", nargs="+", choices=QUALITIES, default=list(QUALITIES), help="image qualities")
    p.add_argument("--workers", type=COUNT, default=2, help="processes (one cell each at a time)")
    p.add_argument(
        "--only",
        type=INDEX,
        nargs="+",
        metavar="K",
        help="replay only patients #K of each cell (as the table names them)",
    )
    p.add_argument("--out", default="runs/cycles-table", help="folder for cycles_table.md and .json")
    _agent_options(p)  # the detector is the agent's section cycles


@verb(
    "cycles-table",
    "the cycle detector's accuracy on simulated patients: every generation × fps × image quality "
    "(exit 1 when a cell is below 95 %%)",
    _cycles_table_arguments,
)
def cmd_cycles_table(args: argparse.Namespace) -> int:
    from edge_agent.ml.cycles_eval import TABLE_TARGET, detector_table, table_markdown

    if args.only and max(args.only) >= args.patients:
        print(
            f"edge-agent cycles-table: --only {max(args.only)}: each cell has patients "
            f"#0–#{args.patients - 1}; raise --patients",
            file=sys.stderr,
        )
        return 2
    cells = detector_table(
        args.seed,
        args.patients,
        args.seconds,
        tuple(args.generation),
        tuple(args.fps),
        tuple(args.quality),
        args.workers,
        _agent_config(args).cycles,
        None if args.only is None else tuple(args.only),
    )
    text = table_markdown(cells)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cycles_table.md").write_text(f"# Cycle detector, seed {args.seed}\n\n{text}\n")
    (out / "cycles_table.json").write_text(json.dumps(cells, indent=1))
    print(text)
    print(f"\nwritten to {out}/ (cycles_table.md, cycles_table.json)")
    return 0 if all(c["accuracy"] >= TABLE_TARGET for c in cells) else 1


def _agent_config(args: argparse.Namespace):
    from edge_agent.live.agent import load_agent_config

    path = args.config
    if path is None and (shipped_default := resolve(DEFAULT_AGENT_CONFIG)).exists():
        path = shipped_default  # from the current directory, else the shipped one
    # --log-level (run, worker, demo) is supervisor.log_level; an explicit --set of it wins.
    level = getattr(args, "log_level", None)
    overrides = [*([f"supervisor.log_level={level}"] if level else []), *args.set]
    cfg = load_agent_config(path, overrides, sources=getattr(args, "source", None))
    if hasattr(args, "source"):  # run and demo open the streams: a bad source is an argument error
        _check_sources(cfg)
    return cfg


def _check_sources(cfg) -> None:
    """Every stream's source is a URI open_source understands and, for a file, exists and opens (its
    header read: a broken DICOM or video fails here, in one line, before any process starts, instead
    of as a capture that dies). Devices and network streams are not opened twice."""
    from edge_agent.live.sources import SourceError, open_source
    from edge_agent.live.sources.base import FileSource

    for i, stream in enumerate(cfg.streams):
        where = f"streams[{i}] ({stream.id}).source"
        try:
            source = open_source(
                stream.source, fps=stream.fps, loop=stream.loop, demographics=stream.demographics
            )
            if isinstance(source, FileSource):
                if not source.path.is_file():
                    raise ConfigError(f"{where}: {source.path}: no such file; check the path")
                source.open()
                source.close()
        except SourceError as e:
            raise ConfigError(f"{where}: {e}") from None


def _run_arguments(p: argparse.ArgumentParser) -> None:
    _agent_options(p)
    _source_option(p)
    p.add_argument(
        "--seconds", type=SECONDS, help="stop after this many seconds (default: run until stopped)"
    )
    _log_level_option(p, None, "the agent's log level (default: the config's supervisor.log_level)")


@verb("run", "run the live agent: captures, windowers, workers, hub (Ctrl-C stops)", _run_arguments)
def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.live.agent import Agent

    cfg = _agent_config(args)
    _log_to_stderr(cfg.supervisor.log_level, "supervisor")
    agent = Agent(cfg)
    print(f"edge-agent: publishing on {agent.endpoints['publish']} (Ctrl-C stops)", file=sys.stderr)
    agent.run(duration_s=args.seconds)
    left = agent.leftovers()
    if left["processes"] or left["rings"]:
        print(f"edge-agent: left behind after stop: {left}", file=sys.stderr)
        return 1
    return 0


def _config_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show"], help="show: print it as YAML")
    _agent_options(p)


@verb(
    "config",
    "the effective agent configuration: the file (or the shipped default), built-in defaults, --set",
    _config_show_arguments,
)
def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    # Every key, defaults included: the output is itself a valid --config file.
    print(yaml.safe_dump(to_mapping(_agent_config(args)), sort_keys=False, allow_unicode=True), end="")
    return 0


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    _agent_options(p)
    p.add_argument("--seconds", type=SECONDS, default=30.0)
    _source_option(p)
    p.add_argument("--json", help="write the summary JSON here")
    p.add_argument(
        "--screenshot",
        metavar="PATH.svg",
        help="write the monitor screen as it stood when the sources stopped (SVG)",
    )
    p.add_argument(
        "--publish",
        type=endpoint_arg,
        default="ipc://{run}/publish",
        help="publish endpoint (default: private ipc)",
    )
    _log_level_option(p, "WARNING", "the agent's log level (the monitor owns the terminal)")


@verb("demo", "run the agent and the bedside monitor together, then print a summary", _demo_arguments)
def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.tools.demo import run_demo

    args.set = [f"transport.publish={args.publish}", *args.set]
    cfg = _agent_config(args)
    _log_to_stderr(cfg.supervisor.log_level, "supervisor")
    summary = run_demo(cfg, args.seconds, json_path=args.json, screenshot_path=args.screenshot)
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


def _monitor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect",
        action="append",
        required=True,
        type=endpoint_arg,
        metavar="ENDPOINT",
        help="e.g. tcp://127.0.0.1:5556",
    )
    p.add_argument(
        "--stale-after", type=SECONDS, help="s without an estimate before STALE (alarms.stale_after_s, 5)"
    )
    _agent_options(p)  # its `alarms` section: the thresholds
    p.add_argument("--seconds", type=SECONDS, help="exit after this many seconds")
    _curve_options(p)


@verb("monitor", "live bedside view of a running agent", _monitor_arguments)
def cmd_monitor(args: argparse.Namespace) -> int:
    from edge_agent.clients.monitor import run_monitor

    alarms = _agent_config(args).alarms
    if args.stale_after is not None:
        alarms = dataclasses.replace(alarms, stale_after_s=args.stale_after)
    run_monitor(
        args.connect,
        alarms=alarms,
        duration_s=args.seconds,
        curve_server_key=args.curve_server_key,
        curve_client_key=args.curve_client_key,
    )
    return 0


def _topic_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--topic",
        action="append",
        metavar="PREFIX",
        help="topic prefix: lvef. (estimates), lvef.bed1. (bed 1's only), status. (repeatable; default all)",
    )


def _subscribe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", action="append", required=True, type=endpoint_arg, metavar="ENDPOINT")
    _topic_option(p)
    p.add_argument("--count", type=COUNT, help="exit after this many messages")
    p.add_argument(
        "--timeout",
        type=SECONDS,
        help="exit when nothing arrives for this many seconds (exit 1 if nothing arrived at all)",
    )
    _curve_options(p)


@verb("subscribe", "print every published message as one JSON line", _subscribe_arguments)
def cmd_subscribe(args: argparse.Namespace) -> int:
    from edge_agent.clients.monitor import subscribe_json

    written = subscribe_json(
        args.connect,
        count=args.count,
        timeout=args.timeout,
        topics=tuple(args.topic or ("",)),
        curve_server_key=args.curve_server_key,
        curve_client_key=args.curve_client_key,
    )
    if written == 0 and args.timeout is not None:
        # An agent publishes a heartbeat every few seconds: silence means no agent (or a wrong
        # endpoint or key), not a quiet one.
        print(
            f"edge-agent: no message from {', '.join(args.connect)} in {args.timeout:g} s: is an agent "
            "running and publishing there (and, with CURVE, are the keys right)?",
            file=sys.stderr,
        )
        return 1
    return 0


SCHEMA_KINDS = ("estimate", "status", "heartbeat", "window", "result", "failure")


def _schema_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind", choices=SCHEMA_KINDS, help="one message's schema only (default: all, under $defs)"
    )


@verb("schema", "the wire schema of every message as JSON Schema (draft 2020-12)", _schema_arguments)
def cmd_schema(args: argparse.Namespace) -> int:
    from edge_agent.protocol.wire import json_schema

    schema = json_schema()
    if args.kind is not None:  # standalone: the one definition, with the dialect, title and rules
        one = schema["$defs"][args.kind]
        top = {k: v for k, v in schema.items() if k != "$defs"}
        schema = top | one | {"description": f"{one['description']}; {top['description']}"}
    print(json.dumps(schema, indent=2))
    return 0


def _keys_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the two files (made 0700)")
    p.add_argument("--name", required=True, help="file stem: the host or client it is for")
    p.add_argument("--force", action="store_true", help="replace an existing pair of that name")


@verb("keys", "make a CURVE key pair (NAME.key public, NAME.key_secret secret)", _keys_arguments)
def cmd_keys(args: argparse.Namespace) -> int:
    from edge_agent.protocol.security import make_key_pair

    public, secret = make_key_pair(args.out, args.name, force=args.force)
    print(f"public key: {public}  (give it out)")
    print(f"secret key: {secret}  (mode 0600: keep it on this host, never copy it)")
    print(
        f"for a client (monitor, subscribe, remote worker): copy {public} into the agent's "
        f"transport.curve_allow directory, and use --curve-client-key {secret} (monitor, subscribe) "
        f"or --set transport.curve_client_secret={secret} (worker)"
    )
    print(
        f"for the agent (server): set transport.curve_secret: {secret} and transport.curve_allow: "
        f"<directory of client keys>; give {public} to every client (--curve-server-key, "
        "transport.curve_server_key)"
    )
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_shipped_path, default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--out", help="folder for the ONNX graphs and their sidecars (default: the model's)")
    p.add_argument("--k", type=COUNT, default=40, help="posterior samples per window (static in the graph)")
    p.add_argument("--opset", type=int, default=17)


@verb("export", "export the model to ONNX: the fused posterior graph and its parts", _export_arguments)
def cmd_export(args: argparse.Namespace) -> int:
    from edge_agent.inference.export import ExportRequest, export

    paths = export(ExportRequest(model=args.model, out=args.out, k=args.k, opset=args.opset))
    for name, path in paths.items():
        print(f"{name}: {path} (+ {path.name}.json)")
    return 0


def _build_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", type=_shipped_path, default=DEFAULT_MODEL + ".onnx")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of windows per call")
    p.add_argument("--calibration-cache", help="TensorRT 10.x INT8 calibration cache")
    p.add_argument("--workspace-mb", type=int, default=1024)
    p.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")


@verb(
    "build-engine",
    "build (or reuse) a TensorRT engine from the exported ONNX, on the target",
    _build_engine_arguments,
)
def cmd_build_engine(args: argparse.Namespace) -> int:
    from edge_agent.inference.engine_build import EngineBuildError, build_engine_cli

    try:
        return build_engine_cli(
            args.onnx,
            precision=args.precision,
            max_batch=args.max_batch,
            calibration_cache=args.calibration_cache,
            workspace_mb=args.workspace_mb,
            force=args.force,
        )
    except EngineBuildError as e:
        print(f"edge-agent: engine build failed: {e}", file=sys.stderr)
        return 1


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=12, help="windows to draw from the simulator")
    p.add_argument("--recordings", nargs="*", default=[], metavar="PATH", help="videos or DICOM cines too")
    p.add_argument("--out", default="calibration", help="folder for the windows and their manifest")
    p.add_argument(
        "--model",
        type=_shipped_path,
        default=DEFAULT_MODEL,
        help=MODEL_HELP + "; its fp32 fused graph is used",
    )
    p.add_argument("--force", action="store_true", help="redraw and requantise even when cached")
    p.add_argument(
        "--generation",
        type=int,
        choices=[1, 2],
        default=2,
        help="simulator generation of the calibration and test windows (the shipped model's: 2)",
    )


@verb("calibrate", "INT8: calibration windows, quantised ONNX models, their evaluation", _calibrate_arguments)
def cmd_calibrate(args: argparse.Namespace) -> int:
    from edge_agent.inference.calibrate import CalibrationError, run_calibration

    try:
        result = run_calibration(
            n=args.n,
            recordings=args.recordings,
            out=args.out,
            model=args.model,
            force=args.force,
            generation=args.generation,
        )
    except CalibrationError as e:
        print(f"edge-agent calibrate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=_shipped_path,
        help="YAML with sections bench, worker, telemetry (e.g. configs/bench_jetson.yaml)",
    )
    _set_option(p)
    p.add_argument("--quick", action="store_true", help="a smoke run: short durations, few samples")
    p.add_argument("--out", default="runs/bench", help="folder for report.md, bench.json and the plots")
    p.add_argument("--json", help="write the JSON here instead of OUT/bench.json")


@verb("bench", "latency benchmark: scenarios, backends side by side, live agent, telemetry", _bench_arguments)
def cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.tools.bench import (
        QUICK,
        QUICK_OVERRIDES,
        bench_config,
        plot_report,
        report_markdown,
        run_bench,
    )

    sets = [*(QUICK_OVERRIDES if args.quick else ()), *args.set]
    cfg, agent_overrides = _config(args.config, sets, bench_config)
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


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    _agent_options(p)
    p.add_argument(
        "--connect",
        required=True,
        type=endpoint_arg,
        metavar="ENDPOINT",
        help="the hub's workers endpoint, tcp://host:port",
    )
    _log_level_option(p, None, "the worker's log level (default: the config's supervisor.log_level)")


@verb("worker", "run one inference worker against a hub on another host", _worker_arguments)
def cmd_worker(args: argparse.Namespace) -> int:
    from edge_agent.live.agent import remote_worker
    from edge_agent.protocol.security import client_keys, scheme

    cfg = _agent_config(args)
    if scheme(args.connect) == "tcp":
        client_keys(cfg.transport)  # key errors now, not after the model has loaded
    remote_worker(cfg, args.connect)
    return 0


def _record_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, metavar="PATH", help="the SQLite recording (made when absent)")
    _publish_endpoints(p)
    _topic_option(p)
    p.add_argument(
        "--synchronous",
        type=str.upper,
        choices=["NORMAL", "FULL"],
        default="NORMAL",
        help="NORMAL: commits survive a crash of the recorder; FULL: also a power cut (fsync per record)",
    )
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until stopped)")
    p.add_argument("--count", type=int, help="stop after this many records")
    p.add_argument(
        "--progress", type=float, default=60.0, metavar="S", help="s between progress lines (0: none)"
    )
    p.add_argument(
        "--export-csv",
        metavar="OUT",
        help="export instead: estimates to OUT, status and gaps beside it (OUT.status.csv, OUT.gaps.csv)",
    )
    _log_level_option(p, "INFO")
    _curve_options(p)


@verb(
    "record",
    "record estimates, status and heartbeats into SQLite; or export a recording as CSV",
    _record_arguments,
)
def cmd_record(args: argparse.Namespace) -> int:
    import sqlite3

    from edge_agent.clients.record import (
        DEFAULT_ENDPOINT,
        RecordConfig,
        Recorder,
        RecordError,
        export_csv,
    )
    from edge_agent.core.stage import run_stage

    _log_to_stderr(args.log_level, "record")
    try:
        if args.export_csv:
            live = [f for f in ("connect", "topic", "seconds", "count") if getattr(args, f) is not None]
            if live:
                raise RecordError(f"--export-csv reads --db only; drop --{', --'.join(live)}")
            for table, (path, rows) in export_csv(args.db, args.export_csv).items():
                print(f"{table}: {rows} rows → {path}")
            return 0
        cfg = RecordConfig(
            db=args.db,
            connect=tuple(args.connect or (DEFAULT_ENDPOINT,)),
            topics=tuple(args.topic or ("",)),
            synchronous=args.synchronous,
            progress_s=args.progress,
            count=args.count,
            curve_server_key=args.curve_server_key,
            curve_client_key=args.curve_client_key,
        )
        run_stage(lambda: Recorder(cfg), duration_s=args.seconds)
    except RecordError as e:
        print(f"edge-agent: record: {e}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:  # a write failed (disk full, file removed): what was committed stays
        print(f"edge-agent: record: {args.db}: database error: {e}", file=sys.stderr)
        return 1
    return 0


def _metrics_arguments(p: argparse.ArgumentParser) -> None:
    _publish_endpoints(p)
    p.add_argument("--port", type=int, required=True, help="HTTP port of /metrics (0: any free port, logged)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default loopback only; no authentication)"
    )
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until stopped)")
    _log_level_option(p, "INFO")
    _curve_options(p)


@verb("metrics", "Prometheus exporter for a running agent (http://HOST:PORT/metrics)", _metrics_arguments)
def cmd_metrics(args: argparse.Namespace) -> int:
    from edge_agent.clients.prometheus import MetricsConfig, MetricsExporter
    from edge_agent.clients.record import DEFAULT_ENDPOINT
    from edge_agent.config import from_mapping
    from edge_agent.core.stage import run_stage

    _log_to_stderr(args.log_level, "metrics")
    cfg = from_mapping(MetricsConfig, {"port": args.port, "host": args.host}, "command line")
    exporter = MetricsExporter(
        cfg,
        args.connect or [DEFAULT_ENDPOINT],
        curve_server_key=args.curve_server_key,
        curve_client_key=args.curve_client_key,
    )
    try:
        run_stage(lambda: exporter, duration_s=args.seconds)
    except OSError as e:  # the port is taken or the address is not this host's
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    return 0


def _web_arguments(p: argparse.ArgumentParser) -> None:
    _publish_endpoints(p)
    p.add_argument(
        "--port", type=int, help="HTTP port of the page (web.port; default 8080; 0: any free port)"
    )
    p.add_argument("--seconds", type=SECONDS, help="stop after this many seconds (default: until stopped)")
    _agent_options(p)  # its `web` and `alarms` sections
    _log_level_option(p, "INFO")
    _curve_options(p)


@verb(
    "web", "the ward page: every bed in a browser, with the alarms (http://127.0.0.1:8080/)", _web_arguments
)
def cmd_web(args: argparse.Namespace) -> int:
    from edge_agent.clients.record import DEFAULT_ENDPOINT, RecordError
    from edge_agent.clients.ward import WardServer
    from edge_agent.core.stage import run_stage

    _log_to_stderr(args.log_level, "web")
    cfg = _agent_config(args)
    web = dataclasses.replace(cfg.web, port=args.port if args.port is not None else cfg.web.port or 8080)
    server = WardServer(
        web,
        args.connect or [DEFAULT_ENDPOINT],
        cfg.alarms,
        curve_server_key=args.curve_server_key,
        curve_client_key=args.curve_client_key,
    )
    try:
        run_stage(lambda: server, duration_s=args.seconds)
    except RecordError as e:  # web.db names no recording: the user's to fix
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the port is taken or the address is not this host's
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    return 0


def _soak_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=SECONDS, help="run length (default 600)")
    p.add_argument("--streams", type=COUNT, help="simulated streams (default 3)")
    p.add_argument("--workers", type=COUNT, help="local workers (default 2)")
    p.add_argument(
        "--kill-worker-every-s", type=SECONDS_OR_0, help="s between worker kills (default 45; 0: none)"
    )
    p.add_argument(
        "--outage-every-s", type=SECONDS_OR_0, help="s between a source's signal losses (default 60; 0: none)"
    )
    p.add_argument("--outage-s", type=SECONDS_OR_0, help="length of each signal loss, s (default 5)")
    p.add_argument("--warmup-s", type=SECONDS_OR_0, help="s before the memory baseline (default 60)")
    _set_option(p, "an agent key")
    p.add_argument("--out", default="runs/soak", help="folder for report.md, soak.json and soak.png")
    _log_level_option(p, "WARNING")


@verb(
    "soak",
    "run the agent for minutes or hours under injected faults; check memory, leaks and accounting",
    _soak_arguments,
)
def cmd_soak(args: argparse.Namespace) -> int:
    from edge_agent.config import from_mapping
    from edge_agent.tools.soak import SoakConfig, plot_soak, report_markdown, run_soak

    _log_to_stderr(args.log_level, "soak")
    # Options left None keep SoakConfig's defaults (the ones their help names).
    keys = ("seconds", "streams", "workers", "kill_worker_every_s", "outage_every_s", "outage_s", "warmup_s")
    cfg = from_mapping(SoakConfig, {k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    result = run_soak(cfg, args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report_markdown(result)
    (out / "report.md").write_text(text)
    plot = plot_soak(result, out)
    print(text)
    print(f"wrote {out / 'report.md'}, {out / 'soak.json'} and {plot}")
    return 0 if result["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edge-agent",
        description="Streaming LVEF posterior monitor (MCSDR). Start with `edge-agent demo`; "
        "`edge-agent VERB --help` for one verb's options. Exit status: 0 done, 1 a check failed or "
        "the agent stopped on a fault, 2 a usage or configuration mistake (one line on stderr says "
        "which and how to fix it).",
    )
    p.add_argument("--version", action="version", version=f"edge-agent {package_version('edge-agent')}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for v in VERBS:
        verb_parser = sub.add_parser(v.name, help=v.summary, formatter_class=_HelpFormatter)
        v.add_arguments(verb_parser)
        verb_parser.set_defaults(func=v.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"edge-agent: configuration error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a missing model, sidecar or input: the message names it
        print(
            f"edge-agent {args.verb}: {e.filename + ': no such file' if e.filename else e}", file=sys.stderr
        )
        return 2
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        extra = "bench" if args.verb == "bench" and extra == "train" else extra
        print(
            f"edge-agent {args.verb}: needs {e.name}, which the runtime install leaves out: "
            f"pip install 'edge-agent[{extra}]' (in a checkout: pip install -e '.[{extra}]')",
            file=sys.stderr,
        )
        return 2
    except Exception as e:
        from edge_agent.inference.backends import BackendError
        from edge_agent.live.agent import AgentError
        from edge_agent.live.sources import SourceError

        if isinstance(e, SourceError | BackendError):  # the message names the file or key and the fix
            print(f"edge-agent: {e}", file=sys.stderr)
            return 2
        if not isinstance(e, AgentError):
            raise
        print(f"edge-agent: the agent stopped: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
