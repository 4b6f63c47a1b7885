"""``python -m xenpci``: the same command line as the ``xenpci`` script."""

from xenpci.cli.main import app

if __name__ == "__main__":
    app()
