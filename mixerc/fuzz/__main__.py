"""``python -m mixerc.fuzz``: the same as ``mixerc fuzz``."""

from ..cli import main

if __name__ == "__main__":
    main(["fuzz", *__import__("sys").argv[1:]])
