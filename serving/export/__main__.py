"""`python -m serving.export`: see serving/export/cli.py."""
from serving.export.cli import main

main()
