"""Directed request sequences: C xenstored 4.17 (the oracle) and ours, byte for byte.

Every test runs one script against the real daemon under the shim and against
ours and compares the transcripts (replies, watch events, their order, closed
connections, ring errors). Known differences are marked from the table in
:mod:`.exceptions`, never by loosening the comparison.
"""

from __future__ import annotations

import pytest

from xenpci.abi import xs_wire as w

from .exceptions import known
from .scenario import Close, Hold, Introduce, Op, Raw, Step, Tx, compare, frame, op, run

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

W, R, MK, RM, LS = w.XS_WRITE, w.XS_READ, w.XS_MKDIR, w.XS_RM, w.XS_DIRECTORY
GP, SP, WATCH, UNW = w.XS_GET_PERMS, w.XS_SET_PERMS, w.XS_WATCH, w.XS_UNWATCH
TS, TE = w.XS_TRANSACTION_START, w.XS_TRANSACTION_END


def guests(*domids: int) -> list[Step]:
    """What a toolstack does before INTRODUCE: the home, owned by the guest."""
    out: list[Step] = []
    for d in domids:
        home = f"/local/domain/{d}"
        out += [op("a", MK, home), op("a", SP, home, f"n{d}"), Introduce(d)]
    return out


# -- dom0 over the socket ---------------------------------------


def test_basic_nodes() -> None:
    compare(
        [
            op("a", R, "/"),
            op("a", LS, "/"),
            op("a", LS, "/tool"),
            op("a", GP, "/"),
            op("a", GP, "/tool/xenstored"),
            op("a", W, "/a/b/c", b"hello"),
            op("a", R, "/a/b/c"),
            op("a", R, "/a/b"),
            op("a", LS, "/a"),
            op("a", W, "/a/b/c", b""),
            op("a", W, "/a/b/d", b"bin\0ary\xff"),
            op("a", R, "/a/b/d"),
            op("a", LS, "/a/b"),
            op("a", MK, "/a/b"),
            op("a", MK, "/a/e"),
            op("a", LS, "/a"),
            op("a", RM, "/a/b/c"),
            op("a", RM, "/a/b/c"),
            op("a", RM, "/a/x/y"),
            op("a", R, "/a/b/c"),
            op("a", R, "/nope/deeper"),
            op("a", LS, "/nope"),
            op("a", RM, "/a"),
            op("a", LS, "/"),
            op("a", W, "rel/x", b"1"),
            op("a", R, "/local/domain/0/rel/x"),
            op("a", R, "rel/x"),
            op("a", w.XS_GET_DOMAIN_PATH, "7"),
            op("a", w.XS_GET_DOMAIN_PATH, "x"),
            op("a", w.XS_IS_DOMAIN_INTRODUCED, "0"),
            op("a", w.XS_IS_DOMAIN_INTRODUCED, "5"),
        ]
    )


def test_bad_paths() -> None:
    bad = ["", "/", "//a", "/a/", "/a//b", "/a b", "/a\x01", "@foo", "/" + "x" * 3100, "a/"]
    compare(
        [op("a", W, "/ok", b"v")]
        + [op("a", kind, p) for p in bad for kind in (R, LS, MK, RM, GP)]
        + [op("a", W, p, b"v") for p in bad]
    )


def test_path_length_limits() -> None:
    # C's is_valid_nodename: the length after a /local/domain/<N>/ prefix counts.
    deep = "/local/domain/5/" + "x" * 2040
    compare(
        [
            op("a", W, "/" + "y" * 2040, b"1"),
            op("a", W, "/" + "y" * 2047, b"1"),
            op("a", W, "/" + "y" * 2048, b"1"),
            op("a", W, deep, b"1"),
            op("a", R, deep),
        ]
    )


def test_path_length_counts_a_five_digit_domid_prefix_only() -> None:
    compare([op("a", W, "/local/domain/123456/" + "x" * 2040, b"1")])


