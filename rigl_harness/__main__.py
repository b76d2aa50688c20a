"""python -m rigl_harness COMMAND, which `python rigl.py COMMAND` hands over to: the command line."""

from rigl_harness.cli import main

main()
