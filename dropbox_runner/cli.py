"""The ``dropbox-runner`` command."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from . import __version__
from .config import ConfigError, load_config
from .transport import TransportError, open_transport

log = logging.getLogger("dropbox_runner")

EXIT_OK, EXIT_CLUSTER_DOWN, EXIT_USAGE, EXIT_HOST_KEY = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if options.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for library in ("paramiko", "invoke", "fabric"):   # their debug output drowns ours
        logging.getLogger(library).setLevel(logging.WARNING)
    try:
        return options.handler(options)
    except ConfigError as error:
        print(f"dropbox-runner: config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TransportError as error:
        log.error("cluster unreachable, jobs wait for the next cycle: %s", error)
        return EXIT_CLUSTER_DOWN


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropbox-runner", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dropbox-runner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    once = commands.add_parser("once", help="run one cycle (what cron runs)")
    once.add_argument("--config", required=True, type=Path)
    once.set_defaults(handler=command_once)

    watch = commands.add_parser("watch", help="run as a daemon: cycles when jobs arrive or finish")
    watch.add_argument("--config", required=True, type=Path)
    watch.set_defaults(handler=command_watch)

    status = commands.add_parser("status", help="jobs by state and the runners alive")
    status.add_argument("--config", required=True, type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=command_status)

    listing = commands.add_parser("list", help="jobs by state, with age, runner and attempts")
    listing.add_argument("--config", required=True, type=Path)
    listing.add_argument("--state", action="append", help="only jobs in this state (repeatable): "
                         "waiting, submitted, queued, running, finished")
    listing.add_argument("--name", help="only names matching this glob pattern")
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--rebuild", action="store_true", help="rebuild the history from the dropbox first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=command_list)

    cancel = commands.add_parser("cancel", help="stop jobs, waiting or running; they get an error result")
    cancel.add_argument("--config", required=True, type=Path)
    cancel.add_argument("names", nargs="+", metavar="NAME")
    cancel.set_defaults(handler=command_cancel)

    again = commands.add_parser("resubmit", help="put failed jobs back in as new")
    again.add_argument("--config", required=True, type=Path)
    again.add_argument("names", nargs="+", metavar="NAME")
    again.add_argument("--force", action="store_true", help="resubmit jobs that finished ok too")
    again.set_defaults(handler=command_resubmit)

    cache = commands.add_parser("cache", help="the result cache: stats or clear")
    cache.add_argument("action", choices=["stats", "clear"])
    cache.add_argument("--config", required=True, type=Path)
    cache.set_defaults(handler=command_cache)

    submit = commands.add_parser("submit", help="drop a job file into a dropbox (as a tool does)")
    submit.add_argument("dropbox", type=Path)
    submit.add_argument("job", type=Path, help="a .job YAML description, or - for stdin")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument("--period", type=float, default=2.0, help="seconds between checks (--wait)")
    submit.set_defaults(handler=command_submit)

    trust = commands.add_parser("trust-host", help="show the cluster's SSH host key and record it in known_hosts")
    trust.add_argument("--config", required=True, type=Path)
    trust.add_argument("--yes", action="store_true", help="record without asking")
    trust.add_argument("--replace", action="store_true",
                       help="replace a different key already recorded for the host (after a real key change)")
    trust.set_defaults(handler=command_trust_host)

    deploy = commands.add_parser("deploy", help="install on_hpc into the cluster's scripts folder")
    deploy.add_argument("--config", required=True, type=Path)
    deploy.set_defaults(handler=command_deploy)

    demo = commands.add_parser("demo", help="run a dozen example jobs on the local backend")
    demo.add_argument("--dir", type=Path, help="where to put the demo (default: a new temp folder)")
    demo.add_argument("--jobs", type=int, default=12)
    demo.add_argument("--scheduler", choices=["local", "slurm"], default="local",
                      help="slurm: runners are batch jobs of the Slurm reached from here")
    demo.set_defaults(handler=command_demo)
    return parser


def command_once(options: argparse.Namespace) -> int:
    from .submitter import run_once
    config = load_config(options.config)
    transport = open_transport(config)
    try:
        report = run_once(config, transport)
    finally:
        transport.close()
    if report is not None:
        log.info("cycle: %d taken, %d rejected, %d sent, %d ok, %d error, %d held, %d runner(s) submitted, %.2fs",
                 report.taken, report.rejected, report.sent, report.finished_ok, report.finished_error,
                 report.held, report.runners_submitted, report.seconds)
    return EXIT_OK


def command_watch(options: argparse.Namespace) -> int:
    from .daemon import Daemon
    return Daemon(options.config).run()


def command_status(options: argparse.Namespace) -> int:
    from .status import format_status, gather_status
    config = load_config(options.config)
    transport = open_transport(config)
    try:
        status = gather_status(config, transport)
    finally:
        transport.close()
    print(json.dumps(status, indent=1) if options.json else format_status(status))
    return EXIT_OK


def command_list(options: argparse.Namespace) -> int:
    from .history import History
    from .verbs import format_jobs, list_jobs
    config = load_config(options.config)
    history = History(config.state_dir / "history.sqlite")
    if options.rebuild:
        history.rebuild(config.dropbox)
    rows = list_jobs(config, history, options.state, options.name, options.limit)
    print(json.dumps(rows, indent=1) if options.json else format_jobs(rows))
    return EXIT_OK


def command_cancel(options: argparse.Namespace) -> int:
    from .verbs import request_cancel
    config = load_config(options.config)
    for line in request_cancel(config, options.names):
        print(line)
    _cycle_if_free(config)
    return EXIT_OK


def command_resubmit(options: argparse.Namespace) -> int:
    from .history import History
    from .verbs import resubmit
    config = load_config(options.config)
    for line in resubmit(config, History(config.state_dir / "history.sqlite"), options.names, options.force):
        print(line)
    _cycle_if_free(config)
    return EXIT_OK


def command_cache(options: argparse.Namespace) -> int:
    from .cache import ResultCache
    from .history import History
    config = load_config(options.config)
    cache = ResultCache(Path(config.cache_dir), config.cache_max_bytes, History(config.state_dir / "history.sqlite"))
    if options.action == "clear":
        print(f"removed {cache.clear()} cache entries")
    else:
        print(json.dumps(cache.stats(), indent=1))
    return EXIT_OK


def _cycle_if_free(config) -> None:
    """Act now unless cron or the daemon is mid-cycle (then its next cycle acts)."""
    from .submitter import run_once
    transport = open_transport(config)
    try:
        run_once(config, transport)
    finally:
        transport.close()


def command_submit(options: argparse.Namespace) -> int:
    from .client import submit, wait
    text = sys.stdin.read() if str(options.job) == "-" else options.job.read_text(encoding="utf-8")
    job = yaml.safe_load(text)
    if not isinstance(job, dict):
        print("dropbox-runner: a job description is a YAML mapping", file=sys.stderr)
        return EXIT_USAGE
    path = submit(options.dropbox, job)
    if not options.wait:
        print(path)
        return EXIT_OK

    def progress(state: str, elapsed: float) -> None:
        if sys.stderr.isatty():
            print(f"\r{path.name}: {state}, {elapsed:.0f}s   ", end="", file=sys.stderr, flush=True)

    result = wait(path, options.period, progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(yaml.safe_dump(result, sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK if result.get("job", {}).get("status") == "ok" else 1


def command_trust_host(options: argparse.Namespace) -> int:
    from .transport.hostkeys import fingerprint, record_key, recorded_keys, same_key
    from .transport.ssh import SshTransport
    config = load_config(options.config)
    if config.backend != "ssh":
        print("dropbox-runner: trust-host needs backend: ssh", file=sys.stderr)
        return EXIT_USAGE
    transport = SshTransport(config)
    name, key = transport.server_host_key()
    path = transport.known_hosts
    print(f"{name} presents a {key.get_name()} host key, fingerprint {fingerprint(key)}")
    known = recorded_keys(path, name)
    if any(same_key(key, old) for old in known):
        print(f"already trusted in {path}")
        return EXIT_OK
    if known and not options.replace:
        print(f"dropbox-runner: {path} holds a DIFFERENT key for {name} ({fingerprint(known[0])}); "
              "refusing to change it: if the cluster's key really changed, check the new fingerprint "
              "with its administrators and run again with --replace", file=sys.stderr)
        return EXIT_HOST_KEY
    if not options.yes and not _confirm(f"record it in {path}? [y/N] "):
        print("not recorded")
        return EXIT_HOST_KEY
    record_key(path, name, key, replace=bool(known))
    print(f"recorded in {path}")
    return EXIT_OK


def command_deploy(options: argparse.Namespace) -> int:
    from .cluster import ClusterSide
    config = load_config(options.config)
    transport = open_transport(config)
    try:
        cluster = ClusterSide(config, transport)
        cluster.deploy()
    finally:
        transport.close()
    print(cluster.deploy_dir)
    return EXIT_OK


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def command_demo(options: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(options.dir, options.jobs, options.scheduler)


if __name__ == "__main__":
    sys.exit(main())