def test_perms_roundtrip_and_errors() -> None:
    compare(
        [
            op("a", MK, "/p"),
            op("a", SP, "/p", "b0", "n0", "r0"),
            op("a", GP, "/p"),
            op("a", SP, "/p", "r5", "w6", "b7"),
            op("a", GP, "/p"),
            op("a", W, "/p/child", b"x"),
            op("a", GP, "/p/child"),
            op("a", SP, "/p", "x5"),
            op("a", SP, "/p"),
            op("a", SP, "/p", "r"),
            op("a", SP, "/missing", "n0"),
            op("a", SP, "/p", "n0x"),
            op("a", GP, "/p"),
        ]
    )


def test_perm_domid_parsed_like_strtol() -> None:
    compare([op("a", MK, "/p"), op("a", SP, "/p", "n0", "r0x10"), op("a", GP, "/p")])


# -- watches ----------------------------------------------------


def test_watch_basics() -> None:
    compare(
        [
            op("a", WATCH, "/w", "t1"),
            op("a", WATCH, "/w", "t1"),
            op("a", WATCH, "/w", "t2"),
            op("a", W, "/w/x", b"1"),
            op("a", W, "/w/x", b"1"),
            op("a", W, "/other", b"1"),
            op("a", MK, "/w/x"),
            op("a", SP, "/w/x", "r0"),
            op("a", RM, "/w"),
            op("a", UNW, "/w", "t1"),
            op("a", UNW, "/w", "t1"),
            op("a", W, "/w", b"again"),
            op("a", WATCH, "rel", "r"),
            op("a", W, "/local/domain/0/rel/deep", b"1"),
            op("a", UNW, "rel", "r"),
            op("a", WATCH, "/", "root"),
            op("a", W, "/z", b"1"),
            op("a", w.XS_RESET_WATCHES, ""),
            op("a", W, "/z", b"2"),
        ]
    )


def test_watch_three_args_and_bad_watch_paths() -> None:
    compare(
        [
            op("a", WATCH, "/w", "t", "1"),
            op("a", WATCH, "/w"),
            op("a", WATCH, "//w", "t"),
            op("a", WATCH, "@other", "t"),
            op("a", UNW, "@other", "t"),
        ]
    )


def test_unwatch_of_an_invalid_path() -> None:
    compare([op("a", UNW, "//bad", "t")])


def test_subtree_removal_events() -> None:
    compare(
        [
            op("a", W, "/r/a/1", b""),
            op("a", W, "/r/a/2", b""),
            op("a", W, "/r/b/1", b""),
            op("b", WATCH, "/r", "top"),
            op("b", WATCH, "/r/a/2", "leaf"),
            op("b", WATCH, "/r/ghost", "ghost"),
            op("a", RM, "/r"),
        ]
    )


def test_subtree_removal_fires_descendants_in_c_child_order() -> None:
    compare(
        [
            op("a", W, "/r/b/1", b""),
            op("a", W, "/r/a/2", b""),
            op("a", W, "/r/a/1", b""),
            op("a", W, "/r/c", b""),
            op("b", WATCH, "/r/a/1", "a1"),
            op("b", WATCH, "/r/c", "c"),
            op("b", WATCH, "/r/b/1", "b1"),
            op("b", WATCH, "/r/a/2", "a2"),
            op("a", RM, "/r"),
        ]
    )


def test_identical_queued_event_is_dropped() -> None:
    # Guest 5 stops reading: its response ring (1 KiB) fills with events and
    # the rest queue in the daemon, where C drops an event identical to one
    # still queued (XSA-326).
    compare(
        [
            *guests(5),
            op("g5", WATCH, "/local/domain/5/d", "w"),
            Hold("g5"),
            *[op("a", W, f"/local/domain/5/d/{'x' if i % 2 else 'y'}", b"1") for i in range(80)],
            Hold("g5", False),
        ]
    )


