"""The one place the cluster side runs a program: argv lists in, text out, errors that
carry what the program said.

Scheduler connectors build their argv with pure functions and hand them here, so every
call has a timeout, and every failure says which command failed and with what stderr.

``subprocess`` (with ``selectors``, ``threading`` and ``locale``) is imported where a
program is first run, here and in the few other places that start one: every ``on_hpc``
command is a fresh interpreter, and most of them (each wait, a local cycle with nothing to
start) run none; it was some 4 ms of each start.
"""


class CommandUnavailable(Exception):
    """The program could not be run or did not answer in time; ``timed_out`` tells which."""

    def __init__(self, argv, reason, timed_out=False):
        super(CommandUnavailable, self).__init__("%s: %s" % (argv[0], reason))
        self.argv = argv
        self.timed_out = timed_out


class CommandFailed(Exception):
    """The program ran and exited non-zero."""

    def __init__(self, argv, returncode, stdout, stderr):
        super(CommandFailed, self).__init__(
            "%s failed (exit %d): %s" % (argv[0], returncode, (stderr or stdout or "").strip()))
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def run(argv, timeout, env=None, cwd=None):
    """Run ``argv`` and return its stdout; raise CommandUnavailable or CommandFailed."""
    import subprocess
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandUnavailable(argv, "no answer in %ds" % timeout, timed_out=True) from None
    except OSError as error:
        raise CommandUnavailable(argv, str(error)) from error
    if done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stdout, done.stderr)
    return done.stdout
