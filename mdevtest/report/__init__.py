"""Reports: the run summary (``summary.json``) and Allure attachments."""
