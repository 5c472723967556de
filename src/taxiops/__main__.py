"""`python -m taxiops`: the same as the `taxiops` command."""

from taxiops.app.cli import main

if __name__ == "__main__":
    main()
