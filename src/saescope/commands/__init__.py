"""One module per `saescope` subcommand; each has `register(subparsers)` that adds its parser."""
