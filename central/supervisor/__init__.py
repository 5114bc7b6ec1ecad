"""A small process supervisor: what `sdserve up` runs its four processes with.

* :mod:`central.supervisor.specs`: what to run (:class:`~central.supervisor.specs.ChildSpec`)
  and the restart rules (:class:`~central.supervisor.specs.RestartPolicy`, ``EX_CONFIG``).
* :mod:`central.supervisor.output`: the children's output, re-printed line by line with
  a name prefix.
* :mod:`central.supervisor.runner`: :class:`~central.supervisor.runner.Supervisor`, which
  starts, watches, restarts and stops the children.

It starts child processes (name, argv, env), prints every line they write prefixed with
their name in a fixed-width, optionally coloured column (``text-encoder | ...``), waits
for each child's ``/readyz`` to answer 200, restarts a child that dies unexpectedly, and
stops everything on Ctrl-C, SIGTERM or SIGHUP. Plain asyncio, POSIX only, no dependency
beyond httpx (already one of the project's).

Behaviour, in the order it matters:

* **Output.** A child's stdout and stderr are merged into one pipe (so their relative
  order is kept) and re-printed line by line on the supervisor's output, flushed per
  line, so it works when that output is a file or a pipe. Colour is used only when the
  output is a TTY, ``NO_COLOR`` is unset and ``TERM`` is not ``dumb``; ``color=False``
  (``--no-color``) turns it off. A carriage-return progress bar is shown as its last
  state. ``PYTHONUNBUFFERED=1`` is added to the children's environment (unless set) so
  Python children do not hold their logs back in a pipe buffer.
* **Readiness.** A child with a ``ready_url`` is polled (GET, no proxy) after every
  (re)start until it answers 200; :meth:`Supervisor.wait_ready` waits for all of them
  with a deadline and, when it passes, raises :class:`NotReadyError` naming each part
  that is not ready and what it last answered (503 body, connection refused, or how it
  last exited). A child without a ``ready_url`` counts as ready once started.
* **Restarts.** A child that exits while the supervisor is not stopping is restarted
  after a back-off delay: 1 s, doubling up to 30 s. A child that ran for at least
  ``healthy_after_s`` (60 s) before dying starts again from 1 s. Each exit is logged
  with how the child ended (exit code, or the signal that killed it) and how long it ran.
  A child that keeps crashing during start-up (a model that fails to load, a stage that
  cannot be reached) keeps being retried with back-off; the gateway reports the missing
  stage meanwhile.
* **Fatal exits (the choice made for configuration errors).** Some exits cannot be
  fixed by restarting. The services report a bad setting with ``SystemExit(message)``
  (exit code 1, within about a second, before the model loads), argparse exits 2, and a
  port that is already taken makes uvicorn exit 1 at once; a generic exit code does not
  tell these apart from a crash. So the rule is: **a child that exits within
  ``early_exit_s`` (2 s) of starting, with the same exit status, ``fatal_early_exits``
  (3) times in a row is fatal** -- a crash that a restart could fix rarely repeats that
  fast and that identically. In addition a child may exit with ``EX_CONFIG`` (78, from
  BSD ``sysexits.h``) to say "configuration error" explicitly, which is fatal at once.
  A fatal exit, or a child whose program cannot be executed at all, stops every child
  and makes :meth:`Supervisor.run` return 1 with a message naming the child, how it
  exited and its last lines of output.
* **Stopping.** Every child runs in its own session (process group), so a Ctrl-C in
  the terminal reaches only the supervisor, which then stops the children itself:
  SIGTERM to each child's process group, up to ``grace_s`` (10 s) to exit, then
  SIGKILL; a second Ctrl-C/SIGTERM kills at once. After a child exits its process group
  is sent SIGKILL as well, so no grandchild survives it (and no port stays taken). A
  child whose spec names others in ``stop_after`` (the job store's redis-server names
  the gateway, which records its jobs there as it stops) keeps running until those have
  exited, then gets its own SIGTERM and grace; a second Ctrl-C kills it at once too.
  :meth:`Supervisor.run` returns 0 after a requested stop.
"""
