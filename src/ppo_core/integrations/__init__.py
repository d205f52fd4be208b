"""ppo_core's kernels inside other RL libraries (each module imports its library)."""
