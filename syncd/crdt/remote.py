"""What a replica accepts from its peers: the checks every remote delta passes before a join.

Joins are safe for any well-formed delta, but a replica's invariants are not: only this
incarnation makes its own dots, and a dot names one event in one document (the namespace's
counter hands out the dots of all its documents). A delta that broke either would make the
replica reuse a dot or file one dot under two documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from syncd.crdt.context import CausalContext
from syncd.crdt.document import Document
from syncd.crdt.dots import ReplicaId
from syncd.errors import InvalidDeltaError


def check_remote_deltas(
    deltas: Sequence[tuple[str, Document]],
    own_replica: ReplicaId,
    ns_ctx: CausalContext,
    doc_ctx: Callable[[str], CausalContext | None],
) -> None:
    """Raise :class:`InvalidDeltaError` unless every ``(key, delta)`` may be joined.

    A delta may not bring (a) dots of ``own_replica`` that its document does not hold
    already, or (b) dots that the namespace (``ns_ctx``) or another delta of the batch holds
    in another document; every dot a delta's stores hold must lie in its own context.
    ``doc_ctx(key)`` is the current context of the document at ``key`` (None: none yet).
    """
    per_key: dict[str, CausalContext] = {}
    for key, delta in deltas:
        for d in delta.live_dots():
            if d not in delta.ctx:
                raise InvalidDeltaError(f"delta for {key!r} holds a dot outside its context")
        per_key.setdefault(key, CausalContext()).update(delta.ctx)
    claimed = CausalContext()
    for key, dctx in per_key.items():
        have = doc_ctx(key)
        new = dctx.difference(have) if have is not None else dctx
        if new.for_replica(own_replica) is not None:
            raise InvalidDeltaError(
                f"delta for {key!r} claims dots of this replica that it never made"
            )
        for replica, lo, hi in new.ranges():
            for other in (ns_ctx, claimed):
                rs = other.for_replica(replica)
                if rs is not None and next(rs.overlapping(lo, hi), None) is not None:
                    raise InvalidDeltaError(
                        f"delta for {key!r} holds dots of {replica} that belong to another document"
                    )
        claimed.update(new)


__all__ = ["check_remote_deltas"]
