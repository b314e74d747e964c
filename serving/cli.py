"""`moe`: one command-line entry point for training, evaluation, export, serving and queries.
Each command is a module of serving/commands/."""

import click

from .commands.bench import bench
from .commands.classify import classify
from .commands.eval import eval_
from .commands.export import export_
from .commands.loadtest import loadtest
from .commands.serve import serve
from .commands.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Mixture-of-Experts Transformer on AG News, served by NVIDIA Triton Inference Server."""


for command in (train, eval_, export_, serve, classify, loadtest, bench):
    main.add_command(command)

if __name__ == "__main__":
    main()
