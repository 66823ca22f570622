"""The training engine: run loop, checkpoints, run folders, logging, distributed, devices and memory."""
