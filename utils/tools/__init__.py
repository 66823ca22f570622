"""Operations tools: sweeps, SLURM, the environment doctor, dataset preparation, hub export."""
