"""``python3 -m on_hpc cycle|early|status|wait|sweep`` (JSON in, JSON out), ``python3 -m on_hpc
serve`` (those, one JSON line each, see ``serve.py``) and ``python3 -m on_hpc run SPEC``."""
import importlib
import json
import sys

# Each verb imports only its own module: every command is a fresh interpreter (a cycle, each
# wait of the watch daemon, a sweep), and importing all of them was most of its start.
VERBS = {"cycle": ("headnode", "cycle"), "early": ("early", "early"), "status": ("headnode", "status"),
         "wait": ("headnode", "wait"), "sweep": ("sweep", "sweep")}


def dispatch(verb, request):
    module, function = VERBS[verb]
    return getattr(importlib.import_module("." + module, __package__), function)(request)


def main(argv):
    if len(argv) == 2 and argv[0] == "run":
        importlib.import_module(".runner", __package__).main(argv[1])
        return 0
    if argv == ["serve"]:
        return importlib.import_module(".serve", __package__).serve(dispatch)
    if len(argv) != 1 or argv[0] not in VERBS:
        sys.stderr.write("usage: python3 -m on_hpc cycle|early|status|wait|sweep < request.json, "
                         "serve < request lines, or run SPEC\n")
        return 2
    answer = dispatch(argv[0], json.load(sys.stdin))
    sys.stdout.write(json.dumps(answer))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
