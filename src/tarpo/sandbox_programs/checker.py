"""The trusted checker, run as `python -I -B -c <this file, codec included> req_w resp_r`, config JSON on stdin.

It execs the task's prompt (for helpers such as encode_cyclic) and test, then
calls check() with a proxy for the candidate. It sees the candidate only
through validated plain data on the pipes. On success it prints the config's
`passed` marker on a line of its own.
"""

import ast
import builtins
import os
import resource
import select
import sys
import time
import traceback

from .codec import _MAX_MSG, _dec, _enc, _frame, _json  # replaced by codec.py's text in the program that runs


class Broken(BaseException):
    """The channel to the candidate failed; not an Exception, so a test's `except Exception` cannot hide it."""

def main():
    req_w, resp_r = int(sys.argv[1]), int(sys.argv[2])
    cfg = _json.loads(sys.stdin.read())
    _, hard = resource.getrlimit(resource.RLIMIT_AS)  # bounds what decoding a huge reply may take
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_bytes"] if hard == resource.RLIM_INFINITY
                                            else min(cfg["memory_bytes"], hard), hard))
    deadline = time.monotonic() + cfg["timeout_s"]
    broken = []
    os.set_blocking(req_w, False)

    def ready(fd, for_write, until):
        left = min(until, deadline) - time.monotonic()
        if left <= 0:
            raise Broken("timeout")
        poller = select.poll()  # not select(): the caller may hold more than 1024 fds, and ours keep their numbers
        poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
        return bool(poller.poll(left * 1000))

    def send(data, until):
        while data:
            if not ready(req_w, True, until):
                continue
            try:
                data = data[os.write(req_w, data):]
            except BlockingIOError:
                pass
            except OSError:
                raise Broken("the candidate process ended")

    def recv(n, until):
        buf = bytearray()
        while len(buf) < n:
            if not ready(resp_r, False, until):
                continue
            chunk = os.read(resp_r, min(n - len(buf), 1 << 20))
            if not chunk:
                raise Broken("the candidate process ended")
            buf += chunk
        return bytes(buf)

    def exchange(name, args, kwargs, until):
        """One call: send the request, return ("ok", value) or ("exc", exception); Broken otherwise."""
        try:
            request = _frame([name, [_enc(a) for a in args], [[k, _enc(v)] for k, v in kwargs.items()]])
        except Exception as e:
            raise Broken("arguments are not plain data: %s" % e)
        send(request, until)
        size = int.from_bytes(recv(4, until), "big")
        if size > _MAX_MSG:
            raise Broken("reply too large")
        reply = _json.loads(recv(size, until))
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
            return "ok", _dec(reply[1])
        if (type(reply) is list and len(reply) == 3 and reply[0] == "exc"
                and type(reply[1]) is str and type(reply[2]) is str):
            # A builtin exception keeps its type (a test may expect a ValueError); others become Exception.
            cls = getattr(builtins, reply[1], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    return "exc", cls(reply[2])
                except Exception:
                    pass
            return "exc", Exception("%s: %s" % (reply[1], reply[2]))
        raise Broken("bad reply from the candidate: %.200r" % (reply,))

    def remote(name):
        def call(*args, **kwargs):
            if broken:
                raise Broken(broken[0])
            try:
                kind, value = exchange(name, args, kwargs, time.monotonic() + cfg["call_timeout_s"])
            except Broken as e:
                broken.append(str(e))
                raise
            except Exception as e:  # undecodable reply: bad JSON, unknown tag, unhashable set item, ...
                broken.append("bad reply from the candidate: %s: %s" % (type(e).__name__, e))
                raise Broken(broken[-1])
            if kind == "exc":
                raise value
            return value
        call.__name__ = call.__qualname__ = name
        return call

    ns = {"__name__": "__tarpo_check__", "__builtins__": builtins}
    try:
        if cfg["prompt"] is not None:
            exec(compile(cfg["prompt"], "prompt.py", "exec"), ns)
        tree = ast.parse(cfg["test"], "test.py")
        # Names the test uses but does not define are the program's: call them remotely.
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in ns and not hasattr(builtins, node.id):
                ns[node.id] = remote(node.id)
        candidate = ns[cfg["entry_point"]] = remote(cfg["entry_point"])
        exec(compile(tree, "test.py", "exec"), ns)
        ns["check"](candidate)
    except Broken as e:
        sys.stderr.write("check aborted: %s\n" % (e,))
        os._exit(3 if str(e) == "timeout" else 2)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if broken:
        sys.stderr.write("check aborted: %s\n" % (broken[0],))
        os._exit(3 if broken[0] == "timeout" else 2)
    sys.stdout.write("\n" + cfg["passed"] + "\n")
    sys.stdout.flush()
    os._exit(0)

if __name__ == "__main__":
    main()