def test_several_matching_watches_fire_in_registration_order() -> None:
    compare(
        [
            op("b", WATCH, "/o/p", "deep"),
            op("b", WATCH, "/", "root"),
            op("b", WATCH, "/o", "mid"),
            op("a", W, "/o/p/q", b"1"),
        ]
    )


def test_several_connections() -> None:
    compare(
        [
            op("b", WATCH, "/s", "b"),
            op("c", WATCH, "/s/x", "c"),
            op("a", W, "/s/x", b"1"),
            op("a", W, "/s/y", b"1"),
            op("c", W, "/s/x/z", b"1"),
            Close("b"),
            op("a", RM, "/s"),
            op("d", R, "/s"),
        ]
    )


# -- transactions -----------------------------------------------


def test_transaction_basics() -> None:
    compare(
        [
            op("a", W, "/t/x", b"a"),
            op("b", WATCH, "/t", "w"),
            op("a", TS, ""),
            op("a", R, "/t/x", tx=Tx(2)),
            op("a", W, "/t/x", b"c", tx=Tx(2)),
            op("a", R, "/t/x", tx=Tx(2)),
            op("c", R, "/t/x"),
            op("a", W, "/t/y", b"new", tx=Tx(2)),
            op("a", TE, "T", tx=Tx(2)),
            op("c", R, "/t/x"),
            op("a", TS, ""),
            op("a", W, "/t/z", b"1", tx=Tx(10)),
            op("a", TE, "F", tx=Tx(10)),
            op("c", R, "/t/z"),
            op("a", TE, "T", tx=Tx(10)),
            op("a", TE, "T"),
            op("a", TS, ""),
            op("a", TS, "", tx=Tx(16)),
            op("a", TE, "X", tx=Tx(16)),
            op("a", TE, "", tx=Tx(16)),
            op("b", R, "/t/x", tx=Tx(16)),
            op("a", TE, "T", tx=Tx(16)),
        ]
    )


def test_transaction_conflict_ta_err() -> None:
    # xs-test "ta err": a value read in the transaction changes outside.
    compare(
        [
            op("a", W, "/t/x", b"a"),
            op("a", TS, ""),
            op("a", R, "/t/x", tx=Tx(1)),
            op("b", W, "/t/x", b"b"),
            op("a", R, "/t/x", tx=Tx(1)),
            op("a", W, "/t/x", b"c", tx=Tx(1)),
            op("a", TE, "T", tx=Tx(1)),
            op("a", R, "/t/x"),
        ]
    )


def test_transaction_reads_untouched_nodes_lazily() -> None:
    compare(
        [
            op("a", W, "/t/x", b"a"),
            op("a", TS, ""),
            op("b", W, "/t/x", b"b"),
            op("a", R, "/t/x", tx=Tx(1)),
            op("a", TE, "T", tx=Tx(1)),
        ]
    )


def test_blind_write_commits_like_c() -> None:
    # pyxs test_transaction_commit_retry's sequence.
    compare(
        [
            op("a", TS, ""),
            op("b", W, "/foo/bar", b"other"),
            op("a", W, "/foo/bar", b"mine", tx=Tx(0)),
            op("a", TE, "T", tx=Tx(0)),
            op("a", R, "/foo/bar"),
        ]
    )


def test_commit_fires_one_event_per_changed_node() -> None:
    compare(
        [
            op("b", WATCH, "/", "all"),
            op("a", TS, ""),
            op("a", W, "/c/z", b"1", tx=Tx(1)),
            op("a", W, "/c/a", b"1", tx=Tx(1)),
            op("a", W, "/c/a", b"2", tx=Tx(1)),
            op("a", W, "/c/tmp", b"1", tx=Tx(1)),
            op("a", RM, "/c/tmp", tx=Tx(1)),
            op("a", TE, "T", tx=Tx(1)),
        ]
    )


