"""Every known difference between ours and the oracle, named, with its reason.

``xfail`` entries are differences we must still close (none is left: issue
14 §2 is closed): the tests are ``xfail(strict=True)``, so they turn into
failures the moment ours matches, and the entry must then be deleted.
``skip`` entries are the oracle's own bugs that we do not copy; the test is
skipped with the reason, and test_oracle_harness.py asserts that the bug is
still there (C aborts), so a skip cannot outlive its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import pytest

from xenpci.abi import xs_wire as w

if TYPE_CHECKING:
    from .scenario import Step

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class Known:
    action: Literal["xfail", "skip"]
    reason: str


EXCEPTIONS: dict[str, Known] = {
    # The oracle's own bugs: not copied.
    "c-stale-errno": Known(
        "skip",
        "C bug: a one-argument op (READ, MKDIR, RM, DIRECTORY...) given two "
        "NUL-terminated arguments gets NULL from onearg() and answers with "
        "whatever errno an earlier call left: ENOENT after a lookup, EINVAL "
        "after an EINVAL, EAGAIN on a guest's ring (its event channel read); "
        "MKDIR and RM turn a stale ENOENT into ENOMEM. Not a rule a client can "
        "rely on; ours answers EINVAL as onearg() intends",
    ),
    "c-no-nul": Known(
        "skip",
        "C bug: READ/DIRECTORY without the trailing NUL read the request "
        "buffer past the payload as a C string (undefined; after an RM it trips "
        "an assert); ours answers EINVAL as onearg() intends",
    ),
    "c-special-perms-assert": Known(
        "skip",
        "C bug: a guest's SET_PERMS on a watched special node returns a stale "
        "errno without a reply and the daemon aborts (consider_message: "
        "assertion conn->in == NULL)",
    ),
}


def known_mark(name: str) -> pytest.MarkDecorator:
    """The pytest mark for table entry ``name`` (KeyError for an unlisted name)."""
    entry = EXCEPTIONS[name]
    if entry.action == "xfail":
        return pytest.mark.xfail(strict=True, reason=f"{name}: {entry.reason}")
    return pytest.mark.skip(reason=f"{name}: {entry.reason}")


def known(name: str) -> Callable[[F], F]:
    """Mark a test with the table entry ``name`` (KeyError for an unlisted name)."""
    mark = known_mark(name)

    def apply(fn: F) -> F:
        return mark(fn)  # type: ignore[no-any-return]

    return apply


@dataclass(frozen=True)
class OcamlDivergence:
    """Where oxenstored answers differently from C 4.17 (ours follows C)."""

    reason: str
    script: list[Step]
    c_reply: str
    ocaml_reply: str
    daemon_args: dict[str, object] = field(default_factory=dict)


def _ocaml_divergences() -> dict[str, OcamlDivergence]:
    from .scenario import op

    return {
        "ocaml-equota": OcamlDivergence(
            "oxenstored reports a watch quota hit as EQUOTA (no errno name "
            "clients know); C 4.17 says E2BIG",
            [op("g5", w.XS_WATCH, f"data/w{i}", "t") for i in range(4)],
            "XS_ERROR req=0x0 tx=0 b'E2BIG\\x00'",
            "XS_ERROR req=0x0 tx=0 b'EQUOTA\\x00'",
            {"quotas": {"watches": 2}},
        ),
        "ocaml-no-directory-part": OcamlDivergence(
            "oxenstored has no DIRECTORY_PART (ENOSYS); libxenstore then reports E2BIG",
            [op("g5", w.XS_DIRECTORY_PART, "/local/domain/5", "0")],
            "XS_DIRECTORY_PART req=0x0 tx=0 b'8\\x00\\x00'",
            "XS_ERROR req=0x0 tx=0 b'ENOSYS\\x00'",
        ),
    }


#: oxenstored's divergences from C, each asserted by test_oxenstored.py.
OCAML_DIVERGENCES: dict[str, OcamlDivergence] = _ocaml_divergences()


#: Observed oxenstored behaviour not asserted by a test, because the
#: connection stops answering (a test would only measure a timeout).
OCAML_OBSERVED: dict[str, str] = {
    "ocaml-oversized-frame": (
        "a socket frame whose header announces more than 4096 bytes is not cut "
        "off as in C (C closes the connection at once): with the payload sent "
        "oxenstored answers EINVAL and then stops answering that connection; "
        "with the header alone it waits for the payload"
    ),
    "ocaml-guest-oversized-frame": (
        "on a guest ring the same frame leaves the page's error field at 0 "
        "(C sets XENSTORE_ERROR_PROTO) and the ring is no longer served"
    ),
}
