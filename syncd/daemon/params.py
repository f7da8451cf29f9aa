"""Checking JSON-RPC params: every bad parameter is a -32602 error that names it."""

from __future__ import annotations

from typing import Any

from syncd import jsontext
from syncd.config import MAX_ADDRESSES, check_device_name, parse_listen
from syncd.daemon.rpc import RpcError, invalid_params
from syncd.deviceid import InvalidDeviceId, parse_device_id
from syncd.names import name_problem


class Params:
    """A request's params with typed accessors; :meth:`done` rejects unknown members."""

    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params
        self._seen: set[str] = set()

    def _get(self, name: str) -> Any:
        self._seen.add(name)
        return self._params.get(name)

    def _required(self, name: str, what: str) -> Any:
        value = self._get(name)
        if value is None:
            raise invalid_params(f"param {name!r} is required ({what})", param=name)
        return value

    def has(self, name: str) -> bool:
        """Whether ``name`` is present (and not null)."""
        return self._params.get(name) is not None

    def done(self) -> None:
        """Raise if the request carried params that the method does not take."""
        if self._params.keys() <= self._seen:
            return
        extra = sorted(set(self._params) - self._seen)
        if extra:
            raise invalid_params(f"unknown param(s): {', '.join(extra)}", param=extra[0])

    def name(self, name: str, *, allow_empty: bool = False) -> str:
        """A namespace or key: a non-empty string of valid Unicode, no NUL, <= 1024 UTF-8 bytes."""
        value = self._required(name, "a string")
        problem = None if value == "" and allow_empty else name_problem(value)
        if problem is not None:
            raise invalid_params(f"param {name!r} {problem}", param=name)
        assert isinstance(value, str)
        return value

    def opt_name(self, name: str) -> str:
        """An optional prefix-like name ("" when absent)."""
        if self._get(name) is None:
            return ""
        return self.name(name, allow_empty=True)

    def opt_bool(self, name: str) -> bool:
        """An optional boolean (false when absent)."""
        value = self._get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise invalid_params(f"param {name!r} must be true or false", param=name)
        return value

    def opt_number(self, name: str, default: float, lo: float, hi: float) -> float:
        """An optional number within [lo, hi]."""
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise invalid_params(f"param {name!r} must be a number from {lo} to {hi}", param=name)
        return float(value)

    def opt_int(self, name: str) -> int | None:
        """An optional integer."""
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_params(f"param {name!r} must be an integer", param=name)
        return value

    def object(self, name: str) -> dict[str, Any]:
        """A JSON object whose strings are all valid Unicode."""
        value = self._required(name, "a JSON object")
        if not isinstance(value, dict):
            raise invalid_params(f"param {name!r} must be a JSON object", param=name)
        _check_unicode(value, name)
        return value

    def array(self, name: str) -> list[Any]:
        """A JSON array whose strings are all valid Unicode."""
        value = self._required(name, "an array")
        if not isinstance(value, list):
            raise invalid_params(f"param {name!r} must be an array", param=name)
        _check_unicode(value, name)
        return value

    def opt_device_name(self, name: str) -> str | None:
        """An optional device name: 1-256 printable characters (:func:`check_device_name`)."""
        value = self._get(name)
        if value is None:
            return None
        try:
            return check_device_name(value)
        except ValueError as exc:
            raise invalid_params(f"param {name!r}: {exc}", param=name) from None

    def device_id(self, name: str) -> str:
        """A device ID, checked with its check characters; returns the canonical form."""
        value = self._required(name, "a device ID string")
        if not isinstance(value, str):
            raise invalid_params(f"param {name!r} must be a device ID string", param=name)
        return _device(value, name)

    def device_ids(self, name: str) -> list[str]:
        """A non-empty array of device IDs (canonical, duplicates removed, order kept)."""
        values = self.array(name)
        if not values:
            raise invalid_params(f"param {name!r} must list at least one device", param=name)
        out: list[str] = []
        for value in values:
            if not isinstance(value, str):
                raise invalid_params(f"param {name!r} must hold device ID strings", param=name)
            canonical = _device(value, name)
            if canonical not in out:
                out.append(canonical)
        return out

    def addresses(self, name: str) -> list[str]:
        """An optional array of ``HOST:PORT`` strings (a repeated one is kept once)."""
        value = self._get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise invalid_params(f"param {name!r} must be an array of HOST:PORT", param=name)
        if len(value) > MAX_ADDRESSES:
            raise invalid_params(
                f"param {name!r} may list at most {MAX_ADDRESSES} addresses ({len(value)} given)",
                param=name,
            )
        out = []
        for item in value:
            try:
                if not isinstance(item, str):
                    raise ValueError("not a string")
                parse_listen(item)
            except ValueError as exc:
                raise invalid_params(
                    f"param {name!r}: bad address {item!r}: {exc}", param=name
                ) from None
            if item not in out:
                out.append(item)
        return out


def _check_unicode(value: Any, name: str) -> None:
    """Reject strings that cannot be stored as UTF-8 (lone surrogates such as ``"\\udcff"``).

    They are valid JSON escapes but not Unicode text; caught here, before the write reaches the
    store, they are a -32602 of this request alone.
    """
    if jsontext.has_lone_surrogate(value):
        raise invalid_params(
            f"param {name!r} contains a string that is not valid Unicode (a lone surrogate)",
            param=name,
        )


def _device(value: str, name: str) -> str:
    try:
        return parse_device_id(value)
    except InvalidDeviceId as exc:
        err: RpcError = invalid_params(str(exc), reason="invalid_device_id", param=name)
        raise err from None
