"""The Python side of workloads: what runs in the guest is in the top-level ``workloads/`` folder.

Each workload module parses its guest program's console output and knows how to check what it
draws (``synthetic``: heartbeats and numbered frames of the lab's synthetic GPU workload).
"""
