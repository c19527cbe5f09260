"""tokenward's benchmark harness (`make bench`, `make soak`): see bench/run.py."""
