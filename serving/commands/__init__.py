"""One module per `moe` command (serving/cli.py gathers them); common.py holds what they share."""
