#!/bin/bash
# dropbox-runner: class=gpu expected_time=2h
# Runs a GPU container the way hpc_batch's templates do.  The job's folder is bound at
# /mnt: inputs are in /mnt/input, outputs are expected in /mnt/output.  Needs
# hpc_env.containers (where the .sif files are) and a job arg `container`.
set -uo pipefail
runtime=$(command -v apptainer || command -v singularity) || {
    echo "neither apptainer nor singularity is installed on $(hostname)" >&2; exit 127; }
"$runtime" run --nv \
    --bind '/scratch/ws/job 1':/mnt \
    /sif/my_container.sif \
    --level=6 /mnt/input/foo.mp3 /mnt/output/foo.txt /mnt/output/foo.json
