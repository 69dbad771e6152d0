"""mdevtest: live-migration testing of VFIO mediated devices."""