def test_unknown_tx_id_on_non_tree_ops() -> None:
    compare(
        [
            op("a", w.XS_GET_DOMAIN_PATH, "0", tx=77),
            op("a", w.XS_RESET_WATCHES, "", tx=77),
            op("a", w.XS_IS_DOMAIN_INTRODUCED, "0", tx=77),
            op("a", w.XS_CONTROL, "print", "x", tx=77),
        ]
    )


# -- guests over their rings ------------------------------------


def test_guests_on_rings() -> None:
    compare(
        [
            op("a", WATCH, "@introduceDomain", "intro"),
            op("a", WATCH, "@releaseDomain", "rel"),
            *guests(5, 6),
            op("g5", w.XS_GET_DOMAIN_PATH, "5"),
            op("g5", W, "data/x", b"5"),
            op("g5", R, "/local/domain/5/data/x"),
            op("g5", GP, "data/x"),
            op("g6", R, "/local/domain/5/data/x"),
            op("g6", W, "/local/domain/5/data/y", b"evil"),
            op("g5", SP, "data/x", "n5", "r6"),
            op("g6", R, "/local/domain/5/data/x"),
            op("g5", SP, "data/x", "n6"),
            op("g5", R, "/tool/xenstored"),
            op("g5", W, "/evil", b"1"),
            op("g5", w.XS_INTRODUCE, "9", "1", "1"),
            op("g5", w.XS_IS_DOMAIN_INTRODUCED, "5"),
            op("g5", w.XS_CONTROL, "print", "x"),
            op("a", w.XS_IS_DOMAIN_INTRODUCED, "6"),
            op("a", w.XS_RELEASE, "6"),
            op("a", w.XS_IS_DOMAIN_INTRODUCED, "6"),
            op("a", w.XS_RELEASE, "6"),
            op("a", w.XS_RELEASE, "0"),
            op("a", R, "/local/domain/5/data/x"),
        ]
    )


def test_guest_watches_and_transactions() -> None:
    compare(
        [
            *guests(5, 6),
            op("g5", WATCH, "data", "mine"),
            op("g5", WATCH, "/local/domain/6", "theirs"),
            op("a", W, "/local/domain/5/data/k", b"1"),
            op("g6", W, "data/k", b"1"),
            op("g5", TS, ""),
            op("g5", W, "data/t", b"1", tx=Tx(6)),
            op("g5", TE, "T", tx=Tx(6)),
            op("g5", UNW, "data", "mine"),
        ]
    )


def test_guest_event_filter_xsa115() -> None:
    compare(
        [
            *guests(5),
            op("a", W, "/pub/secret", b"1"),
            op("a", SP, "/pub", "r0"),
            op("g5", WATCH, "/pub", "w"),
            op("a", W, "/pub/secret", b"2"),
            op("a", W, "/pub/secret/deeper", b"3"),
            op("a", RM, "/pub"),
        ]
    )


def test_guest_request_spanning_the_ring() -> None:
    big = b"v" * 2040
    compare(
        [
            *guests(5),
            op("g5", W, "data/big", big),
            op("g5", R, "data/big"),
            op("g5", W, "data/" + "n" * 1500, b"x"),
            op("g5", LS, "data"),
        ]
    )


# -- quotas -----------------------------------------------------


def test_node_quota() -> None:
    compare(
        [*guests(5)] + [op("g5", W, f"data/n{i}", b"x") for i in range(8)],
        quotas={"nodes": 5},
    )


def test_node_size_and_perm_quotas() -> None:
    compare(
        [
            *guests(5),
            op("g5", W, "data/s", b"x" * 100),
            op("g5", W, "data/s", b"x" * 200),
            op("g5", SP, "data/s", "n5", "r6", "r7"),
            op("g5", SP, "data/s", "n5", "r6", "r7", "r8"),
            op("g5", GP, "data/s"),
        ],
        quotas={"node-size": 150, "permissions": 3},
    )


