"""QEMU on lab hosts: command-line builder, QMP session, remote machine lifecycle."""
