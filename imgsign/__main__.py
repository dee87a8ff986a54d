"""``python -m imgsign`` runs the command line."""

from imgsign.cli import main

main()
