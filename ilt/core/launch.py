"""The command line that starts the recipe's multi-process steps: ``ilt`` or ``accelerate launch``.

``egs/TEMPLATE/ilt.sh`` runs its rounds and decoding steps through the command
built here (``python -m ilt.core.launch ...`` prints it as shell assignments).
The distributed type is never chosen here: it is the Accelerate config file's
(``--accelerate-config``), or, for a bare ``--ngpu N``, that of the shipped
DDP config ``conf/accelerate/ddp_8gpu.yaml`` with ``--num_processes N``. The
multi-node options given are passed to ``accelerate launch`` as they are; none
of the config's values is overridden: a ``--ngpu`` that disagrees with the
config's ``num_processes`` is an error, not an override.

A config with ``use_cpu: true`` starts the launcher under
``env ACCELERATE_USE_CPU=true``. Accelerate itself honours ``use_cpu`` only in its single-process
launcher (its ``MULTI_CPU`` type needs an MPI host file for more than one
process); under its torchrun launcher (``MULTI_GPU``, ``FSDP``) the variable
makes :func:`ilt.core.runtime.process_state` take the CPU and gloo even where
CUDA is present.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ilt.errors import IltInputError

#: the config a bare ``--ngpu N`` launches with (DDP; its num_processes replaced by N)
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "accelerate" / "ddp_8gpu.yaml"


@dataclass
class Launch:
    """How the recipe starts a multi-process step: ``command + [ilt arguments]``."""

    command: list[str]
    machines: int = 1


def _int(name: str, value: str | int | None, low: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise IltInputError(f"{name} {value}: not a whole number") from None
    if number < low:
        raise IltInputError(f"{name} {value}: at least {low}")
    return number


def read_config(path: str | Path):
    """The Accelerate config file, read by Accelerate's own loader (an unknown key is an error)."""
    from accelerate.commands.config.config_args import load_config_from_file

    if not Path(path).is_file():
        raise IltInputError(f"--accelerate-config {path}: no such file (see conf/accelerate/)")
    try:
        return load_config_from_file(str(path))
    except Exception as exc:  # yaml errors, unknown keys, unknown distributed types
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IltInputError(f"--accelerate-config {path}: Accelerate cannot read it: {detail}") from None


def launch_command(accelerate_config: str | Path | None = None, ngpu: str | int | None = None,
                   num_machines: str | int | None = None, machine_rank: str | int | None = None,
                   main_process_ip: str | None = None, main_process_port: str | int | None = None,
                   default_config: str | Path = DEFAULT_CONFIG) -> Launch:
    """The launcher of the recipe's multi-process steps.

    :param accelerate_config: an Accelerate config file; it decides the
        distributed type, the processes and the machines.
    :param ngpu: processes per machine. Without a config: more than 1 launches
        ``default_config`` (DDP) with ``--num_processes ngpu * machines``; with
        one: it must agree with the config's ``num_processes`` (or fill it in
        when the config has none).
    :param num_machines, machine_rank, main_process_ip, main_process_port:
        passed to ``accelerate launch`` as given (empty: the config's).
    :raises IltInputError: a missing or unreadable config, a bad number, a
        ``--ngpu`` that disagrees with the config, several machines without the
        main machine's address.
    """
    ngpu_n = _int("--ngpu", ngpu, 1)
    machines_opt = _int("--num-machines", num_machines, 1)
    rank = _int("--machine-rank", machine_rank, 0)
    port = _int("--main-process-port", main_process_port, 1)
    config_path = accelerate_config or None
    if config_path is None and (ngpu_n or 1) == 1 and (machines_opt or 1) == 1:
        return Launch(["ilt"])
    config = read_config(config_path or default_config)
    machines = machines_opt or config.num_machines or 1
    if rank is not None and rank >= machines:
        raise IltInputError(f"--machine-rank {rank}: the machines are numbered 0..{machines - 1}")
    if machines > 1 and not (main_process_ip or config.main_process_ip):
        raise IltInputError(f"{machines} machines need --main-process-ip ADDRESS (machine 0's), given on every machine")
    args = ["accelerate", "launch", "--config_file", str(config_path or default_config)]
    if config_path is None:
        args += ["--num_processes", str((ngpu_n or 1) * machines)]
    elif ngpu_n is not None and (config.num_processes or 0) > 0:
        if config.num_processes != ngpu_n * machines:
            raise IltInputError(
                f"--ngpu {ngpu_n} ({ngpu_n * machines} processes on {machines} machine(s)) disagrees with "
                f"num_processes {config.num_processes} of --accelerate-config {config_path}: leave out --ngpu, "
                "or change the config")
    elif ngpu_n is not None:
        args += ["--num_processes", str(ngpu_n * machines)]
    elif (config.num_processes or 0) <= 0:
        raise IltInputError(f"--accelerate-config {config_path} has no num_processes: give --ngpu N")
    for flag, value in (("--num_machines", machines_opt), ("--machine_rank", rank),
                        ("--main_process_ip", main_process_ip or None), ("--main_process_port", port)):
        if value is not None:
            args += [flag, str(value)]
    env = ["env", "ACCELERATE_USE_CPU=true"] if getattr(config, "use_cpu", False) else []
    return Launch(env + args + ["-m", "ilt.cli.main"], machines=machines)


def main(argv: list[str] | None = None) -> int:
    """Print the launcher as shell assignments: ``ilt_run=(...)`` and ``ilt_machines=N``."""
    parser = argparse.ArgumentParser(prog="python -m ilt.core.launch", description=__doc__.splitlines()[0])
    for name in ("accelerate-config", "ngpu", "num-machines", "machine-rank", "main-process-ip", "main-process-port"):
        parser.add_argument(f"--{name}", default="")
    ns = parser.parse_args(argv)
    try:
        launch = launch_command(ns.accelerate_config, ns.ngpu, ns.num_machines, ns.machine_rank, ns.main_process_ip,
                                ns.main_process_port)
    except IltInputError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"ilt_run=({shlex.join(launch.command)})")
    print(f"ilt_machines={launch.machines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
