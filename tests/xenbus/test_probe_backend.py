"""xenpci.xenbus.probe_backend: the backend bus keeps its devices in step with the root."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from xenpci.errors import XenpciError
from xenpci.xenbus.probe_backend import XenbusBackendBus
from xenpci.xenstore.client import WatchEvent, XsClient

ROOT = "/local/domain/0/backend/test"


class _Xs:
    """The client surface the bus uses: watch, unwatch, no executor."""

    executor = None

    def __init__(self) -> None:
        self.watches: dict[str, Callable[[WatchEvent], None]] = {}

    def watch(self, path: str, token: str, cb: Callable[[WatchEvent], None]) -> None:
        self.watches[token] = cb

    def unwatch(self, path: str, token: str) -> None:
        del self.watches[token]

    def fire(self, path: str) -> None:
        for cb in list(self.watches.values()):
            cb(WatchEvent(path, "t"))


class _Dev:
    def __init__(self, key: int, fail: bool) -> None:
        self.key, self.fail = key, fail
        self.probed = self.removed = False
        self.stale = False

    def probe(self) -> None:
        self.probed = True
        if self.fail:
            raise XenpciError(f"probe of {self.key} failed")

    def remove(self) -> None:
        self.removed = True


class _Bus(XenbusBackendBus[int, _Dev]):
    def __init__(self, xs: _Xs) -> None:
        super().__init__(cast(XsClient, xs), ROOT, "t")
        self.dirs: set[int] = set()
        self.failing: set[int] = set()
        self.made: list[_Dev] = []

    def _scope(self, path: str) -> set[int] | None:
        rest = path[len(ROOT) + 1 :].split("/", 1)[0] if path.startswith(ROOT + "/") else ""
        return {int(rest)} if rest.isdigit() else None

    def _present(self, scope: set[int] | None) -> set[int]:
        return set(self.dirs) if scope is None else self.dirs & scope

    def _new_device(self, key: int) -> _Dev:
        dev = _Dev(key, key in self.failing)
        self.made.append(dev)
        return dev

    def _stale(self, dev: _Dev) -> bool:
        return dev.stale


def _bus() -> tuple[_Xs, _Bus]:
    xs = _Xs()
    bus = _Bus(xs)
    bus.start()
    return xs, bus


def test_devices_follow_directories_and_a_scoped_event_touches_only_its_key() -> None:
    xs, bus = _bus()
    bus.dirs = {1, 2}
    xs.fire(ROOT)
    assert sorted(bus.devices) == [1, 2] and all(d.probed for d in bus.made)
    one, two = bus.devices[1], bus.devices[2]
    bus.dirs = {1}
    xs.fire(f"{ROOT}/1/0/state")  # about guest 1 only: 2's removal is not seen yet
    assert sorted(bus.devices) == [1, 2] and not two.removed
    xs.fire(f"{ROOT}/2")
    assert sorted(bus.devices) == [1] and two.removed and not one.removed
    bus.dirs = set()
    xs.fire(ROOT)  # the root: everything re-examined
    assert bus.devices == {} and one.removed


def test_failed_probe_is_removed_and_forgotten_stale_device_is_reprobed() -> None:
    xs, bus = _bus()
    bus.failing = {3}
    bus.dirs = {3, 4}
    xs.fire(ROOT)
    assert sorted(bus.devices) == [4]
    assert bus.made[0].key == 3 and bus.made[0].removed
    old = bus.devices[4]
    old.stale = True
    xs.fire(f"{ROOT}/4")
    assert old.removed and bus.devices[4] is not old and bus.devices[4].probed


def test_stop_removes_everything_and_ignores_later_events() -> None:
    xs, bus = _bus()
    bus.dirs = {5}
    xs.fire(ROOT)
    dev = bus.devices[5]
    cb: Any = next(iter(xs.watches.values()))
    bus.stop()
    assert dev.removed and bus.devices == {} and xs.watches == {}
    cb(WatchEvent(ROOT, "t"))  # an event queued before the unwatch
    assert bus.devices == {}
    assert bus.wait(lambda b: not b.devices)  # already holds: returns without waiting