def test_watch_and_transaction_quotas() -> None:
    compare(
        [*guests(5)]
        + [op("g5", WATCH, f"data/w{i}", "t") for i in range(5)]
        + [op("g5", TS, "") for _ in range(5)],
        quotas={"watches": 3, "transactions": 3},
    )


def test_failed_write_in_transaction_fails_commit() -> None:
    compare(
        [
            *guests(5),
            op("g5", TS, ""),
            op("g5", W, "data/s", b"x" * 200, tx=Tx(3)),
            op("g5", W, "data/t", b"ok", tx=Tx(3)),
            op("g5", TE, "T", tx=Tx(3)),
        ],
        quotas={"node-size": 150},
    )


# -- permission matrix ------------------------------------------

_MATRIX_PERMS = [("n5",), ("r5",), ("w5",), ("b5",), ("n0", "r5"), ("n0", "w5"), ("n0", "b5"),
                 ("r0", "n5"), ("n6", "r5"), ("b0",)]  # fmt: skip


@pytest.mark.parametrize("perms", _MATRIX_PERMS, ids=["-".join(p) for p in _MATRIX_PERMS])
def test_permission_matrix(perms: tuple[str, ...]) -> None:
    node = "/m/node"
    script: list[Step] = [*guests(5, 6), op("a", W, node + "/kid", b"v"), op("a", SP, node, *perms)]
    for g in ("g5", "g6"):
        script += [
            op(g, R, node),
            op(g, LS, node),
            op(g, GP, node),
            op(g, R, node + "/kid"),
            op(g, W, node, b"w"),
            op(g, MK, node + "/new"),
            op(g, R, node + "/missing"),
            op(g, SP, node, *perms),
            op(g, RM, node + "/kid"),
        ]
    script += [op("a", GP, node), op("a", LS, node)]
    compare(script)


def test_missing_node_checks_the_ops_own_permission() -> None:
    compare(
        [
            *guests(5),
            op("a", MK, "/ro"),
            op("a", SP, "/ro", "r0"),
            op("g5", RM, "/ro/missing"),
            op("g5", W, "/ro/missing", b"1"),
            op("g5", MK, "/ro/missing"),
            op("g5", SP, "/ro/missing", "n5"),
        ]
    )


# -- special paths ----------------------------------------------


def test_set_perms_naming_a_domain_that_does_not_exist() -> None:
    # Domains 0, 5, 6, 7, 8 run; 9 and 12345 do not.
    compare(
        [
            op("a", MK, "/p"),
            op("a", SP, "/p", "n0", "r9"),
            op("a", GP, "/p"),
            op("a", SP, "/p", "n12345"),
            op("a", GP, "/p"),
            op("a", SP, "/p", "n7", "r9", "b5"),
            op("a", GP, "/p"),
        ]
    )


def test_special_paths() -> None:
    compare(
        [
            op("a", R, "@introduceDomain"),
            op("a", W, "@releaseDomain", b"x"),
            op("a", GP, "@releaseDomain"),
            op("a", SP, "@releaseDomain", "n0", "r5"),
            op("a", SP, "@nonsense", "n0"),
            op("b", WATCH, "@introduceDomain", "i"),
            op("b", WATCH, "@releaseDomain", "r"),
            *guests(5, 6),
            op("g5", WATCH, "@releaseDomain", "g5r"),
            op("g6", WATCH, "@releaseDomain", "g6r"),
            op("a", w.XS_RELEASE, "6"),
            op("a", w.XS_RESUME, "5"),
            op("a", w.XS_SET_TARGET, "5", "6"),
            op("a", w.XS_SET_TARGET, "9", "5"),
        ]
    )


@known("c-special-perms-assert")
def test_guest_set_perms_on_a_watched_special_node() -> None:
    compare(
        [
            *guests(5),
            op("g5", WATCH, "@releaseDomain", "g5r"),
            op("g5", SP, "@releaseDomain", "n5"),
            op("g5", R, "data"),
        ]
    )


