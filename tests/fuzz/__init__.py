"""Generated-architecture fuzzing: random Gluon nets (``netgen``) and a per-net process runner."""
