"""The Lightning door's machinery that is not itself a callback: the task loop the callbacks route the Trainer's
hooks to, the checks at set-up, tasks trained together, sharded parameters, the held-out loop, diverged runs,
atomic checkpoints, run folders, signals, and the one module that reaches past Lightning's public API
(:mod:`~lightning_meta.lightning_private`)."""
