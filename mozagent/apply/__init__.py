"""Apply: the executor (the one worker that changes the host, one job at a
time), when it runs (``scheduler``), and the appliers it runs (``puppet``; Heat
script and hook appliers plug in beside it), all through ``process``, which
leaves nothing of a child program behind."""
