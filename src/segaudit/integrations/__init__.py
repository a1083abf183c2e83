"""The investigation's phase-3 alert inside training loops people already use.

`content_check.ContentMonitor` measures a model on a fixed validation subset under the
audit's input conditions against the analytic prior of the training labels, with no
framework; `lightning.ContentCheck` (`pip install segaudit[lightning]`) runs it at
Lightning's validation ends. Both write one `phase=audit` record at the end, so the run
lands in `segaudit report` and `segaudit scope`.
"""
