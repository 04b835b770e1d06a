"""One fleet of booted guests on one L2 segment, which every scenario reuses in turn.

Guest i (from 1) of the fleet runs the i-th suite asked for and has the underlay address
10.66.i.1/16. One fleet instead of a bed per suite: each boot under software emulation
costs a minute of a shared CPU, and a fleet of Debian 11, 12 and 13 is what the mixed-fleet
scenarios need anyway (issue 13).
"""

import os
import threading
import time
import traceback
from contextlib import contextmanager

from guest import Guest, StepFailed

_lock = threading.Lock()
# The scenarios that have printed their line: one that has not is a failure (unreported()).
REPORTED = set()


def say(msg):
    with _lock:
        print(msg, flush=True)


def result(name, outcome, secs, why=""):
    REPORTED.add(name)
    say(f"machine scenario fleet/{name}: {outcome} in {secs:.1f} s" + (f": {why}" if why else ""))


class Fleet:
    def __init__(self, suites, images, work, netns, debs, port=1234):
        self.deb, self.deb_up, self.version_up = debs
        self.notes = []
        self.guests = []
        for i, suite in enumerate(suites, start=1):
            g = Guest(f"{suite}-{i}", images[suite], work, netns, f"10.66.{i}.1/16",
                      f"52:54:00:66:{port % 256:02x}:{i:02x}", work / "files.tar", mcast=port,
                      mem=images[suite].mem)
            g.suite = suite
            self.guests.append(g)

    def index(self, g):
        return self.guests.index(g) + 1

    def note(self, g, what, *text):
        self.notes.append(f"{g.name} {what}: " + " ".join(str(t) for t in text))

    @contextmanager
    def step(self, label):
        """Prints what a step cost (issue 12 wants each step's cost said)."""
        t = time.monotonic()
        yield
        say(f"machines: step {label}: {time.monotonic() - t:.0f} s")

    def parallel(self, fn, guests=None):
        """fn(g) on each guest at once (they are separate CPUs' worth of waiting); returns
        {name: result}; raises the first failure after all are done."""
        out, errs = {}, []

        def one(g):
            try:
                out[g.name] = fn(g)
            except Exception as e:  # noqa: BLE001 - re-raised below, it names the guest
                errs.append(e)
        ts = [threading.Thread(target=one, args=(g,)) for g in (guests or self.guests)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errs:
            raise errs[0]
        return out

    def boot(self):
        for g in self.guests:
            g.start()
        t = self.parallel(lambda g: g.wait_boot())
        for g in self.guests:
            say(f"machines: step boot {g.name}: {t[g.name]:.0f} s (its agent up after {g.to_agent:.0f} s)")

    def evidence(self):
        for g in self.guests:
            say(g.evidence())

    def stop(self):
        for g in self.guests:
            g.stop()


def skipped(name, secs, why):
    """A scenario that cannot run: a failure unless FANLINK_MACHINES_MAY_SKIP=1 says a skip is
    fine (so that CI needs to set nothing to fail on it). True if it counts as failed."""
    if os.environ.get("FANLINK_MACHINES_MAY_SKIP") == "1":
        result(name, "skipped", secs, why)
        return False
    result(name, "failed", secs, f"skipped: {why} (FANLINK_MACHINES_MAY_SKIP=1 lets it skip)")
    return True


def unreported(plan):
    """The scenarios of `plan` that have printed no line yet."""
    return [s for s in plan if s not in REPORTED]


def first_line(e):
    """An exception in one line: the message's first line, or its type when the message says
    nothing alone (KeyError('ip') is "'ip'")."""
    text = (str(e).splitlines() or [""])[0]
    return text if isinstance(e, StepFailed) and text else f"{type(e).__name__}: {text}"


def evidence(fleet, what):
    """The guests' logs after a failure: a help, so an error here ends nothing."""
    try:
        fleet.evidence()
    except Exception as e:  # noqa: BLE001 - the result lines are printed already
        say(f"---- {what}: no evidence: {first_line(e)}")


def run(fleet, plan, steps, failed):
    """Runs the scenarios of `plan` in order on the booted fleet: one result line each. A
    scenario runs on the state the ones before it left; after a failure the rest are not run
    (and count as failed)."""
    t0 = time.monotonic()
    try:
        with fleet.step("boot (all guests at once)"):
            fleet.boot()
    except Exception as e:  # noqa: BLE001 - every scenario fails, with the reason
        for s in plan:
            result(s, "failed", time.monotonic() - t0, f"the guests did not boot: {first_line(e)}")
        failed.append("boot")
        evidence(fleet, "boot")
        return
    broken = None
    for s in plan:
        t = time.monotonic()
        if broken:
            result(s, "failed", 0, f"not run: {broken} failed")
            continue
        try:
            skip = None
            for fn in steps[s]:
                skip = fn(fleet) or skip
            if skip:
                if skipped(s, time.monotonic() - t, skip.why):
                    failed.append(s)
            else:
                result(s, "passed", time.monotonic() - t)
        except Exception as e:  # noqa: BLE001 - any error fails the scenario (a KeyError too)
            result(s, "failed", time.monotonic() - t, first_line(e))
            failed.append(s)
            broken = s
            say(f"---- {s}: {e}" if isinstance(e, StepFailed) else f"---- {s}: {traceback.format_exc()}")
            evidence(fleet, s)
    for line in fleet.notes:
        say(f"machines: {line}")
