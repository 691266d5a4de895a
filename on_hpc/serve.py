"""``python3 -m on_hpc serve``: one process answers every request of a submitter's burst.

A burst runs a cycle per slice (six or seven for 1000 jobs) and gathers between them, and
each was a fresh interpreter: Python's start and the imports, some 20 ms of the head
node's CPU a command here and far more where this code lies on a shared filesystem. The
submitter keeps this process open while its burst lasts and sends each request as one
line of JSON, ``{"verb": ..., "request": ...}``; each answer is one line.

Answers go to a private copy of stdout, and file descriptor 1 itself is pointed at
stderr: nothing else (a stray print, a child that inherits it) can break a line.  A
failure ends the process, as it ended the one-shot command: the traceback goes to
stderr, the submitter reports it and starts a fresh process for its next call, so no
state outlives a failure.  End of input ends it cleanly.

What a request leaves until its answer is sent (``afterwards``: a cycle's moving of
collected jobs to the trash) runs once the answer is written, before the next request.

Between requests it reaps its children that have ended (the embedded scheduler's
runners, started by cycles): a one-shot command left that to init by exiting.

Before each request it checks that its folder (its working directory) still holds the
deploy's stamp, as the shell line of a one-shot command does: where the deploy was removed
meanwhile, the runners a cycle submits would not start, so it exits with DEPLOY_NEEDED
instead, and the submitter deploys again and asks a fresh process.
"""
import json
import os
import sys

from . import afterwards
from .protocol import DEPLOY_NEEDED, STAMP_FILE


def serve(dispatch, requests=None, answers=None):
    """Answer each request line with ``dispatch(verb, request)``'s answer, until end of input."""
    if answers is None:
        answers = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    requests = requests if requests is not None else sys.stdin
    with afterwards.until_answered():
        for line in requests:
            if not line.strip():
                continue
            if not os.path.exists(STAMP_FILE):
                return DEPLOY_NEEDED
            message = json.loads(line)
            answer = dispatch(message["verb"], message["request"])
            answers.write(json.dumps(answer))
            answers.write("\n")
            answers.flush()
            afterwards.run_deferred()
            reap_children()
    return 0


def reap_children():
    """Nothing of a request is in flight between requests, so every ended child is ours to reap."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
