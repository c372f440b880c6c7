"""`python -m serving.client`: see serving/client/cli.py."""
from serving.client.cli import main

main()
