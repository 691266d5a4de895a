"""dropbox-runner: runs jobs dropped into a folder on a batch-scheduled HPC cluster.

Tools drop .job files into the dropbox and wait for .job.finished; cron (`once`) or the
daemon (`watch`) moves them to the cluster and brings the results back.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .logsetup import configure as configure_logging
from .on_hpc.protocol import JobState
from .transport import RemoteCommandFailed, TransportError, open_transport

log = logging.getLogger("dropbox_runner")

DEFAULT_CONFIG = Path("/etc/dropbox-runner/config.yaml")
CONFIG_ENV = "DROPBOX_RUNNER_CONFIG"

# Exit codes, one meaning each, so cron, systemd and scripts can tell the cases apart.
EXIT_OK = 0
EXIT_CLUSTER_DOWN = 1      # the cluster could not be reached; jobs wait for the next cycle
EXIT_USAGE = 2             # a config error, a wrong argument, a missing or unreadable file
EXIT_HOST_KEY = 3          # trust-host recorded no key
EXIT_REMOTE_FAILED = 4     # reached the cluster, the command there failed (its stderr is shown)
EXIT_NOT_DONE = 5          # a job ended in error, a named job does not exist, a check failed
EXIT_TIMEOUT = 124         # submit --wait --timeout passed without a result (as timeout(1))
EXIT_INTERNAL = 70         # a bug: one line here, the traceback with -v (EX_SOFTWARE)

EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_CLUSTER_DOWN}    the cluster could not be reached (jobs wait for the next cycle)
  {EXIT_USAGE}    config error, wrong arguments, or a file that cannot be read
  {EXIT_HOST_KEY}    trust-host recorded no key
  {EXIT_REMOTE_FAILED}    the cluster was reached but the command there failed
  {EXIT_NOT_DONE}    a job's result is an error, a named job does not exist, or a check failed
  {EXIT_INTERNAL}   internal error (a bug: run again with -v for the traceback)
  {EXIT_TIMEOUT}  submit --wait --timeout passed without a result"""


