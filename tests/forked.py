"""`Popen` and `run`, as subprocess's, for a command `[sys.executable, "-m", "normexp.<entry>", ...]` forked from a
server process that has imported normexp's commands once: for the tests whose subject is what a command does
and records, not how its interpreter starts.

A fresh command first spends ~4.5 s of CPU importing torch, Lightning and MLflow, and the tests start dozens of
them on 2 cores: about a third of `make test`'s CPU time went to those imports (docs/performance.md). Here a
command still runs in a process of its own, with its own pid, exit status, stdin/stdout/stderr, cwd,
environment, session and signals, as `python -m` runs it (the module as __main__, then the interpreter's own
exit, atexit handlers included); the processes it starts (joblib workers, a search's forkserver) are fresh
interpreters, as anywhere. What differs: its modules were imported before its environment was set (torch's
threads read OMP_NUM_THREADS then; PYTHONWARNINGS and PYTHONFAULTHANDLER are applied here), and their import-time
warnings went to the server's stderr. The tests about exactly that start fresh interpreters: test_domains (a
command's whole stderr), test_tracking_native's multirun (no library noise), test_imports; test_commands runs
one refusal both ways and expects the same exit and stderr.

The server is this pytest worker's: started at its first command, it ends when the worker does (its socket
closes). It forks each command and reports how it ended.
"""

import faulthandler
import functools
import os
import pickle
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The entry modules the server imports; each command's own module then runs as __main__, as `python -m` runs it.
ENTRIES = ("normexp.train", "normexp.search")
MESSAGE_BYTES = 1 << 20  # a request: the command line, cwd and environment, pickled
SERVER_ENV = dict(os.environ)  # in the server: the environment it started, and imported, with


class Popen(subprocess.Popen):
    """subprocess.Popen for one of ENTRIES, forked from the server. `restore_sigint=True` does what
    `preexec_fn=lambda: signal.signal(SIGINT, SIG_DFL)` does to a fresh interpreter, which then raises
    KeyboardInterrupt on SIGINT even where the test runs in a background job that ignores it."""

    def __init__(self, args, *, restore_sigint: bool = False, **kwargs):
        self.restore_sigint = restore_sigint
        super().__init__(args, **kwargs)

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo, creationflags,
                       shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, restore_signals, gid, gids, uid,
                       umask, start_new_session, *process_group):
        # subprocess.Popen.__init__ has made the pipes; the server's child takes over the child's ends.
        if list(args[:2]) != [sys.executable, "-m"] or args[2] not in ENTRIES:
            raise ValueError(f"forked.Popen runs `{sys.executable} -m` one of {ENTRIES}, not {args!r}")
        if preexec_fn is not None or pass_fds or executable is not None or shell:
            raise ValueError("forked.Popen takes restore_sigint instead of preexec_fn; no pass_fds, executable, shell")
        request = {"argv": [str(a) for a in args], "cwd": os.fspath(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env), "new_session": start_new_session,
                   "restore_sigint": self.restore_sigint}
        # -1: this process's own stdin, stdout or stderr, as a subprocess inherits them (pytest's capture of this test).
        std_fds = [target if fd == -1 else fd for target, fd in enumerate((p2cread, c2pwrite, errwrite))]
        try:
            self.pid = _server().start(request, std_fds)
            self._child_created = True
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _internal_poll(self, _deadstate=None, **_):
        if self.returncode is None:
            self.returncode = _server().returncode(self.pid, timeout=0)
        return self.returncode

    def _wait(self, timeout):
        if self.returncode is None:
            self.returncode = _server().returncode(self.pid, timeout=timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode


def run(args, *, timeout=None, check=False, capture_output=False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run, with forked.Popen."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with Popen(args, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            process.kill()
            raise
        done = subprocess.CompletedProcess(process.args, process.wait(), stdout, stderr)
    if check:
        done.check_returncode()
    return done


class _Client:
    """This pytest worker's end of the server's socket: a request, then ("started", pid); ("ended", pid, returncode)
    whenever one of its commands ends (returncode as Popen's: minus the signal that ended it)."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        serve = f"from tests import forked; forked.serve({theirs.fileno()})"
        self.process = subprocess.Popen([sys.executable, "-c", serve], cwd=ROOT, pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL)
        theirs.close()
        self.socket = ours
        self.ended: dict[int, int] = {}

    def start(self, request: dict, std_fds: list[int]) -> int:
        """Fork the command with `std_fds` as its stdin, stdout and stderr. Returns its pid."""
        socket.send_fds(self.socket, [pickle.dumps(request)], std_fds)
        while True:
            message = self._receive(timeout=300)  # the first waits for the server's imports
            if message is None:
                raise RuntimeError(f"the command server did not start {request['argv']} within 300 s")
            if message[0] == "started":
                self.ended.pop(message[1], None)  # an earlier command's, whose pid the system gave again
                return message[1]

    def returncode(self, pid: int, timeout: float | None) -> int | None:
        """The command's returncode once it has ended, waiting up to `timeout` seconds (None: as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.ended:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._receive(left) is None:
                return None
        return self.ended[pid]

    def _receive(self, timeout: float | None):
        """The server's next message (an "ended" one recorded), or None after `timeout` seconds without one."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
        data = self.socket.recv(MESSAGE_BYTES)
        if not data:
            raise RuntimeError(f"the command server ended (exit status {self.process.wait()}); its stderr is above")
        message = pickle.loads(data)
        if message[0] == "ended":
            self.ended[message[1]] = message[2]
        return message


@functools.cache
def _server() -> _Client:
    return _Client()


def serve(fd: int) -> None:
    """The server: import ENTRIES, then fork a command for each request on socket `fd` until it closes. Returns in
    the forked child alone, where the command has run: the interpreter then exits as a command's does."""
    for module in ENTRIES:
        __import__(module)
    connection = socket.socket(fileno=fd)
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)  # a SIGCHLD wakes the selector below
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(connection, selectors.EVENT_READ)
    selector.register(wakeup_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is wakeup_read:
                os.read(wakeup_read, 4096)
                _report_ended(connection)
                continue
            data, fds, _, _ = socket.recv_fds(connection, MESSAGE_BYTES, 3)
            if not data:
                return  # the pytest worker has ended
            request = pickle.loads(data)
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (wakeup_read, wakeup_write):
                    os.close(fd)
                selector.close()
                connection.close()
                _run_command(request, fds)
                return
            for fd in fds:
                os.close(fd)
            connection.send(pickle.dumps(("started", pid)))


def _report_ended(connection: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no command left
        if pid == 0:
            return
        connection.send(pickle.dumps(("ended", pid, os.waitstatus_to_exitcode(status))))


def _run_command(request: dict, fds: list[int]) -> None:
    """In the forked child: become the command, as `python -m` would start it in `cwd` with `env`."""
    if request["new_session"]:
        os.setsid()
    if request["restore_sigint"]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]  # `python -m` puts its cwd first
    # What the interpreter reads from the environment as it starts, where the command's differs from the server's.
    if request["env"].get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    warning_options = request["env"].get("PYTHONWARNINGS", "")
    if warning_options and warning_options != SERVER_ENV.get("PYTHONWARNINGS"):
        warnings._processoptions(warning_options.split(","))
    module = request["argv"][2]
    sys.argv = [request["argv"][0], *request["argv"][3:]]  # runpy sets argv[0] to the module's file, as -m does
    # The server imported the module; a fresh interpreter has it only as __main__ until something imports it.
    sys.modules.pop(module)
    runpy._run_module_as_main(module, alter_argv=True)  # what `python -m` calls: it runs in __main__'s namespace
