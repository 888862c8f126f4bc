"""Sub-commands of the `fastdeit` command line. Each module defines `add_parser(subparsers)`, which
registers its sub-command with `set_defaults(func=run)`."""

COMMANDS = ("demo", "bench", "predict", "embed", "export")
