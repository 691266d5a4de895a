"""dropbox-runner: jobs dropped into a folder, run in batches on an HPC cluster."""

__version__ = "0.1.0"
