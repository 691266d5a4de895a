"""``python3 -m on_hpc cycle|early|status|wait|sweep`` (JSON in, JSON out) and ``python3 -m on_hpc run SPEC``."""
import json
import sys

from . import early, headnode, runner, sweep

VERBS = {"cycle": headnode.cycle, "early": early.early, "status": headnode.status, "wait": headnode.wait,
         "sweep": sweep.sweep}


def main(argv):
    if len(argv) == 2 and argv[0] == "run":
        runner.main(argv[1])
        return 0
    if len(argv) != 1 or argv[0] not in VERBS:
        sys.stderr.write("usage: python3 -m on_hpc cycle|early|status|wait|sweep < request.json, or run SPEC\n")
        return 2
    request = json.load(sys.stdin)
    answer = VERBS[argv[0]](request)
    sys.stdout.write(json.dumps(answer))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
