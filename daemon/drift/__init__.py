"""The drift check: Evidently signals and the verdict (``signals``), checks over logged
predictions with reports and history (``check``), webhook alerts (``alerts``)."""
