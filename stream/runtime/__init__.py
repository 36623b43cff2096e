"""The stage runtime: the one consume loop, assignment with restores outside the callbacks, and the Checkpoint."""
