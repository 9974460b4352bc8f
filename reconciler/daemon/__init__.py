"""The reconcile daemon: follows a git branch, converges on every commit, heals drift, runs HA."""
