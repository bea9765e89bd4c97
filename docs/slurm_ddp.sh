#!/usr/bin/env bash
# Example SLURM batch script: DDP training of the segmenter on 2 nodes x 4 GPUs.
# Submit with:  sbatch docs/slurm_ddp.sh
# Each node runs one train.py, which spawns --nproc workers (one per GPU); ranks are
# NODE_RANK * nproc + local_rank, and every node meets node 0 at MASTER_ADDR:MASTER_PORT.
#SBATCH --job-name=steel-seg
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=29500
export NNODES=$SLURM_NNODES
CONFIG=configs/seg/unet_resnet18_bcedice.yml
# Compute nodes without internet: point at a local copy of the pretrained encoder.
OPTS=(model.encoder_weights=null paths.encoder_weights=/shared/weights/resnet18.pth data.num_workers=4)

# --resume lets a re-queued (pre-empted) job continue from its last finished epoch.
RESUME=()
[ -f work/seg/unet_resnet18_bcedice/fold0/checkpoints/last.pth ] && RESUME=(--resume)

srun bash -c 'NODE_RANK=$SLURM_NODEID .venv/bin/python train.py --config '"$CONFIG"' \
  --engine ddp --nproc 4 --fold 0 '"${RESUME[*]}"' --opts '"${OPTS[*]}"
