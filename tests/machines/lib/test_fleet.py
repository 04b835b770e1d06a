"""The scenario runner's loop (fleet.run) on a fake fleet: every scenario meant to run prints
its line, whatever a scenario raises. Run by tests/scripts.rs (`python3 -m unittest` here)."""

import contextlib
import io
import os
import unittest
from unittest import mock

import fleet
from checks import Skip
from guest import StepFailed


class FakeFleet:
    def __init__(self, evidence_fails=False):
        self.notes = []
        self.evidence_fails = evidence_fails

    @contextlib.contextmanager
    def step(self, label):
        yield

    def boot(self):
        pass

    def evidence(self):
        if self.evidence_fails:
            raise KeyError("serial.log")
        fleet.say("evidence")


def ok(_fleet):
    return None


def run(steps, fake=None):
    """fleet.run over `steps` in order: (its output's result lines, the failed list)."""
    fleet.REPORTED.clear()
    failed, out = [], io.StringIO()
    with contextlib.redirect_stdout(out):
        fleet.run(fake or FakeFleet(), list(steps), steps, failed)
    lines = [l for l in out.getvalue().splitlines() if l.startswith("machine scenario ")]
    return lines, failed


def raises(e):
    def step(_fleet):
        raise e
    return step


class Loop(unittest.TestCase):
    def test_a_key_error_fails_its_scenario_and_the_rest_still_print_their_lines(self):
        lines, failed = run({"1-a": [ok], "2-b": [raises(KeyError("datapath"))], "3-c": [ok]})
        self.assertEqual(len(lines), 3, lines)
        self.assertRegex(lines[0], r"^machine scenario fleet/1-a: passed in ")
        self.assertRegex(lines[1], r"^machine scenario fleet/2-b: failed in .*: KeyError: 'datapath'$")
        self.assertRegex(lines[2], r"^machine scenario fleet/3-c: failed in .*: not run: 2-b failed$")
        self.assertEqual(failed, ["2-b"])
        self.assertEqual(fleet.unreported(["1-a", "2-b", "3-c"]), [])

    def test_any_exception_and_a_failing_evidence_still_print_every_line(self):
        for e in (StepFailed("ping lost\nmore"), ValueError(), TypeError("x"), AttributeError("y")):
            lines, failed = run({"1-a": [raises(e)], "2-b": [ok]}, FakeFleet(evidence_fails=True))
            self.assertEqual([l.split(":")[0] for l in lines],
                             ["machine scenario fleet/1-a", "machine scenario fleet/2-b"], lines)
            self.assertIn(": failed in ", lines[0])
            self.assertEqual(failed, ["1-a"])
        self.assertTrue(lines[0].endswith("AttributeError: y"), lines)

    def test_a_boot_failure_fails_every_scenario(self):
        fake = FakeFleet()
        fake.boot = lambda: raises(OSError("qemu died"))(fake)
        lines, failed = run({"1-a": [ok], "2-b": [ok]}, fake)
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(all(": failed in " in l and "did not boot: OSError: qemu died" in l for l in lines), lines)
        self.assertEqual(failed, ["boot"])

    def test_a_scenario_without_its_line_is_unreported(self):
        fleet.REPORTED.clear()
        with contextlib.redirect_stdout(io.StringIO()):
            fleet.result("1-a", "passed", 1)
        self.assertEqual(fleet.unreported(["1-a", "2-b"]), ["2-b"])


class Skips(unittest.TestCase):
    def test_a_skip_fails_unless_skipping_is_allowed(self):
        steps = {"1-a": [lambda f: Skip("needs two guests or more")]}
        with mock.patch.dict(os.environ, {"FANLINK_MACHINES_MAY_SKIP": ""}):
            lines, failed = run(steps)
        self.assertRegex(lines[0], r"fleet/1-a: failed in .*: skipped: needs two guests or more \(FANLINK_MACHINES_MAY_SKIP=1")
        self.assertEqual(failed, ["1-a"])
        with mock.patch.dict(os.environ, {"FANLINK_MACHINES_MAY_SKIP": "1"}):
            lines, failed = run(steps)
        self.assertRegex(lines[0], r"fleet/1-a: skipped in .*: needs two guests or more$")
        self.assertEqual(failed, [])


if __name__ == "__main__":
    unittest.main()
