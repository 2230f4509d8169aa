"""The RQ Worker Pool controller: a virtual doctype read from the state pools publish in Redis.

Read-only and for the System Manager only. Frappe calls the list methods with
one dict on v15 and with keyword arguments on newer lines; both shapes land
in ``args`` here. Frappe itself is reached through the adapter only.
"""

from __future__ import annotations

import json
from typing import Any

from ....frappe_adapter import (
    attribute_dict, date_range, desk_connection, document_class, not_found, refuse_request, require_role, system_time,
)
from .pool_view import page, read_group, read_rows

DOCTYPE = "RQ Worker Pool"
ROLE = "System Manager"


class RQWorkerPool(document_class()):  # type: ignore[misc]
    def load_from_db(self) -> None:
        require_role(ROLE)
        row = read_group(desk_connection(), self.name)
        if row is None:
            raise not_found(DOCTYPE, self.name)
        history = {"chart": row.pop("chart"), "decisions": row.pop("decisions")}
        super(document_class(), self).__init__({**desk_row(row), "history_json": json.dumps(history)})

    @staticmethod
    def get_list(args: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        args = {**(args or {}), **kwargs}
        start = int(args.get("start") or args.get("limit_start") or 0)
        length = int(args.get("page_length") or args.get("limit_page_length") or 0)
        rows = [attribute_dict(row) for row in listed(args, start, length)]
        pluck = args.get("pluck")
        return [row.get(pluck) for row in rows] if pluck else rows

    @staticmethod
    def get_count(args: Any = None, **kwargs: Any) -> int:
        return len(listed({**(args or {}), **kwargs}, 0, 0))

    @staticmethod
    def get_stats(args: Any = None, **kwargs: Any) -> dict[str, Any]:
        return {}

    # Nothing here is written: the pools own their state.
    def db_insert(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{DOCTYPE} is read-only")

    def db_update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{DOCTYPE} is read-only")

    def delete(self) -> None:
        raise NotImplementedError(f"{DOCTYPE} is read-only")


def listed(args: dict[str, Any], start: int, length: int) -> list[dict[str, Any]]:
    """The desk rows a list request asks for: filtered and ordered on what the desk shows (times in the site's zone)."""
    require_role(ROLE)
    rows = [desk_row(row) for row in read_rows(desk_connection())]
    try:
        return page(rows, args.get("filters"), start, length, args.get("order_by"), date_range)
    except ValueError as refused:  # a filter this view cannot apply, or one that does not parse
        refuse_request(str(refused))


def desk_row(row: dict[str, Any]) -> dict[str, Any]:
    """A view row with the times Frappe shows (site time zone) and the bookkeeping fields it expects."""
    updated = system_time(row.get("updated_at"))
    return {
        **row,
        "started_at": system_time(row.get("started_at")),
        "updated_at": updated,
        "modified": updated,
        "creation": system_time(row.get("started_at")) or updated,
        "_comment_count": 0,
    }
