"""Root conftest: the mdevtest plugin itself is loaded through its pytest11 entry point."""
