"""`python -m serving.server`: see serving/server/cli.py."""
from serving.server.cli import main

main()
