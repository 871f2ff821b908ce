"""What the search workers' forkserver imports first (workers._run_processes), before the training stack, which
takes it ~3 s: SIGINT's default action instead of Python's KeyboardInterrupt, then SIGINT unblocked (the
forkserver starts with it blocked: workers._start_forkserver). A Ctrl-C, which a terminal sends to every
process of the command, from the forkserver's start to the end of its import then ends it without a traceback
under the command's one line, and with it the worker the search had asked it for (ignored, it lived on and
forked that worker after the search had ended). Once imported, multiprocessing.forkserver ignores SIGINT
itself; each worker puts Python's handler back first thing (workers._worker_process). Imported anywhere else,
it would do the same."""

import signal

if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where it was started ignoring SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one that came meanwhile ends it now