# -- malformed frames -------------------------------------------


def test_malformed_arguments() -> None:
    compare(
        [
            Op("a", W, b"/nonul"),
            Op("a", W, b""),
            Op("a", WATCH, b"/w\0"),
            Op("a", WATCH, b"/w\0t"),
            Op("a", SP, b"/"),
            Op("a", TS, b""),
            Op("a", TS, b"junk\0"),
            Op("a", w.XS_INTRODUCE, b"5\0"),
            Op("a", w.XS_RELEASE, b"\0"),
            Op("a", w.XS_GET_DOMAIN_PATH, b""),
        ]
    )


def test_unknown_types() -> None:
    compare(
        [Op("a", t, b"/x\0") for t in (15, 16, 20, 23, 26, 99, 0xFFFF, 0xFFFFFFFF)]
        + [op("a", R, "/tool")]
    )


def _wide_dir() -> list[Step]:
    return [op("a", W, f"/d/{'c' * 40}{i}", b"") for i in range(120)]


def test_directory_part_chunks() -> None:
    compare(
        _wide_dir()
        + [op("a", w.XS_DIRECTORY_PART, "/d", off) for off in ("0", "4000", "99999")]
        + [op("a", W, "/d/more", b""), op("a", w.XS_DIRECTORY_PART, "/d", "0")]
        + [op("a", w.XS_DIRECTORY_PART, "/d"), op("a", w.XS_DIRECTORY_PART, "/nope", "0")],
    )


def test_directory_part_generation_value() -> None:
    compare([op("a", W, "/d/x", b""), op("a", w.XS_DIRECTORY_PART, "/d", "0")])


def test_directory_part_offsets_parsed_like_atoi() -> None:
    compare(
        _wide_dir() + [op("a", w.XS_DIRECTORY_PART, "/d", off) for off in ("x", "-5")],
    )


def test_oversized_frame_closes_only_that_socket() -> None:
    compare(
        [
            op("b", WATCH, "/x", "b"),
            Raw("a", frame(R, b"")[:12] + (4097).to_bytes(4, "little") + b"y" * 4097),
            op("b", W, "/x", b"still served"),
        ]
    )


def test_frame_in_pieces() -> None:
    whole = frame(W, b"/piece\0meal")
    compare(
        [
            Raw("a", whole[:3], reply=False),
            Raw("a", whole[3:17], reply=False),
            Raw("a", whole[17:]),
            op("a", R, "/piece"),
        ]
    )


def test_guest_oversized_frame_is_cut_off() -> None:
    compare(
        [
            *guests(5, 6),
            Raw("g5", frame(R, b"")[:12] + (5000).to_bytes(4, "little"), reply=False),
            op("g6", W, "data/x", b"fine"),
        ]
    )


@known("c-no-nul")
def test_one_arg_without_its_nul() -> None:
    compare([Op("a", R, b"/no-nul"), Op("a", R, b""), Op("a", LS, b"/")])


@known("c-stale-errno")
def test_one_arg_op_with_extra_arguments() -> None:
    compare([op("a", W, "/two", b"v"), Op("a", R, b"/two\0nuls\0")])


@known("c-stale-errno")
def test_mkdir_with_two_arguments() -> None:
    compare([Op("a", MK, b"/a\0b\0")])


def test_one_arg_ops_with_extra_arguments_are_einval_here() -> None:
    """What ours answers where C's answer is a stale errno ("c-stale-errno")."""
    got = run(
        "ours",
        [Op("a", t, b"/a\0b\0") for t in (R, MK, RM, LS, w.XS_GET_PERMS)],
    )
    assert [line.split("b'")[-1] for line in got] == ["EINVAL\\x00'"] * 5


def test_introduce_numbers_parsed_like_atoi() -> None:
    compare([Op("a", w.XS_INTRODUCE, b"9\0x\0-1\0"), op("a", w.XS_IS_DOMAIN_INTRODUCED, "9")])
