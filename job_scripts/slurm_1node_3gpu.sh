#!/bin/bash
# mpcgpu on ONE node with THREE GPUs: three MPI tasks (parties 0, 1, 2), one GPU each.
#
#   sbatch job_scripts/slurm_1node_3gpu.sh infer --model shards/lenet --data shards/mnist
#
# All arguments are passed to `python -m mpcgpu.cli`.  Run `mpcgpu share` first (on the
# data/model owner's machine) and put the three shard files where the job can read them.
# With all parties on one node this is a test and benchmark set-up: the three servers
# (and their shards) share one machine, so it is not a deployment with separate trust.
# The channels between the ranks are encrypted with ephemeral keys (one host: no parties
# file needed); for the real deployment see slurm_3nodes_1gpu.sh.
#
# ADAPT the #SBATCH lines (partition, account, time, GPU request) and the marked
# placeholders below; check the script with `bash -n` after editing.
#
#SBATCH --job-name=mpcgpu-1n3g
#SBATCH --nodes=1
#SBATCH --ntasks=3                 # one task per party: SLURM_PROCID = MPI rank = party index
#SBATCH --ntasks-per-node=3
#SBATCH --gpus-per-task=1          # each task sees exactly its own GPU (CUDA_VISIBLE_DEVICES)
#SBATCH --cpus-per-task=4          # ADAPT: cores per party (BLAS threads, HDF5 reads)
#SBATCH --mem=0                    # ADAPT: all memory of the node (or e.g. --mem=96G)
#SBATCH --time=01:00:00            # ADAPT
#SBATCH --output=mpcgpu-%j.out
##SBATCH --partition=gpu           # ADAPT: remove one '#' and name your GPU partition
##SBATCH --account=my_account      # ADAPT: remove one '#' if your site needs an account
#
# Alternative GPU request where --gpus-per-task is not supported: replace the
# --gpus-per-task line by `#SBATCH --gres=gpu:3`.  Every task then sees all three
# GPUs and mpcgpu picks GPU (SLURM_LOCALID mod 3), i.e. party i uses GPU i.

set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: sbatch $0 COMMAND [ARGS...]   (e.g. infer --model shards/lenet --data shards/mnist)" >&2
  exit 2
fi

# ---- software environment (ADAPT: placeholders) -------------------------------------
# module purge
# module load cuda/12.4              # the CUDA your CuPy wheel expects (cupy-cuda12x: CUDA 12)
# module load openmpi/5.0-cuda       # only when using a system MPI (see README.md)
# source "$HOME/venvs/mpcgpu/bin/activate"   # the venv with mpcgpu, mpi4py, cupy-cuda12x
PYTHON=${PYTHON:-python}

# ---- mpcgpu settings ---------------------------------------------------------------
export MPCGPU_DEVICE=cuda            # fail loudly if a task has no GPU, never fall back to CPU
# MPCGPU_CUDA_AWARE: 1 = hand GPU buffers straight to MPI (needs a CUDA-aware MPI: Open MPI
# or MPICH built with CUDA/UCX support); 0 = stage every message through host memory (always
# works, slower).  Unset = auto-detect (MPIX_Query_cuda_support).  The pip `mpich` wheel is
# NOT CUDA-aware: keep 0 with it.  If a CUDA-aware MPI crashes or hangs on one node with
# isolated GPUs (CUDA IPC between GPUs a task cannot see), use `--gres=gpu:3` or set 0.
export MPCGPU_CUDA_AWARE=${MPCGPU_CUDA_AWARE:-0}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export PYTHONUNBUFFERED=1

# ---- launch ----------------------------------------------------------------------
# --mpi: the PMI plugin your MPI speaks (list them with `srun --mpi=list`):
#   pmix  for Open MPI 4/5 and most recent MPICH builds (ADAPT: pmix_v3, pmix_v4, ... on some sites)
#   pmi2  for MPICH / Intel MPI / MVAPICH2 (and the pip mpich wheel)
# --gpu-bind=single:1 pins each task to one GPU when --gres is used instead of --gpus-per-task.
SRUN_MPI=${SRUN_MPI:-pmi2}           # ADAPT
echo "mpcgpu: job ${SLURM_JOB_ID:-?} on $(hostname), 3 parties, command: $*"
srun --ntasks=3 --ntasks-per-node=3 --mpi="$SRUN_MPI" --cpu-bind=cores \
     --kill-on-bad-exit=1 \
     "$PYTHON" -m mpcgpu.cli "$@"
