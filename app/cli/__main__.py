"""`python -m app.cli` is `makima` (what tests and a checkout without the script use)."""

from app.cli import main

main()
