"""The cluster side of dropbox-runner.

Everything here runs on the cluster's head node or inside a batch allocation, where the
only dependable interpreter is an old system ``python3``: standard library only, Python
3.8 syntax.  The submitter deploys this folder itself (see ``dropbox_runner.deploy``) and
talks to it with ``python3 -m on_hpc <verb>``, one JSON request on stdin and one JSON
answer on stdout, so a whole cycle costs one remote command.
"""