class UsageError(Exception):
    """A wrong argument or an input file that cannot be used: one line, exit 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    configure_logging(options.verbose)
    try:
        return options.handler(options)
    except ConfigError as error:
        print(f"dropbox-runner: config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as error:
        print(f"dropbox-runner: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteCommandFailed as error:
        log.error("the cluster was reached but the command failed, jobs wait for the next cycle: %s", error)
        return EXIT_REMOTE_FAILED
    except TransportError as error:
        log.error("cluster unreachable, jobs wait for the next cycle: %s", error)
        return EXIT_CLUSTER_DOWN
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:             # `dropbox-runner schema | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - the last boundary: one line, not a traceback
        log.debug("internal error", exc_info=True)
        where = f" ({error.filename})" if isinstance(error, OSError) and error.filename else ""
        print(f"dropbox-runner: internal error: {type(error).__name__}: {error}{where} "
              f"(run with -v for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _shared_options(config: bool, suppress: bool) -> argparse.ArgumentParser:
    """Options every verb takes, accepted before or after the verb: on the verb's parser
    their default is SUPPRESS, so a value given before the verb is not overwritten."""
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    parent.add_argument("-v", "--verbose", action="store_true", default=default or False,
                        help="log debug detail (and idle cycles), with tracebacks")
    if config:
        parent.add_argument("-c", "--config", type=Path, metavar="FILE", default=default,
                            help=f"the config file (YAML, or hpc_batch's INI); default ${CONFIG_ENV}, "
                                 f"else {DEFAULT_CONFIG}")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropbox-runner", description=__doc__, parents=[_shared_options(config=True, suppress=False)],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"dropbox-runner {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", title="commands")
    with_config = [_shared_options(config=True, suppress=True)]
    without_config = [_shared_options(config=False, suppress=True)]

    def verb(name: str, summary: str, description: str, handler, config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=textwrap.fill(description, 88), epilog=EXIT_CODES,
                                  parents=with_config if config else without_config,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=handler)
        return sub

    verb("once", "run one cycle (what cron runs)",
         "One cycle: take new jobs, stage them, keep runners queued, collect results. Takes the "
         "dropbox's lock; when another cycle holds it, exits 0 at once. A cycle that changed "
         "nothing logs only with -v.", command_once)
    verb("watch", "run as a daemon: a cycle when jobs arrive or finish",
         "The daemon (systemd): a cycle as soon as a job is dropped or finishes on the cluster, and "
         "every `tick`. SIGTERM finishes the step in hand and exits; SIGHUP reloads the config.",
         command_watch)
    status = verb("status", "jobs by state, the runners and their pending reasons",
                  "Jobs by state in the dropbox and on the cluster, and each runner with its scheduler "
                  "id, state, time left and (when pending) squeue's reason. Never deploys anything; "
                  "exits 1 when the cluster cannot be reached.", command_status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    listing = verb("list", "jobs with age, runner and attempts",
                   "Jobs from the history store, newest first, with age, runner and attempts.", command_list)
    listing.add_argument("--state", action="append", help="only jobs in this state (repeatable): " + ", ".join(
        (JobState.WAITING, *JobState.IN_FLIGHT, JobState.FINISHED)))
    listing.add_argument("--name", help="only names matching this glob pattern")
    listing.add_argument("--limit", type=int, default=200, help="at most this many rows (default 200)")
    listing.add_argument("--rebuild", action="store_true", help="rebuild the history from the dropbox first")
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    cancel = verb("cancel", "stop jobs, waiting or running; they get an error result",
                  "Stop jobs: each gets the error result `cancelled`. Exits 5 when a name is no job.",
                  command_cancel)
    cancel.add_argument("names", nargs="+", metavar="NAME", help="x, x.job, or a path to either")

    again = verb("resubmit", "put failed jobs back in as new",
                 "Put finished jobs back in as new; the next result lists the earlier ones under "
                 "job.earlier_runs. Exits 5 when a name has no result.", command_resubmit)
    again.add_argument("names", nargs="+", metavar="NAME", help="x, x.job, or a path to either")
    again.add_argument("--force", action="store_true", help="resubmit jobs that finished ok too")

    cache = verb("cache", "the result cache: stats or clear", "Show the result cache's size, or empty it.",
                 command_cache)
    cache.add_argument("action", choices=["stats", "clear"], help="stats: print sizes as JSON; clear: empty it")

    check = verb("check", "check the set-up before the first cycle, with the fix for each problem",
                 "Check everything a cycle needs: the config, the dropbox and state folders, the templates, "
                 "the SSH key, host key and login, the cluster's Python, workspace and rsync, the "
                 "scheduler and each class's partition and GPUs. One line per check, with the fix; "
                 "exits 0 only when all pass (5 otherwise).", command_check)
    check.add_argument("--json", action="store_true", help="machine-readable output")

    submit = verb("submit", "drop a job file into a dropbox (as a tool does)",
                  "Drop a job as a tool would (atomically); print the .job path, or with --wait the "
                  "result (exit 0 for status ok, 5 for error).", command_submit, config=False)
    submit.add_argument("dropbox", type=Path, help="the dropbox folder")
    submit.add_argument("job", type=Path, help="a .job YAML description, or - for stdin")
    submit.add_argument("--name", help="the job's name in the dropbox (NAME.job; default: a random one)")
    submit.add_argument("--wait", action="store_true", help="wait for the result, print it and remove it")
    submit.add_argument("--timeout", type=float, metavar="SECONDS",
                        help=f"with --wait: give up after this long (exit {EXIT_TIMEOUT}; the job stays in)")
    submit.add_argument("--period", type=float, default=2.0, help="seconds between checks (--wait; default 2)")

    schema = verb("schema", "print the JSON Schema of the .job file",
                  "Print the JSON Schema of a .job file (or of a result's job: block), generated from "
                  "the same definitions the submitter validates with.", command_schema, config=False)
    schema.add_argument("--result", action="store_true", help="the schema of a result file's job: block")

    trust = verb("trust-host", "show the cluster's SSH host key and record it in known_hosts",
                 "Show the cluster's host key fingerprint and record it in the configured known_hosts "
                 "(compare it with the one the cluster's administrators publish).", command_trust_host)
    trust.add_argument("--yes", action="store_true", help="record without asking")
    trust.add_argument("--replace", action="store_true",
                       help="replace a different key already recorded for the host (after a real key change)")

    verb("deploy", "install on_hpc into the cluster's scripts folder",
         "Install this version of on_hpc on the cluster (cycles do it by themselves when needed).",
         command_deploy)

    demo = verb("demo", "run a dozen example jobs on the local backend",
                "Make a temporary dropbox and local \"cluster\", drop example jobs, run cycles until "
                "each has a result, and print them.", command_demo, config=False)
    demo.add_argument("--dir", type=Path, help="where to put the demo (default: a new temp folder)")
    demo.add_argument("--jobs", type=int, default=12, help="how many jobs (default 12)")
    demo.add_argument("--scheduler", choices=["local", "slurm"], default="local",
                      help="slurm: runners are batch jobs of the Slurm reached from here")
    return parser


def config_path(options: argparse.Namespace) -> Path:
    """--config, else $DROPBOX_RUNNER_CONFIG, else /etc/dropbox-runner/config.yaml."""
    given = getattr(options, "config", None) or os.environ.get(CONFIG_ENV)
    if given:
        return Path(given)
    if not DEFAULT_CONFIG.exists():
        raise ConfigError(f"{DEFAULT_CONFIG}: no such file (give --config FILE or set {CONFIG_ENV})")
    return DEFAULT_CONFIG


def _config(options: argparse.Namespace):
    return load_config(config_path(options))


def command_once(options: argparse.Namespace) -> int:
    from .submitter import run_burst
    config = _config(options)
    transport = open_transport(config)
    try:
        run_burst(config, transport)
    finally:
        transport.close()
    return EXIT_OK


def command_watch(options: argparse.Namespace) -> int:
    from .daemon import Daemon
    return Daemon(config_path(options)).run()


def command_status(options: argparse.Namespace) -> int:
    from .status import format_status, gather_status
    config = _config(options)
    transport = open_transport(config)
    try:
        status = gather_status(config, transport)
    finally:
        transport.close()
    print(json.dumps(status, indent=1) if options.json else format_status(status))
    if "cluster_error" in status:
        return EXIT_CLUSTER_DOWN
    return EXIT_REMOTE_FAILED if "cluster_failed" in status else EXIT_OK


def command_list(options: argparse.Namespace) -> int:
    from .history import History
    from .verbs import format_jobs, list_jobs
    config = _config(options)
    history = History(config.state_dir / "history.sqlite")
    if options.rebuild:
        history.rebuild(config.dropbox)
    rows = list_jobs(config, history, options.state, options.name, options.limit)
    print(json.dumps(rows, indent=1) if options.json else format_jobs(rows))
    return EXIT_OK


def command_cancel(options: argparse.Namespace) -> int:
    from .verbs import request_cancel
    config = _config(options)
    said = request_cancel(config, options.names)
    for line, _known in said:
        print(line)
    _cycle_if_free(config)
    return EXIT_OK if all(known for _line, known in said) else EXIT_NOT_DONE


def command_resubmit(options: argparse.Namespace) -> int:
    from .history import History
    from .verbs import resubmit
    config = _config(options)
    said = resubmit(config, History(config.state_dir / "history.sqlite"), options.names, options.force)
    for line, _known in said:
        print(line)
    _cycle_if_free(config)
    return EXIT_OK if all(known for _line, known in said) else EXIT_NOT_DONE


def command_cache(options: argparse.Namespace) -> int:
    from .cache import ResultCache
    from .history import History
    config = _config(options)
    cache = ResultCache(Path(config.cache_dir), config.cache_max_bytes, History(config.state_dir / "history.sqlite"))
    if options.action == "clear":
        print(f"removed {cache.clear()} cache entries")
    else:
        print(json.dumps(cache.stats(), indent=1))
    return EXIT_OK


def command_check(options: argparse.Namespace) -> int:
    from .check import format_checks, run_checks
    results = run_checks(config_path(options))
    if options.json:
        print(json.dumps([vars(result) for result in results], indent=1))
    else:
        print(format_checks(results))
    return EXIT_OK if all(result.ok for result in results) else EXIT_NOT_DONE


def _cycle_if_free(config) -> None:
    """Act now unless cron or the daemon is mid-cycle (then its next cycle acts)."""
    from .submitter import run_once
    transport = open_transport(config)
    try:
        run_once(config, transport)
    finally:
        transport.close()


def command_submit(options: argparse.Namespace) -> int:
    import yaml

    from .client import submit, wait
    from .jobs import JobInvalid, load_yaml, parse_job
    if options.timeout is not None and not options.wait:
        raise UsageError("--timeout goes with --wait")
    if not options.dropbox.is_dir():
        raise UsageError(f"{options.dropbox}: the dropbox is not a folder (or does not exist)")
    if str(options.job) == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        try:
            text, source = options.job.read_text(encoding="utf-8"), str(options.job)
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"{options.job}: cannot read: {getattr(error, 'strerror', None) or error}") from None
    try:
        job = load_yaml(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{source}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(job, dict):
        raise UsageError(f"{source}: a job description is a YAML mapping (script, args, input_map, output_map)")
    try:
        parse_job(job)
    except JobInvalid as error:
        raise UsageError(f"{source}: invalid job: {error}") from None
    try:
        path = submit(options.dropbox, job, name=options.name)
    except (ValueError, FileExistsError) as error:
        raise UsageError(str(error)) from None
    if not options.wait:
        print(path)
        return EXIT_OK

    def progress(state: str, elapsed: float) -> None:
        if sys.stderr.isatty():
            print(f"\r{path.name}: {state}, {elapsed:.0f}s   ", end="", file=sys.stderr, flush=True)

    try:
        result = wait(path, options.period, progress, timeout=options.timeout)
    except TimeoutError:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        print(f"dropbox-runner: no result for {path} after {options.timeout:g}s; the job stays in the dropbox",
              file=sys.stderr)
        return EXIT_TIMEOUT
    if sys.stderr.isatty():
        print(file=sys.stderr)
    from .jobs import dump_yaml
    print(dump_yaml(result), end="")
    return EXIT_OK if result.get("job", {}).get("status") == "ok" else EXIT_NOT_DONE


def command_schema(options: argparse.Namespace) -> int:
    from .schema import job_schema, result_schema
    print(json.dumps(result_schema() if options.result else job_schema(), indent=2))
    return EXIT_OK


def command_trust_host(options: argparse.Namespace) -> int:
    from .transport.hostkeys import fingerprint, record_key, recorded_keys, same_key
    from .transport.ssh import SshTransport
    config = _config(options)
    if config.backend != "ssh":
        raise UsageError("trust-host needs backend: ssh")
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
    config = _config(options)
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
