"""What every stage uses: ranks and collectives, atomic files and locks, checkpoints, run folders, signals,
precision, and the training skeleton with its logger. Nothing here knows a model, a loss or a dataset."""
