"""The harness around rigl.py and train.py: command line, data, run directories, torchrun, sweeps, reports, benchmarks, export."""
